//! Tags: resolution through the memory tier, cache-entry lookups (a hit
//! only when unexpired and complete), the touch that refreshes last use,
//! tag deletion and listing.

use super::*;

impl Store {
    /// The digest a tag points at, from memory or the store.
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<TagEntry>, StoreError> {
        let k = (repo.to_string(), tag.to_string());
        if let Some(e) = self.memory.tags.get(&k).await {
            self.metrics.tier("memory", true);
            return Ok(Some(e));
        }
        self.metrics.tier("memory", false);
        let key = Key::tag(repo, tag);
        let got = self.call("get", self.storage.get_small(&key)).await?;
        self.metrics.tier("store", got.is_some());
        let Some((bytes, meta)) = got else {
            return Ok(None);
        };
        let digest: Digest = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| StoreError::Corrupt {
                key: key.to_string(),
                reason: "not a digest".into(),
            })?;
        let e = TagEntry {
            digest,
            modified: meta.modified,
        };
        self.memory.tags.insert(k, e.clone()).await;
        Ok(Some(e))
    }

    pub(super) fn expired(&self, e: &TagEntry) -> bool {
        if !self.storage.has_times() {
            return false;
        }
        match self.cfg.ttl {
            Some(ttl) => chrono::Utc::now()
                .signed_duration_since(e.modified)
                .to_std()
                .is_ok_and(|age| age > ttl),
            None => false,
        }
    }

    /// A cache-entry lookup: the tag, unexpired, whose manifest and blobs are
    /// all present. A hit refreshes the entry's last use.
    pub async fn lookup(&self, repo: &str, tag: &str) -> Result<Lookup, StoreError> {
        let r = self.lookup_inner(repo, tag).await;
        let result = match &r {
            Ok(Lookup::Hit(..)) => "hit",
            Ok(Lookup::Miss) => "miss",
            Ok(Lookup::Expired) => "expired",
            Err(_) => "error",
        };
        self.metrics.lookup(repo, result);
        r
    }

    pub(super) async fn lookup_inner(&self, repo: &str, tag: &str) -> Result<Lookup, StoreError> {
        let Some(entry) = self.resolve_tag(repo, tag).await? else {
            return Ok(Lookup::Miss);
        };
        if self.expired(&entry) {
            return Ok(Lookup::Expired);
        }
        let damaged = || {
            self.metrics
                .damaged_entries
                .get_or_create(&crate::metrics::RepoLabel {
                    repo: repo.to_string(),
                })
                .inc()
        };
        let Some(m) = self.manifest(repo, &entry.digest).await? else {
            tracing::warn!(
                "entry {repo}:{tag} names manifest {} the store lacks; treated as a miss",
                entry.digest
            );
            damaged();
            return Ok(Lookup::Miss);
        };
        for d in referenced_blobs(&m)? {
            if self.blob_size(repo, d).await?.is_none() {
                tracing::warn!("entry {repo}:{tag} refers to missing blob {d}; treated as a miss");
                damaged();
                return Ok(Lookup::Miss);
            }
        }
        self.touch(repo, tag, &entry).await;
        Ok(Lookup::Hit(entry, m))
    }

    /// Points `tag` of `repo` at manifest `d`, which must be stored there.
    pub async fn put_tag(&self, repo: &str, tag: &str, d: &Digest) -> Result<(), StoreError> {
        let key = Key::tag(repo, tag);
        self.call(
            "put",
            self.storage.put_small(&key, Bytes::from(d.to_string())),
        )
        .await?;
        self.memory
            .tags
            .insert(
                (repo.to_string(), tag.to_string()),
                TagEntry {
                    digest: d.clone(),
                    modified: chrono::Utc::now(),
                },
            )
            .await;
        Ok(())
    }

    /// Marks `tag` of `repo` as used now (at most one write per
    /// `touch_after`), so expiry and GC keep what is still pulled.
    pub async fn keep_used(&self, repo: &str, tag: &str) {
        if let Ok(Some(e)) = self.resolve_tag(repo, tag).await {
            self.touch(repo, tag, &e).await;
        }
    }

    /// Refreshes an entry's last use in the store, at most once per
    /// `touch_after` (one small write on that hit; a failure is counted and
    /// the hit still stands).
    pub(super) async fn touch(&self, repo: &str, tag: &str, e: &TagEntry) {
        let age = chrono::Utc::now().signed_duration_since(e.modified);
        if !self.storage.has_times() || age.to_std().map_or(true, |a| a < self.cfg.touch_after) {
            return;
        }
        let fresh = TagEntry {
            digest: e.digest.clone(),
            modified: chrono::Utc::now(),
        };
        self.memory
            .tags
            .insert((repo.to_string(), tag.to_string()), fresh)
            .await;
        let key = Key::tag(repo, tag);
        let body = Bytes::from(e.digest.to_string());
        if let Err(err) = self.call("put", self.storage.put_small(&key, body)).await {
            tracing::warn!(
                "could not refresh {key}: {}",
                kiln_common::report::Report(&err)
            );
        }
    }

    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), StoreError> {
        self.call("delete", self.storage.delete(&Key::tag(repo, tag)))
            .await?;
        self.memory
            .tags
            .invalidate(&(repo.to_string(), tag.to_string()))
            .await;
        Ok(())
    }

    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, StoreError> {
        let prefix = Prefix::Tags(repo.to_string());
        let mut v: Vec<String> = self
            .call("list", self.storage.list(&prefix))
            .await?
            .into_iter()
            .filter_map(|m| match m.key {
                Key::Tag { repo: r, tag } if r == repo && !tag.contains('/') => Some(tag),
                _ => None,
            })
            .collect();
        v.sort();
        Ok(v)
    }
}
