//! The cache server's request routing on arbitrary paths, the headers it
//! parses itself (`Content-Range` of a chunk, `Range` of a read) and the tag
//! parsing its metrics use: never a panic, and a parsed range lies within
//! the blob.
#![no_main]
use kiln_cache_server::api::{parse_content_range, parse_range, valid_repo, Endpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Endpoint::parse(path);
    if let Some(rest) = path.strip_prefix("/v2/") {
        let _ = Endpoint::parse(&format!("/v2/{rest}/manifests/latest"));
        let _ = Endpoint::parse(&format!("/v2/{rest}/blobs/uploads/"));
    }
    let _ = valid_repo(path);
    if let Ok((start, end)) = parse_content_range(path) {
        assert!(start <= end, "{path:?}");
    }
    for size in [0u64, 1, 1000, u64::MAX] {
        if let Ok(r) = parse_range(path, size) {
            assert!(r.start <= r.end && r.end <= size, "{path:?} {size} -> {r:?}");
        }
    }
    let _ = kiln_cache_server::metrics::mount_scope(path);
});
