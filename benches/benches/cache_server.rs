//! Criterion benchmarks of the cache server's lookup path in-process (no
//! HTTP): request parsing, a cache-entry lookup answered by the memory
//! tier, and one read from a `file://` store (tag, manifest and blob
//! checks). The HTTP figures against docker-registry are in
//! `benches/cache_server.sh`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use kiln_cache_server::api::Endpoint;
use kiln_cache_server::metrics::Metrics;

use kiln_cache_server::store::{Lookup, Store, StoreConfig};
use kiln_common::Digest;
use std::sync::Arc;
use std::time::Duration;

fn manifest(config: &Digest, layer: &Digest) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":5}}]}}"#
    )
    .into_bytes()
}

/// A store with one entry, its blobs committed the way uploads are.
async fn store_with_entry(dir: &std::path::Path, tag_ttl: Duration) -> Store {
    let storage = kiln_cache_server::backend::open(
        &format!("file://{}", dir.join("store").display()),
        Default::default(),
    )
    .expect("storage");
    let cfg = StoreConfig {
        tag_cache_ttl: tag_ttl,
        ..StoreConfig::default()
    };
    let store = Store::new(storage, cfg, Arc::new(Metrics::new()))
        .await
        .expect("store");
    let mut digests = Vec::new();
    for (i, data) in [&b"{}"[..], &b"layer"[..]].iter().enumerate() {
        let staged = dir.join(format!("staged-{i}"));
        std::fs::write(&staged, data).expect("stage");
        let d = Digest::sha256_of(data);
        store
            .commit_blob(&d, &staged, data.len() as u64)
            .await
            .expect("commit");
        digests.push(d);
    }
    let m = manifest(&digests[0], &digests[1]);
    store
        .put_manifest("bench/cache", "k1", None, Bytes::from(m))
        .await
        .expect("manifest");
    store
}

fn lookups(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let hot = rt.block_on(store_with_entry(
        &dir.path().join("hot"),
        Duration::from_secs(3600),
    ));
    let cold = rt.block_on(store_with_entry(
        &dir.path().join("cold"),
        Duration::from_nanos(1),
    ));
    let mut g = c.benchmark_group("cache_server");
    g.bench_function("parse_endpoint", |b| {
        b.iter(|| Endpoint::parse("/v2/team/app/cache/manifests/0123456789abcdef").expect("parses"))
    });
    g.bench_function("lookup_memory_tier", |b| {
        b.iter(|| {
            let r = rt
                .block_on(hot.lookup("bench/cache", "k1"))
                .expect("lookup");
            assert!(matches!(r, Lookup::Hit(..)));
        })
    });
    g.bench_function("lookup_tag_from_file_store", |b| {
        b.iter(|| {
            let r = rt
                .block_on(cold.lookup("bench/cache", "k1"))
                .expect("lookup");
            assert!(matches!(r, Lookup::Hit(..)));
        })
    });
    g.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
