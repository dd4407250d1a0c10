//! Filesystem trees as an outside view sees them, and their differences.

use super::*;

/// One filesystem entry as seen by an outside tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// sha256 of the content for files, the target for symlinks.
    pub data: String,
    /// Other paths sharing this inode (sorted), for hardlink groups.
    pub links: Vec<String>,
}

/// The differences between two trees, each line naming the side (`a`, `b`)
/// that has an entry alone or how the entries differ; empty when identical.
pub fn tree_diffs(
    a: &BTreeMap<String, Entry>,
    b: &BTreeMap<String, Entry>,
    (an, bn): (&str, &str),
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (p, e) in a {
        match b.get(p) {
            None => diffs.push(format!("only {an}: {p} {e:?}")),
            Some(f) if f != e => diffs.push(format!("differs: {p}\n  {an}: {e:?}\n  {bn}: {f:?}")),
            _ => {}
        }
    }
    for (p, e) in b {
        if !a.contains_key(p) {
            diffs.push(format!("only {bn}: {p} {e:?}"));
        }
    }
    diffs
}

/// Walks an unpacked root into comparable entries.
pub fn tree(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    fn walk(
        root: &Path,
        rel: &str,
        out: &mut BTreeMap<String, Entry>,
        inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
    ) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", n.to_string_lossy())
            };
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (kind, data) = if ft.is_dir() {
                ('d', String::new())
            } else if ft.is_symlink() {
                (
                    'l',
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if ft.is_file() {
                let mut h = sha2::Sha256::default();
                let mut f = std::fs::File::open(&p).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let k = f.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    sha2::Digest::update(&mut h, &buf[..k]);
                }
                ('f', hex::encode(sha2::Digest::finalize(h)))
            } else if ft.is_fifo() {
                ('p', String::new())
            } else {
                ('c', format!("{}", m.rdev()))
            };
            if kind == 'f' && m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(r.clone());
            }
            out.insert(
                r.clone(),
                Entry {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    data,
                    links: Vec::new(),
                },
            );
            if ft.is_dir() {
                walk(root, &r, out, inodes);
            }
        }
    }
    walk(root, "", &mut out, &mut inodes);
    for group in inodes.values() {
        if group.len() > 1 {
            for p in group {
                if let Some(e) = out.get_mut(p) {
                    e.links = group.iter().filter(|x| *x != p).cloned().collect();
                }
            }
        }
    }
    out
}
