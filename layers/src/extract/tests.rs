//! The extraction's unit tests: full roots, skeletons and the names a layer
//! gives twice.

use super::*;
use std::os::unix::fs::MetadataExt;

/// A layer tar: (path, kind, mode, content or link target).
fn layer(entries: &[(&str, tar::EntryType, u32, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000 + u64::from(*mode));
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                h.set_size(0);
                b.append_link(&mut h, path, data).unwrap();
            }
            _ => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_bytes()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Every path beneath `root` with its type, mode, mtime and link target
/// or (regular files) content.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                // Not its time: a full extraction leaves a directory a
                // later layer wrote into (without listing it) at the
                // time of the extraction, no value of the image's.
                stack.push(p.clone());
                format!("dir {:o}", m.mode() & 0o7777)
            } else {
                let data = std::fs::read_to_string(&p).unwrap();
                format!("file {:o} {} {data}", m.mode() & 0o7777, m.mtime())
            };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    out
}

use std::collections::BTreeMap;
use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

#[test]
fn a_skeleton_is_the_full_root_without_its_files() {
    let layers = [
        layer(&[
            ("app/", D, 0o755, ""),
            ("app/d/", D, 0o700, ""),
            ("app/d/f", F, 0o644, "data"),
            ("etc/", D, 0o755, ""),
            ("etc/passwd", F, 0o644, "root:x:0:0::/root:/bin/sh\n"),
            ("etc/group", F, 0o644, "root:x:0:\n"),
            ("link", S, 0o777, "app/d"),
            ("x", F, 0o600, "file, then a directory"),
            ("y/", D, 0o750, ""),
            ("y/z", F, 0o644, "gone with y"),
            ("gone", F, 0o644, "whited out"),
        ]),
        layer(&[
            ("x/", D, 0o711, ""),
            ("y", F, 0o640, "a directory, then a file"),
            ("app/h", H, 0o644, "app/d/f"),
            (".wh.gone", F, 0o644, ""),
            ("link/new/", D, 0o755, ""),
        ]),
    ];
    let full = tempfile::tempdir().unwrap();
    let skel = tempfile::tempdir().unwrap();
    let extent = Extent::Skeleton {
        keep: vec![PathBuf::from("etc/passwd"), PathBuf::from("etc/group")],
    };
    let mut skipped = Vec::new();
    for l in &layers {
        apply_layer(full.path(), &l[..]).unwrap();
        skipped.extend(
            apply_layer_as(skel.path(), &l[..], &extent)
                .unwrap()
                .skipped,
        );
    }
    let (full, skel) = (tree(full.path()), tree(skel.path()));
    // Every directory and link as in full, the kept files too; no
    // other file, and each one missing is listed.
    let expected: BTreeMap<PathBuf, String> = full
        .iter()
        .filter(|(p, what)| !what.starts_with("file") || p.starts_with("etc"))
        .map(|(p, w)| (p.clone(), w.clone()))
        .collect();
    assert_eq!(skel, expected);
    for (p, what) in &full {
        if what.starts_with("file") && !p.starts_with("etc") {
            assert!(skipped.contains(p), "{p:?} missing from {skipped:?}");
        }
    }
    assert!(full.contains_key(Path::new("app/d/new")), "{full:?}");
    assert_eq!(
        skel.get(Path::new("x")).map(String::as_str),
        Some("dir 711")
    );
    assert!(!skel.contains_key(Path::new("y")) && !skel.contains_key(Path::new("y/z")));
    assert!(!skel.contains_key(Path::new("gone")));
}

/// A directory this extraction made holds only what it put there, so
/// a new name in it is not looked up first; a name the same layer
/// gives twice — made explicitly, or as a missing parent — still
/// replaces what is there, in the full root and in the skeleton.
#[test]
fn names_given_twice_in_new_directories_are_replaced() {
    let l = layer(&[
        ("n/", D, 0o755, ""),
        ("n/a", F, 0o644, "a file, then a directory"),
        ("n/a/", D, 0o700, ""),
        ("n/b/", D, 0o755, ""),
        ("n/b", F, 0o644, "a directory, then a file"),
        ("n/c/d/e", F, 0o644, "its parents made on the way"),
        ("n/c", F, 0o644, "a made parent, then a file"),
        ("n/s/", D, 0o755, ""),
        ("n/s", S, 0o777, "a"),
        ("n/t", S, 0o777, "a"),
        ("n/t/", D, 0o751, ""),
        ("n/u/", D, 0o755, ""),
        ("n/u/", D, 0o705, ""),
    ]);
    let full = tempfile::tempdir().unwrap();
    let skel = tempfile::tempdir().unwrap();
    apply_layer(full.path(), &l[..]).unwrap();
    apply_layer_as(skel.path(), &l[..], &Extent::skeleton()).unwrap();
    let (full, skel) = (tree(full.path()), tree(skel.path()));
    let kind = |t: &BTreeMap<PathBuf, String>, p: &str| {
        t.get(Path::new(p))
            .map(|w| w.split(' ').take(2).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(kind(&full, "n/a").as_deref(), Some("dir 700"), "{full:?}");
    assert_eq!(kind(&full, "n/b").as_deref(), Some("file 644"), "{full:?}");
    assert_eq!(kind(&full, "n/c").as_deref(), Some("file 644"), "{full:?}");
    assert!(!full.contains_key(Path::new("n/c/d")), "{full:?}");
    assert_eq!(kind(&full, "n/s").as_deref(), Some("link a"), "{full:?}");
    assert_eq!(kind(&full, "n/t").as_deref(), Some("dir 751"), "{full:?}");
    assert_eq!(kind(&full, "n/u").as_deref(), Some("dir 705"), "{full:?}");
    let expected: BTreeMap<PathBuf, String> = full
        .into_iter()
        .filter(|(_, what)| !what.starts_with("file"))
        .collect();
    assert_eq!(skel, expected);
}
