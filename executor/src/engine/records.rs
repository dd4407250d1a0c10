//! The cache's side of a build: entries written in the background as
//! steps finish (awaited, within `--cache-push-timeout`, before the push),
//! and the record of the build's keys that explains the next build's first
//! miss.

use super::*;

impl Builder {
    /// Whose build this is, for miss explanations: the first destination, else the Dockerfile.
    pub(super) fn record_name(&self) -> String {
        self.opts
            .output
            .destinations
            .first()
            .cloned()
            .unwrap_or_else(|| format!("dockerfile:{}", self.opts.dockerfile_path(None).display()))
    }

    /// A lookup's deadline (`--cache-lookup-timeout`).
    pub(super) fn lookup_timeout(&self) -> std::time::Duration {
        self.opts
            .cache
            .as_ref()
            .map_or(std::time::Duration::from_secs(10), |c| c.lookup_timeout)
    }

    pub(super) async fn previous_record(&self) -> Option<&crate::cache::BuildRecord> {
        let cache = self.cache.clone()?;
        let name = self.record_name();
        let dir = self.work_path().to_path_buf();
        let deadline = self.lookup_timeout();
        self.last_record
            .get_or_init(|| async move {
                let load = cache.write.load_record(&name, &dir);
                tokio::time::timeout(deadline, load).await.ok().flatten()
            })
            .await
            .as_ref()
    }

    pub(super) async fn save_record(&self) {
        let (Some(cache), Some(c)) = (&self.cache, &self.opts.cache) else {
            return;
        };
        if !c.push {
            return;
        }
        let mut steps = self
            .this_record
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        // Stages may finish in any order; the record is in Dockerfile order.
        steps.sort_by_key(|s| s.line);
        let record = crate::cache::BuildRecord {
            format: crate::cache_key::CACHE_FORMAT.into(),
            steps,
        };
        let name = self.record_name();
        let store = cache.write.store_record(&name, &record);
        match tokio::time::timeout(c.push_timeout, store).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "could not record this build for miss explanations: {}",
                Report(&e)
            ),
            Err(_) => tracing::warn!(
                "the cache did not take this build's record within {:?}",
                c.push_timeout
            ),
        }
    }

    /// Writes an executed step's cache entry in the background; false when
    /// entries are not written back (`--no-push-cache`).
    pub(super) fn store_entry(
        &self,
        planned: plan::Planned,
        layer: Option<&Layer>,
        started: Instant,
    ) -> bool {
        let Some(cache) = self.cache.clone() else {
            return false;
        };
        if !self.opts.cache.as_ref().is_some_and(|c| c.push) {
            return false;
        }
        let seconds = started.elapsed().as_secs_f64();
        let store = self.fetcher.store();
        let blob = layer.map(|l| crate::cache::EntryLayer {
            path: store.path(&l.descriptor.digest),
            descriptor: l.descriptor.clone(),
            diff_id: l.diff_id.clone(),
            outline: l
                .outline
                .as_ref()
                .map(|o| (store.path(&o.digest), o.clone())),
        });
        let key = planned.key.clone();
        let h = tokio::spawn(async move {
            cache
                .write
                .store(&planned.key, blob.as_ref(), planned.inputs, Some(seconds))
                .await?;
            Ok(blob.map(|l| l.descriptor.size).unwrap_or(0))
        });
        if let Ok(mut v) = self.cache_writes.lock() {
            v.push((key, h));
        }
        true
    }

    /// Records a hit found in a `--cache-from` repository into
    /// `--cache-repo` in the background (`--cache-from-record`, and only
    /// where entries are written back): mounts and a manifest, no layer
    /// bytes.
    pub(super) fn adopt_hit(&self, hit: &crate::cache::CacheHit) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        if !self
            .opts
            .cache
            .as_ref()
            .is_some_and(|c| c.push && c.record_from)
        {
            return;
        }
        let (key, hit) = (hit.key.clone(), hit.clone());
        let h = tokio::spawn(async move {
            if !cache.write.adopt(&hit).await? {
                tracing::info!(
                    "cache entry {} stays only in {}: it cannot be mounted into {}",
                    &hit.key.hex()[..12],
                    hit.from.as_ref().map_or("", |f| f.name.as_str()),
                    cache.write.describe()
                );
            }
            Ok(0)
        });
        if let Ok(mut v) = self.cache_writes.lock() {
            v.push((key, h));
        }
    }

    /// Waits for background cache writes, at most `--cache-push-timeout`
    /// in all: a failed write is a warning, and so are the writes still
    /// running at the deadline (they are abandoned and listed).
    pub(super) async fn finish_cache_writes(&self) {
        let handles: Vec<_> = match self.cache_writes.lock() {
            Ok(mut v) => v.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        let limit = self
            .opts
            .cache
            .as_ref()
            .map_or(std::time::Duration::from_secs(60), |c| c.push_timeout);
        let deadline = tokio::time::Instant::now() + limit;
        let mut unsaved = Vec::new();
        for (key, mut h) in handles {
            let res = match tokio::time::timeout_at(deadline, &mut h).await {
                Ok(r) => r,
                Err(_) => {
                    h.abort();
                    unsaved.push(key);
                    continue;
                }
            };
            match res {
                Ok(Ok(n)) => {
                    self.counters.pushed_cache.fetch_add(n, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("cache write failed (the build goes on): {}", Report(&e));
                }
                Err(e) => tracing::warn!("cache write task: {e}"),
            }
        }
        if !unsaved.is_empty() {
            self.counters
                .errors
                .fetch_add(unsaved.len() as u64, Ordering::Relaxed);
            let keys: Vec<String> = unsaved.iter().map(|k| k.to_string()).collect();
            tracing::warn!(
                "{} cache entries were not saved within --cache-push-timeout={limit:?} \
                 (the build goes on without them): {}",
                keys.len(),
                keys.join(", ")
            );
        }
    }
}
