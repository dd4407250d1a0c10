//! Layer extraction of arbitrary bytes (tar, possibly compressed): never a
//! panic, and nothing written outside the root it extracts into.
//!
//! The process first chroots into a jail of its own (without changing its
//! working directory, so libFuzzer's corpus and artifacts still land where
//! they were asked to), so that a bug that escaped the root could only
//! write inside the jail, where the check below finds it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Once;

static JAIL: Once = Once::new();

fn jail() {
    JAIL.call_once(|| {
        let dir = std::env::temp_dir().join(format!("kiln-fuzz-jail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("jail");
        nix::unistd::chroot(&dir).expect("chroot (run as root)");
    });
}

fuzz_target!(|data: &[u8]| {
    jail();
    let work = Path::new("/w");
    let _ = std::fs::remove_dir_all(work);
    let root = work.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let _ = kiln_layers::extract::apply_layer(&root, data);
    // Only the root may have changed: the jail holds `w`, `w` holds `root`.
    let top: Vec<_> = std::fs::read_dir("/")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        top,
        [std::ffi::OsString::from("w")],
        "written outside the work dir"
    );
    let inner: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        inner,
        [std::ffi::OsString::from("root")],
        "written outside the root"
    );
});
