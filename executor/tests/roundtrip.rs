//! Property tests (issue 14) on the library, no binaries: a layer written
//! from any tree extracts to the same tree, a layer of deletions removes
//! exactly what it lists, for every compression; cache keys are stable and
//! field boundaries matter.

use kiln_common::Digest;
use kiln_executor::blobs::BlobStore;
use kiln_executor::cache_key::KeyBuilder;
use kiln_executor::compression::Compression;
use kiln_executor::layer::{write_layer, LayerOptions};
use kiln_executor::snapshot::{Change, Diff};
use kiln_testkit::{tree, tree_diffs};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, u32),
    Link(String),
    Dir(u32),
}

/// Trees of up to 24 entries, three levels deep, from a small alphabet of
/// names (so paths collide and nest), with files, symlinks and directories.
fn trees() -> impl Strategy<Value = BTreeMap<String, Node>> {
    let name = prop::sample::select(vec!["a", "b", "c", "d.txt", "e e", "ü", ".wh", "f"]);
    let path = prop::collection::vec(name, 1..=3).prop_map(|v| v.join("/"));
    let node = prop_oneof![
        (
            prop::collection::vec(any::<u8>(), 0..3000),
            prop::sample::select(vec![0o644u32, 0o755, 0o600, 0o4755])
        )
            .prop_map(|(c, m)| Node::File(c, m)),
        prop::sample::select(vec!["a", "/etc/passwd", "../../x", "b/c"])
            .prop_map(|t| Node::Link(t.to_string())),
        prop::sample::select(vec![0o755u32, 0o700, 0o1777]).prop_map(Node::Dir),
    ];
    prop::collection::btree_map(path, node, 0..24)
}

/// Writes the tree under `root`, skipping entries whose parent became a
/// file or link; returns what was written.
fn materialize(root: &Path, t: &BTreeMap<String, Node>) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut written = Vec::new();
    for (rel, node) in t {
        let p = root.join(rel);
        let parent = p.parent().unwrap();
        if std::fs::create_dir_all(parent).is_err() || std::fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        let ok = match node {
            Node::File(c, m) => std::fs::write(&p, c)
                .and_then(|_| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*m))),
            Node::Link(to) => std::os::unix::fs::symlink(to, &p),
            Node::Dir(m) => std::fs::create_dir(&p)
                .and_then(|_| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*m))),
        };
        if ok.is_ok() {
            written.push(PathBuf::from(rel));
        }
    }
    written
}

/// Every path under `root`, relative, parents first.
fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap().flatten() {
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                todo.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort();
    out
}

fn layer_of(root: &Path, diff: &Diff, store: &BlobStore, c: Compression) -> PathBuf {
    let opts = LayerOptions {
        compression: c,
        ..Default::default()
    };
    let l = write_layer(root, diff, store, &opts).unwrap();
    store.path(&l.descriptor.digest)
}

/// A COPY source that shrinks after its placeholder was made fails the
/// layer with its name; it never yields a tar whose header lies.
#[test]
fn a_source_that_changed_since_its_copy_fails_the_layer() {
    use kiln_executor::copy::{copy_sources, match_sources, CopyOptions, Owner};
    let dir = tempfile::tempdir().unwrap();
    let (ctx, root) = (dir.path().join("ctx"), dir.path().join("root"));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(ctx.join("f"), vec![1u8; 5000]).unwrap();
    let found = match_sources(&ctx, "f", None, "the context").unwrap();
    let copy = CopyOptions {
        owner: Owner::Fixed(0, 0),
        chmod: None,
        defer_contents: true,
    };
    let mut diff = Diff::default();
    copy_sources(&root, &ctx, &found, "/f", None, &copy, &mut diff).unwrap();
    std::fs::write(ctx.join("f"), b"short").unwrap();
    let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
    let err = write_layer(&root, &diff, &store, &LayerOptions::default()).unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(
        text.contains("changed while its layer was written"),
        "{text}"
    );
    assert!(text.contains("ctx/f"), "{text}");
}

/// Names are bytes in a layer: directories and files whose names are not
/// UTF-8 are written, extracted and whited out under their own names.
#[test]
fn names_that_are_not_utf8_keep_their_bytes() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let odd_dir = PathBuf::from(OsStr::from_bytes(b"d\xff"));
    let odd_file = odd_dir.join(OsStr::from_bytes(b"f\xfe\x80"));
    let gone = odd_dir.join(OsStr::from_bytes(b"g\xc3"));
    for p in [&src, &dst] {
        std::fs::create_dir_all(p.join(&odd_dir)).unwrap();
    }
    std::fs::write(src.join(&odd_file), b"odd").unwrap();
    std::fs::write(dst.join(&gone), b"to be deleted").unwrap();
    let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
    let mut diff = Diff::default();
    diff.add(odd_dir.clone(), Change::Add);
    diff.add(odd_file.clone(), Change::Add);
    diff.add(gone.clone(), Change::Delete);
    apply(&dst, &layer_of(&src, &diff, &store, Compression::Gzip));
    assert_eq!(std::fs::read(dst.join(&odd_file)).unwrap(), b"odd");
    assert!(
        std::fs::symlink_metadata(dst.join(&gone)).is_err(),
        "the whiteout missed"
    );
    let names: Vec<_> = std::fs::read_dir(dst.join(&odd_dir))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![odd_file.file_name().unwrap().to_os_string()]);
}

/// An uncompressed layer is hashed once: its diff id is its digest, which
/// is the hash of the blob's bytes, and its size is the tar's.
#[test]
fn an_uncompressed_layers_diff_id_is_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), vec![3u8; 70_000]).unwrap();
    let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
    let mut diff = Diff::default();
    diff.add(PathBuf::from("d"), Change::Add);
    diff.add(PathBuf::from("d/f"), Change::Add);
    let opts = LayerOptions {
        compression: Compression::None,
        ..Default::default()
    };
    let l = write_layer(&src, &diff, &store, &opts).unwrap();
    let bytes = std::fs::read(store.path(&l.descriptor.digest)).unwrap();
    assert_eq!(l.descriptor.digest, Digest::sha256_of(&bytes));
    assert_eq!(l.diff_id, l.descriptor.digest);
    assert_eq!(l.uncompressed_size, bytes.len() as u64);
    assert_eq!(l.descriptor.size, bytes.len() as u64);
    assert!(bytes.windows(4).any(|w| w == [3u8; 4]), "not a plain tar");
}

fn apply(root: &Path, blob: &Path) {
    let f = std::fs::File::open(blob).unwrap();
    kiln_layers::extract::apply_layer(root, f).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn layers_round_trip(t in trees(), deleted in prop::collection::vec(any::<prop::sample::Index>(), 0..4), c in prop::sample::select(vec![Compression::Gzip, Compression::Zstd, Compression::None])) {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
        materialize(&src, &t);
        let mut diff = Diff::default();
        for p in all_paths(&src) {
            diff.add(p, Change::Add);
        }
        apply(&dst, &layer_of(&src, &diff, &store, c));
        let d = tree_diffs(&tree(&dst), &tree(&src), ("extracted", "written"));
        prop_assert!(d.is_empty(), "{}", d.join("\n"));

        // A second layer that deletes some paths.
        let paths = all_paths(&src);
        let mut gone = Diff::default();
        if !paths.is_empty() {
            for i in &deleted {
                let p = i.get(&paths).clone();
                if gone.changes.keys().any(|g| p.starts_with(g)) || std::fs::symlink_metadata(src.join(&p)).is_err() {
                    continue;
                }
                kiln_layers::extract::remove_any(&src.join(&p)).unwrap();
                gone.changes.retain(|k, _| !k.starts_with(&p));
                gone.add(p, Change::Delete);
            }
        }
        apply(&dst, &layer_of(&src, &gone, &store, c));
        let d = tree_diffs(&tree(&dst), &tree(&src), ("after deletions", "expected"));
        prop_assert!(d.is_empty(), "{}", d.join("\n"));
    }

    /// Issue 17: a COPY after which nothing reads the root leaves sized,
    /// unwritten placeholders there and its layer reads the sources; the
    /// layer must be byte for byte the one a full copy gives.
    #[test]
    fn a_copy_with_deferred_contents_writes_the_same_layer(t in trees(), zstd in any::<bool>()) {
        use kiln_executor::copy::{copy_sources, match_sources, CopyOptions, Owner};
        use std::os::unix::fs::MetadataExt;
        let c = if zstd { Compression::Zstd } else { Compression::Gzip };
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        materialize(&ctx, &t);
        std::fs::write(ctx.join("big"), vec![7u8; 300_000]).unwrap();
        let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let opts = LayerOptions { compression: c, reproducible: true, ..Default::default() };
        let mut digests = Vec::new();
        for defer in [false, true] {
            let root = dir.path().join(format!("root-{defer}"));
            std::fs::create_dir_all(&root).unwrap();
            let found = match_sources(&ctx, ".", None, "the context").unwrap();
            let copy = CopyOptions { owner: Owner::Fixed(0, 0), chmod: None, defer_contents: defer };
            let mut diff = Diff::default();
            copy_sources(&root, &ctx, &found, "/app/", None, &copy, &mut diff).unwrap();
            let big = std::fs::metadata(root.join("app/big")).unwrap();
            prop_assert_eq!(big.len(), 300_000);
            // A placeholder has its size but no blocks: nothing was written.
            prop_assert_eq!(big.blocks() == 0, defer, "blocks {}", big.blocks());
            prop_assert_eq!(diff.contents.is_empty(), !defer);
            let l = write_layer(&root, &diff.with_parents(), &store, &opts).unwrap();
            digests.push(l.descriptor.digest);
        }
        prop_assert_eq!(&digests[0], &digests[1]);
    }

    #[test]
    fn keys_are_stable_and_boundaries_count(fields in prop::collection::vec(("[a-z]{0,4}", "[a-z ]{0,6}"), 1..6), cut in 1usize..4) {
        let prev = Digest::sha256_of(b"prev");
        let key = |f: &[(String, String)]| {
            let mut k = KeyBuilder::new(&prev);
            for (n, v) in f {
                k.field(n, v);
            }
            k.finish().0
        };
        prop_assert_eq!(key(&fields), key(&fields));
        // Moving characters from one value to the next name changes the key.
        let (n, v) = fields[0].clone();
        if v.len() >= cut {
            let mut moved = fields.clone();
            moved[0] = (n, v[..v.len() - cut].to_string());
            moved.insert(1, (v[v.len() - cut..].to_string(), String::new()));
            prop_assert_ne!(key(&fields), key(&moved));
        }
        // A list is not the same as its items as fields.
        let items: Vec<String> = fields.iter().map(|(_, v)| v.clone()).collect();
        let mut a = KeyBuilder::new(&prev);
        a.list("l", &items);
        let mut b = KeyBuilder::new(&prev);
        for i in &items {
            b.field("item", i);
        }
        prop_assert_ne!(a.finish().0, b.finish().0);
    }
}
