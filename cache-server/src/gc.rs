//! Expiry, size budget and garbage collection, run online (inside the
//! server on an interval) or one-shot (`cache-server gc`, for a CronJob).
//!
//! Order matters for safety against concurrent pushes: tags are expired
//! first; then untagged manifests and unreferenced blobs are deleted only if
//! they are older than a grace period (a push writes blobs before the
//! manifest that names them, so a blob younger than the grace may belong to
//! a manifest not written yet); and before deleting, everything written
//! since the scan began is scanned again and its references kept.

use crate::backend::{Meta, StorageError};
use crate::keys::{Key, Prefix};
use crate::manifest::{referenced_blobs, referenced_manifests};
use crate::store::{Store, StoreError};
use kiln_common::Digest;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub ttl: Option<Duration>,
    /// Total blob bytes to keep; least recently used entries go first.
    pub max_size: Option<u64>,
    /// The same, for what each repository's entries reference.
    pub max_size_per_repo: Option<u64>,
    pub grace: Duration,
    pub dry_run: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub tags_expired: Vec<String>,
    pub tags_evicted: Vec<String>,
    pub manifests_deleted: usize,
    pub blobs_deleted: usize,
    pub bytes_deleted: u64,
    pub blobs_kept: usize,
    pub bytes_kept: u64,
    pub entries_kept: usize,
    pub dry_run: bool,
}

struct Tag {
    repo: String,
    name: String,
    meta: Meta,
}

pub async fn collect(store: &Store, opts: &GcOptions) -> Result<GcReport, StoreError> {
    if !store.keeps_times() {
        return Err(StoreError::Storage(StorageError::Unsupported {
            op: "garbage collection (expiry is the upstream registry's own)",
            backend: store.describe(),
        }));
    }
    let started = chrono::Utc::now();
    let grace = chrono::Duration::from_std(opts.grace).unwrap_or(chrono::Duration::hours(1));
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let (mut tags, manifests, first_referrers) = scan_repos(store).await?;
    let first_scan: BTreeSet<(String, chrono::DateTime<chrono::Utc>)> = tags
        .iter()
        .map(|t| &t.meta)
        .chain(manifests.values())
        .chain(first_referrers.iter().map(|r| &r.3))
        .map(|m| (m.key.to_string(), m.modified))
        .collect();
    let blobs: BTreeMap<Digest, Meta> = store
        .list(&Prefix::Blobs)
        .await?
        .into_iter()
        .filter_map(|m| match &m.key {
            Key::Blob(d) => Some((d.clone(), m)),
            _ => None,
        })
        .collect();

    // 1. Expiry: entries unused for longer than the TTL.
    if let Some(ttl) = opts.ttl.and_then(|t| chrono::Duration::from_std(t).ok()) {
        let (old, keep): (Vec<Tag>, Vec<Tag>) = tags
            .into_iter()
            .partition(|t| started - t.meta.modified > ttl);
        for t in old {
            report.tags_expired.push(format!("{}:{}", t.repo, t.name));
            if !opts.dry_run {
                store.delete_tag(&t.repo, &t.name).await?;
            }
        }
        tags = keep;
    }

    // Which blobs each surviving tag needs (through indexes too).
    let mut needs: Vec<BTreeSet<Digest>> = Vec::with_capacity(tags.len());
    for t in &tags {
        needs.push(tag_closure(store, &t.repo, &t.meta, &manifests).await?.1);
    }

    // 2. Size budgets, per repository and then in total: drop least
    // recently used entries until what the rest reference fits.
    let size_of = |d: &Digest| blobs.get(d).map_or(0, |m| m.size);
    // Each evicted entry, with the bytes its eviction frees.
    let mut evict: BTreeMap<usize, u64> = BTreeMap::new();
    if let Some(budget) = opts.max_size_per_repo {
        let repos: BTreeSet<&str> = tags.iter().map(|t| t.repo.as_str()).collect();
        for repo in repos {
            let members: Vec<usize> = (0..tags.len()).filter(|&i| tags[i].repo == repo).collect();
            evict.extend(lru_over_budget(&members, &tags, &needs, &size_of, budget));
        }
    }
    if let Some(budget) = opts.max_size {
        let members: Vec<usize> = (0..tags.len()).filter(|i| !evict.contains_key(i)).collect();
        evict.extend(lru_over_budget(&members, &tags, &needs, &size_of, budget));
    }
    if !evict.is_empty() {
        let mut kept_tags = Vec::new();
        let mut kept_needs = Vec::new();
        for (i, (t, n)) in tags.into_iter().zip(needs).enumerate() {
            if let Some(freed) = evict.get(&i) {
                report.tags_evicted.push(format!("{}:{}", t.repo, t.name));
                if !opts.dry_run {
                    store.delete_tag(&t.repo, &t.name).await?;
                    store.metrics().eviction_freed_bytes.observe(*freed as f64);
                }
            } else {
                kept_tags.push(t);
                kept_needs.push(n);
            }
        }
        tags = kept_tags;
        needs = kept_needs;
    }

    // 3. Manifests reachable from a kept tag, and the blobs they need.
    let mut live_manifests: BTreeSet<(String, Digest)> = BTreeSet::new();
    let mut live_blobs: BTreeSet<Digest> = needs.into_iter().flatten().collect();
    for t in &tags {
        for d in tag_closure(store, &t.repo, &t.meta, &manifests).await?.0 {
            live_manifests.insert((t.repo.clone(), d));
        }
    }
    // Young untagged manifests may be an index's children pushed first.
    for ((repo, d), m) in &manifests {
        if started - m.modified <= grace && !live_manifests.contains(&(repo.clone(), d.clone())) {
            live_manifests.insert((repo.clone(), d.clone()));
            if let Some(mb) = store.manifest(repo, d).await? {
                live_blobs.extend(referenced_blobs(&mb).unwrap_or_default().iter().cloned());
            }
        }
    }

    // 4. Rescan, and keep the references of whatever was written since the
    // first scan (new or rewritten objects), whatever the clocks say.
    let (tags2, manifests2, referrers) = scan_repos(store).await?;
    let seen: BTreeSet<(String, chrono::DateTime<chrono::Utc>)> = first_scan;
    let is_new = |m: &Meta| !seen.contains(&(m.key.to_string(), m.modified));
    for t in tags2.iter().filter(|t| is_new(&t.meta)) {
        let (ms, bs) = tag_closure(store, &t.repo, &t.meta, &manifests2).await?;
        live_manifests.extend(ms.into_iter().map(|d| (t.repo.clone(), d)));
        live_blobs.extend(bs);
    }
    for ((repo, d), m) in &manifests2 {
        if is_new(m) {
            live_manifests.insert((repo.clone(), d.clone()));
            if let Some(mb) = store.manifest(repo, d).await? {
                live_blobs.extend(referenced_blobs(&mb).unwrap_or_default().iter().cloned());
            }
        }
    }

    // 5. Referrers (signatures, SBOMs, provenance) live while their subject
    // does, and so do theirs in turn; records of dead ones go.
    keep_referrers(store, &referrers, &mut live_manifests, &mut live_blobs).await?;
    for (repo, subject, referrer, meta) in &referrers {
        let live = |d: &Digest| live_manifests.contains(&(repo.clone(), d.clone()));
        let kept = live(subject) && live(referrer);
        if !kept && !is_new(meta) && !opts.dry_run {
            store.delete_object(&meta.key).await?;
        }
    }

    for (repo, d) in manifests.keys() {
        if !live_manifests.contains(&(repo.clone(), d.clone())) {
            report.manifests_deleted += 1;
            if !opts.dry_run {
                store.delete_object(&Key::manifest(repo, d)).await?;
                store.metrics().gc_deleted("manifest", 1);
            }
        }
    }
    for (d, m) in &blobs {
        if live_blobs.contains(d) || started - m.modified <= grace {
            report.blobs_kept += 1;
            report.bytes_kept += m.size;
            continue;
        }
        report.blobs_deleted += 1;
        report.bytes_deleted += m.size;
        if !opts.dry_run {
            store.delete_blob(d).await?;
            store.metrics().gc_deleted("blob", 1);
            store.metrics().gc_deleted_bytes.inc_by(m.size);
        }
    }
    if !opts.dry_run {
        let deleted_tags = (report.tags_expired.len() + report.tags_evicted.len()) as u64;
        store.metrics().gc_deleted("tag", deleted_tags);
        store.metrics().gc_runs.inc();
        store
            .metrics()
            .gc_last_success
            .set(chrono::Utc::now().timestamp());
    }
    report.entries_kept = tags.len();
    report.tags_expired.sort();
    report.tags_evicted.sort();
    // What the store holds now: after deletions, or as it is for a dry run.
    let (bytes, blobs, entries) = if opts.dry_run {
        (
            report.bytes_kept + report.bytes_deleted,
            report.blobs_kept + report.blobs_deleted,
            report.entries_kept + report.tags_expired.len() + report.tags_evicted.len(),
        )
    } else {
        (report.bytes_kept, report.blobs_kept, report.entries_kept)
    };
    store.metrics().stored_bytes.set(bytes as i64);
    store.metrics().stored_blobs.set(blobs as i64);
    store.metrics().stored_entries.set(entries as i64);
    Ok(report)
}

/// Entries of `members` to evict so that the bytes the rest reference
/// (each blob counted once) fit `budget`. Least recently used first, but
/// an entry whose removal would free nothing now (every blob it needs is
/// needed by another entry too) is passed over while some other candidate
/// frees bytes: evicting it would lose an entry for no space. Only when no
/// single eviction frees anything (entries that share all their blobs)
/// does plain LRU order go on, since removing several of them together
/// does free their shared blobs. Each eviction comes with the bytes it
/// frees (a later eviction frees what it shared with earlier ones).
fn lru_over_budget(
    members: &[usize],
    tags: &[Tag],
    needs: &[BTreeSet<Digest>],
    size_of: &dyn Fn(&Digest) -> u64,
    budget: u64,
) -> Vec<(usize, u64)> {
    let mut refs: HashMap<&Digest, usize> = HashMap::new();
    for &i in members {
        for d in &needs[i] {
            *refs.entry(d).or_default() += 1;
        }
    }
    let mut total: u64 = refs.keys().map(|d| size_of(d)).sum();
    let mut order = members.to_vec();
    order.sort_by_key(|&i| tags[i].meta.modified);
    let mut out = Vec::new();
    let frees = |i: usize, refs: &HashMap<&Digest, usize>| -> u64 {
        needs[i]
            .iter()
            .filter(|d| refs.get(d) == Some(&1))
            .map(size_of)
            .sum()
    };
    while total > budget && !order.is_empty() {
        // The least recently used candidate that frees bytes, else the
        // least recently used of all.
        let pick = order.iter().position(|&i| frees(i, &refs) > 0).unwrap_or(0);
        let i = order.remove(pick);
        let mut freed = 0;
        for d in &needs[i] {
            if let Some(c) = refs.get_mut(d) {
                *c -= 1;
                if *c == 0 {
                    freed += size_of(d);
                }
            }
        }
        total -= freed;
        out.push((i, freed));
    }
    out
}

type Manifests = BTreeMap<(String, Digest), Meta>;

/// Referrer records: repository, subject, referrer, the record's object.
type Referrers = Vec<(String, Digest, Digest, Meta)>;

/// Adds to the live sets every referrer whose subject is live, until no
/// more are added (an SBOM's signature refers to the SBOM).
async fn keep_referrers(
    store: &Store,
    referrers: &Referrers,
    live_manifests: &mut BTreeSet<(String, Digest)>,
    live_blobs: &mut BTreeSet<Digest>,
) -> Result<(), StoreError> {
    loop {
        let mut added = false;
        for (repo, subject, referrer, _) in referrers {
            let key = (repo.clone(), referrer.clone());
            if live_manifests.contains(&key)
                || !live_manifests.contains(&(repo.clone(), subject.clone()))
            {
                continue;
            }
            let Some(mb) = store.manifest(repo, referrer).await? else {
                continue;
            };
            live_blobs.extend(referenced_blobs(&mb).unwrap_or_default().iter().cloned());
            for child in referenced_manifests(&mb) {
                if let Some(c) = store.manifest(repo, child).await? {
                    live_blobs.extend(referenced_blobs(&c).unwrap_or_default().iter().cloned());
                }
                live_manifests.insert((repo.clone(), child.clone()));
            }
            live_manifests.insert(key);
            added = true;
        }
        if !added {
            return Ok(());
        }
    }
}

async fn scan_repos(store: &Store) -> Result<(Vec<Tag>, Manifests, Referrers), StoreError> {
    let mut tags = Vec::new();
    let mut manifests = BTreeMap::new();
    let mut referrers = Vec::new();
    for m in store.list(&Prefix::Repos).await? {
        match &m.key {
            Key::Tag { repo, tag } => tags.push(Tag {
                repo: repo.clone(),
                name: tag.clone(),
                meta: m.clone(),
            }),
            Key::Manifest { repo, digest } => {
                manifests.insert((repo.clone(), digest.clone()), m.clone());
            }
            Key::Referrer {
                repo,
                subject,
                referrer,
            } => referrers.push((repo.clone(), subject.clone(), referrer.clone(), m.clone())),
            _ => {}
        }
    }
    Ok((tags, manifests, referrers))
}

/// The manifests and blobs a tag keeps alive.
async fn tag_closure(
    store: &Store,
    repo: &str,
    tag: &Meta,
    manifests: &Manifests,
) -> Result<(Vec<Digest>, BTreeSet<Digest>), StoreError> {
    let mut out_m = Vec::new();
    let mut out_b = BTreeSet::new();
    let Some(raw) = store.read_small(&tag.key).await? else {
        return Ok((out_m, out_b));
    };
    let Some(root) = std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.trim().parse::<Digest>().ok())
    else {
        return Ok((out_m, out_b));
    };
    let mut todo = vec![root];
    while let Some(d) = todo.pop() {
        if out_m.contains(&d) {
            continue;
        }
        out_m.push(d.clone());
        if !manifests.contains_key(&(repo.to_string(), d.clone())) {
            continue;
        }
        let mb = match store.manifest(repo, &d).await {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(StoreError::Storage(e)) => return Err(StoreError::Storage(e)),
            Err(e) => {
                // A corrupt manifest keeps nothing alive; it is reported.
                tracing::warn!("gc: {}", kiln_common::report::Report(&e));
                continue;
            }
        };
        out_b.extend(referenced_blobs(&mb).unwrap_or_default().iter().cloned());
        todo.extend(referenced_manifests(&mb).iter().cloned());
    }
    Ok((out_m, out_b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(name: &str, age_secs: i64) -> Tag {
        Tag {
            repo: "r".into(),
            name: name.into(),
            meta: Meta {
                key: Key::tag("r", name),
                size: 0,
                modified: chrono::Utc::now() - chrono::Duration::seconds(age_secs),
            },
        }
    }

    #[test]
    fn eviction_passes_over_entries_that_would_free_nothing() {
        let d = |s: &str| Digest::sha256_of(s.as_bytes());
        let (base, b, c) = (d("base"), d("b"), d("c"));
        let sizes: HashMap<Digest, u64> =
            [(base.clone(), 90), (b.clone(), 30), (c.clone(), 30)].into();
        let size_of = |x: &Digest| sizes.get(x).copied().unwrap_or(0);
        // A (oldest) needs only the shared base; B and C their own layer too.
        let tags = vec![tag("a", 300), tag("b", 200), tag("c", 100)];
        let needs = vec![
            BTreeSet::from([base.clone()]),
            BTreeSet::from([base.clone(), b.clone()]),
            BTreeSet::from([base.clone(), c.clone()]),
        ];
        // 150 bytes referenced, budget 130: B alone frees enough; A, the
        // least recently used, would free nothing and is kept.
        assert_eq!(
            lru_over_budget(&[0, 1, 2], &tags, &needs, &size_of, 130),
            [(1, 30)]
        );
        // Entries that share everything: LRU order, until the shared
        // blob goes with the last of them.
        let same = vec![BTreeSet::from([base.clone()]); 3];
        assert_eq!(
            lru_over_budget(&[0, 1, 2], &tags, &same, &size_of, 50),
            [(0, 0), (1, 0), (2, 90)]
        );
        // Within budget: nothing.
        assert!(lru_over_budget(&[0, 1, 2], &tags, &needs, &size_of, 150).is_empty());
    }
}
