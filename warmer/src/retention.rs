//! Retention: `--keep-unused-for` and `--max-size`, then the blobs and
//! extracted layers no kept entry references.

use super::*;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Retention {
    pub removed_entries: Vec<String>,
    pub removed_blobs: usize,
    pub removed_bytes: u64,
    /// Extracted layers removed with the last image that used them.
    pub removed_extracted: usize,
}

/// `--keep-unused-for` and `--max-size`, then removal of blobs no kept entry
/// references. Blobs younger than `grace` are never removed: a concurrent
/// warmer may have written them and not yet added its entry.
pub fn retain(
    cache_dir: &Path,
    keep_unused_for: Option<Duration>,
    max_size: Option<u64>,
    grace: Duration,
    dry_run: bool,
) -> Result<Retention, WarmError> {
    let dir = CacheDir::open(cache_dir)?;
    let lock = dir.lock()?;
    let now = chrono::Utc::now();
    let mut out = Retention::default();
    let mut entries = dir.entries()?;
    let last = |e: &kiln_common::layout::WarmEntry| e.last_used.or(e.fetched).unwrap_or(now);
    let mut drop: HashSet<(String, String)> = HashSet::new();
    if let Some(k) = keep_unused_for {
        for e in &entries {
            if now
                .signed_duration_since(last(e))
                .to_std()
                .unwrap_or_default()
                > k
            {
                drop.insert((e.reference.clone(), e.platform.to_string()));
            }
        }
    }
    if let Some(max) = max_size {
        // Least recently used first, until the blobs and extracted layers
        // the rest need fit. What each entry needs is read, and extracted
        // directories are measured, once.
        entries.sort_by_key(|e| last(e));
        let extracted = kiln_layers::lowers::sizes(cache_dir);
        let needs: Vec<Footprint> = entries.iter().map(|e| footprint(&dir, e)).collect();
        while referenced_size(&dir, &entries, &needs, &drop, &extracted) > max {
            match entries
                .iter()
                .find(|e| !drop.contains(&(e.reference.clone(), e.platform.to_string())))
            {
                Some(e) => {
                    drop.insert((e.reference.clone(), e.platform.to_string()));
                }
                None => break,
            }
        }
    }
    out.removed_entries = drop.iter().map(|(r, p)| format!("{r} ({p})")).collect();
    out.removed_entries.sort();
    if !dry_run && !drop.is_empty() {
        lock.remove_entries(|e| drop.contains(&(e.reference.clone(), e.platform.to_string())))?;
    }
    let kept: Vec<_> = dir
        .entries()?
        .into_iter()
        .filter(|e| !drop.contains(&(e.reference.clone(), e.platform.to_string())))
        .collect();
    let keep = referenced(&dir, &kept);
    let keep_ids = referenced_diff_ids(&dir, &kept);
    out.removed_extracted =
        kiln_layers::lowers::retain(cache_dir, |hex| keep_ids.contains(hex), grace, dry_run).len();
    let blobs = dir.blobs();
    let rd = std::fs::read_dir(&blobs).map_err(|source| LayoutError::Io {
        path: blobs.clone(),
        source,
    })?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(m) = e.metadata() else { continue };
        let young = m
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|a| a < grace);
        if keep.contains(&name) || young {
            continue;
        }
        out.removed_blobs += 1;
        out.removed_bytes += m.len();
        if !dry_run {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(out)
}

fn referenced(dir: &CacheDir, entries: &[kiln_common::layout::WarmEntry]) -> HashSet<String> {
    let mut keep = HashSet::new();
    for e in entries {
        keep.insert(e.manifest.digest.hex().to_string());
        if let Ok(b) = dir.read_blob(&e.manifest.digest) {
            if let Ok(m) = serde_json::from_slice::<kiln_common::image::Manifest>(&b) {
                keep.insert(m.config.digest.hex().to_string());
                for l in m.layers {
                    keep.insert(l.digest.hex().to_string());
                }
            }
        }
    }
    keep
}

/// The diff ids (hex) of every layer of `entries`: their extracted copies.
fn referenced_diff_ids(
    dir: &CacheDir,
    entries: &[kiln_common::layout::WarmEntry],
) -> HashSet<String> {
    let mut keep = HashSet::new();
    for e in entries {
        let config = warmed_image(dir, &e.manifest.digest).ok().map(|(_, c)| c);
        for id in config.into_iter().flat_map(|c| c.rootfs.diff_ids) {
            keep.insert(id.hex().to_string());
        }
    }
    keep
}

/// What one warmed image needs on disk: its blobs and the extracted copies
/// of its layers (hex names).
struct Footprint {
    blobs: HashSet<String>,
    layers: HashSet<String>,
}

fn footprint(dir: &CacheDir, e: &kiln_common::layout::WarmEntry) -> Footprint {
    let one = std::slice::from_ref(e);
    Footprint {
        blobs: referenced(dir, one),
        layers: referenced_diff_ids(dir, one),
    }
}

/// What the entries not in `drop` occupy: their blobs, and the extracted
/// copies of their layers (`extracted`: bytes per diff id); shared ones
/// once. `needs` is each entry's footprint, in the order of `entries`.
fn referenced_size(
    dir: &CacheDir,
    entries: &[kiln_common::layout::WarmEntry],
    needs: &[Footprint],
    drop: &HashSet<(String, String)>,
    extracted: &std::collections::HashMap<String, u64>,
) -> u64 {
    let kept: Vec<&Footprint> = entries
        .iter()
        .zip(needs)
        .filter(|(e, _)| !drop.contains(&(e.reference.clone(), e.platform.to_string())))
        .map(|(_, n)| n)
        .collect();
    let blobs: HashSet<&String> = kept.iter().flat_map(|n| &n.blobs).collect();
    let layers: HashSet<&String> = kept.iter().flat_map(|n| &n.layers).collect();
    let blob_bytes: u64 = blobs
        .iter()
        .filter_map(|h| std::fs::metadata(dir.blobs().join(h)).ok())
        .map(|m| m.len())
        .sum();
    let layer_bytes: u64 = layers.iter().filter_map(|id| extracted.get(*id)).sum();
    blob_bytes + layer_bytes
}
