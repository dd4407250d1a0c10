//! Manifest and index parsing, as the executor reads them from registries
//! and as the cache server checks them on PUT: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiln_common::image::parse_manifest(data, None, "sha256:fuzz");
    let _ = kiln_common::image::parse_manifest(
        data,
        Some("application/vnd.oci.image.index.v1+json"),
        "sha256:fuzz",
    );
    for mt in [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ] {
        let m = kiln_cache_server::manifest::ManifestBlob::new(
            mt.to_string(),
            bytes::Bytes::copy_from_slice(data),
        );
        let _ = kiln_cache_server::manifest::referenced_blobs(&m);
        let _ = kiln_cache_server::manifest::referenced_manifests(&m);
    }
    let _ = kiln_cache_server::manifest::layer_bytes(data);
});
