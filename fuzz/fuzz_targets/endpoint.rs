//! The cache server's request routing on arbitrary paths, and the tag
//! parsing its metrics use: never a panic.
#![no_main]
use kiln_cache_server::api::{valid_repo, Endpoint};
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
    let _ = kiln_cache_server::metrics::mount_scope(path);
});
