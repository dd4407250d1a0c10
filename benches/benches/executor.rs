//! Criterion benchmarks of the executor's hot paths: Dockerfile parsing, the
//! stat-scan snapshot (chroot isolation), and layer writing throughput.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_executor::blobs::BlobStore;
use kiln_executor::compression::Compression;
use kiln_executor::layer::{write_layer, LayerOptions};
use kiln_executor::snapshot::{Change, Diff, ScanIndex};
use std::path::Path;

fn dockerfile_text(n: usize) -> String {
    let mut s =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=alpine\nFROM ${BASE} AS build\n");
    for i in 0..n {
        s.push_str(&format!(
            "ENV K{i}=\"value {i}\" \\\n    L{i}=x\nRUN set -e; \\\n    echo {i} > /tmp/{i} && \\\n    ls /tmp\nCOPY --chown=1:1 [\"src/{i}\", \"/dst/{i}\"]\n"
        ));
    }
    s.push_str("RUN <<EOF\necho heredoc\nEOF\nFROM scratch\nCOPY --from=build /dst /dst\n");
    s
}

fn parse(c: &mut Criterion) {
    let text = dockerfile_text(200);
    let mut g = c.benchmark_group("dockerfile");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("parse_600_instructions", |b| {
        b.iter(|| kiln_common::dockerfile::parse(&text, "Dockerfile").expect("parses"))
    });
    g.finish();
}

fn make_tree(root: &Path, files: usize) {
    for i in 0..files {
        let d = root.join(format!("d{}/e{}", i % 100, i % 7));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(format!("f{i}")), b"content").expect("write");
    }
}

fn scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_scan");
    g.sample_size(10);
    for files in [1_000usize, 10_000] {
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("tempdir");
        make_tree(dir.path(), files);
        g.throughput(Throughput::Elements(files as u64));
        g.bench_with_input(
            BenchmarkId::new("capture_and_diff", files),
            &files,
            |b, _| {
                b.iter(|| {
                    let idx = ScanIndex::capture(dir.path()).expect("capture");
                    std::fs::write(dir.path().join("d0/changed"), b"x").expect("write");
                    let d = idx.diff(dir.path()).expect("diff");
                    assert!(!d.is_empty());
                })
            },
        );
    }
    g.finish();
}

fn layers(c: &mut Criterion) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    // 64 MiB of mixed content: half compressible text, half pseudo-random.
    let mut diff = Diff::default();
    let mut total = 0u64;
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..64 {
        let mut buf = vec![0u8; 1 << 20];
        if i % 2 == 0 {
            for (j, b) in buf.iter_mut().enumerate() {
                *b = b"kiln layer benchmark text "[j % 26];
            }
        } else {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        std::fs::write(root.join(format!("f{i}")), &buf).expect("write");
        diff.add(format!("f{i}").into(), Change::Add);
        total += buf.len() as u64;
    }
    let store = BlobStore::open(&dir.path().join("blobs")).expect("store");
    let mut g = c.benchmark_group("layer_write");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(total));
    for (name, comp) in [
        ("gzip", Compression::Gzip),
        ("zstd", Compression::Zstd),
        ("none", Compression::None),
    ] {
        let opts = LayerOptions {
            compression: comp,
            ..Default::default()
        };
        g.bench_function(name, |b| {
            b.iter(|| write_layer(&root, &diff, &store, &opts).expect("layer"))
        });
    }
    g.finish();
}

criterion_group!(benches, parse, scan, layers);
criterion_main!(benches);
