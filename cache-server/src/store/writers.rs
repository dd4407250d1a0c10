//! Who wrote each tag: a small record beside the tag naming the manifest
//! written and the identity the request was authenticated as. A record is
//! believed only for the digest it names, so a tag rewritten without a
//! record (a crash between the two writes, a backend that cannot keep
//! records) has no writer rather than the previous one's.

use super::*;
use kiln_common::cache_api::Writer;

impl Store {
    /// Records `writer` for `tag` of `repo`. Best effort: a backend that
    /// keeps no such objects (an upstream registry) leaves entries without
    /// a writer, which `--cache-trust` builds treat as misses.
    pub async fn record_writer(&self, repo: &str, tag: &str, writer: &Writer) {
        let cached = (repo.to_string(), tag.to_string(), writer.digest.clone());
        let key = Key::writer(repo, tag);
        let Ok(bytes) = serde_json::to_vec(writer) else {
            self.writers.invalidate(&cached).await;
            return;
        };
        match self
            .call("put", self.storage.put_small(&key, Bytes::from(bytes)))
            .await
        {
            // Cached once stored: a lookup between the write and the cache
            // update can no longer leave a "no writer" behind for the TTL.
            Ok(()) => self.writers.insert(cached, Some(writer.clone())).await,
            Err(e) => {
                self.writers.invalidate(&cached).await;
                tracing::debug!(
                    "{key}: writer not recorded: {}",
                    kiln_common::report::Report(&e)
                );
            }
        }
    }

    /// The writer of `tag` of `repo`, if recorded for manifest `digest`.
    pub async fn writer(&self, repo: &str, tag: &str, digest: &Digest) -> Option<Writer> {
        let key = (repo.to_string(), tag.to_string(), digest.clone());
        if let Some(w) = self.writers.get(&key).await {
            return w;
        }
        let w = self.read_writer(repo, tag, digest).await;
        self.writers.insert(key, w.clone()).await;
        w
    }

    async fn read_writer(&self, repo: &str, tag: &str, digest: &Digest) -> Option<Writer> {
        let raw = self.read_small(&Key::writer(repo, tag)).await.ok()??;
        let w: Writer = serde_json::from_slice(&raw).ok()?;
        (&w.digest == digest).then_some(w)
    }
}
