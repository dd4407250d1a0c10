//! Referrers as the store keeps them: one small record per (subject,
//! referrer) pair holding the referrer's descriptor
//! ([`crate::referrers`] for the pure part).

use super::*;
use crate::referrers::Referrer;

impl Store {
    /// Records manifest `d` of `repo` as a referrer of its subject. A
    /// backend that keeps no such records (an upstream registry) records
    /// nothing and says so with `None`: the client then keeps the
    /// tag-schema index itself, as OCI 1.1 asks of clients whose registry
    /// does not answer `OCI-Subject`.
    pub(super) async fn record_referrer(
        &self,
        repo: &str,
        d: &Digest,
        r: Referrer,
    ) -> Result<Option<Digest>, StoreError> {
        let key = Key::Referrer {
            repo: repo.to_string(),
            subject: r.subject.clone(),
            referrer: d.clone(),
        };
        let body = Bytes::from(r.descriptor.to_string());
        match self.call("put", self.storage.put_small(&key, body)).await {
            Ok(()) => Ok(Some(r.subject)),
            Err(StorageError::Unsupported { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets that `referrer` refers to `subject` (the referrer was deleted).
    pub(super) async fn forget_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<(), StoreError> {
        let key = Key::Referrer {
            repo: repo.to_string(),
            subject: subject.clone(),
            referrer: referrer.clone(),
        };
        match self.call("delete", self.storage.delete(&key)).await {
            Ok(()) | Err(StorageError::Unsupported { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The descriptors of the manifests of `repo` whose subject is
    /// `subject`. Records whose manifest is gone (deleted since, or a crash
    /// between the two writes) are left out; corrupt ones are reported and
    /// left out.
    pub async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let prefix = Prefix::Referrers {
            repo: repo.to_string(),
            subject: subject.clone(),
        };
        let listed = self.call("list", self.storage.list(&prefix)).await?;
        let mut out = Vec::with_capacity(listed.len());
        for m in listed {
            let Key::Referrer { referrer, .. } = &m.key else {
                continue;
            };
            if !self.in_repo(repo, referrer).await? {
                continue;
            }
            let Some((raw, _)) = self.call("get", self.storage.get_small(&m.key)).await? else {
                continue;
            };
            match crate::referrers::parse_record(&m.key.to_string(), &raw) {
                Ok(d) => out.push(d),
                Err(e) => tracing::warn!("{}", kiln_common::report::Report(&e)),
            }
        }
        Ok(out)
    }
}
