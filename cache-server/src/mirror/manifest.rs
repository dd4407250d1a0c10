//! Manifests through the mirror: a tag revalidated by HEAD once per
//! window and fetched only when it moved, a digest fetched once; every
//! answer recorded in the upstream's health; a kept copy served stale when
//! the upstream fails or is held.

use super::health::Outcome;
use super::{digest_tag, Freshness, Mirror, MirrorError, Route};
use crate::store::Store;
use kiln_common::registry::{Answer, Limits};
use kiln_common::Digest;

impl Mirror {
    /// Makes manifest `reference` (a tag or a digest) of `route` present
    /// under `route.local`, asking the upstream only when the tag's window
    /// has passed (or it was never pulled).
    pub async fn manifest(
        &self,
        store: &Store,
        route: &Route,
        reference: &str,
    ) -> Result<Freshness, MirrorError> {
        let _one = self
            .flights
            .enter(format!("m {} {reference}", route.local))
            .await;
        if let Ok(d) = reference.parse::<Digest>() {
            if store
                .manifest(&route.local, &d)
                .await
                .map_err(self.store_err(route))?
                .is_some()
            {
                return Ok(Freshness::Fresh);
            }
            self.may_ask(route)?;
            return self.fetch_manifest(store, route, reference, Some(d)).await;
        }
        let key = (route.local.clone(), reference.to_string());
        let kept = store
            .resolve_tag(&route.local, reference)
            .await
            .map_err(self.store_err(route))?;
        let window = self.window(route);
        let recent = self.validated.lock().ok().and_then(|v| {
            v.get(&key)
                .filter(|(t, _)| t.elapsed() < window)
                .map(|(_, f)| *f)
        });
        let Some(kept) = kept else {
            self.may_ask(route)?;
            let f = self.fetch_manifest(store, route, reference, None).await?;
            self.mark(key, Freshness::Fresh);
            return Ok(f);
        };
        if let Some(f) = recent {
            return Ok(f);
        }
        // Kept: revalidated by HEAD, fetched only when the digest moved.
        let checked = async {
            self.may_ask(route)?;
            let a = self.ask(store, route, reference, true).await?;
            match a.status.as_u16() {
                200 if a.digest().as_ref() == Some(&kept.digest) => Ok(Freshness::Fresh),
                // Moved, or a HEAD without the digest header.
                200 => self.fetch_manifest(store, route, reference, None).await,
                404 => Err(MirrorError::NotFound {
                    upstream: self.host(route).to_string(),
                    what: format!("{}:{reference}", route.repo),
                }),
                status => Err(self.answered(route, reference, status, &a)),
            }
        }
        .await;
        match checked {
            Ok(f) => {
                self.mark(key, Freshness::Fresh);
                Ok(f)
            }
            Err(e) if e.is_upstream_failure() => {
                // Ask again only after another window (one slow request
                // per window while the upstream is down, not one per
                // pull); a hold is checked without asking, so it is not
                // marked.
                if !matches!(e, MirrorError::Held { .. }) {
                    self.mark(key, Freshness::Stale);
                }
                tracing::warn!(
                    "{}:{reference}: serving the kept copy: {}",
                    route.repo,
                    kiln_common::report::Report(&e)
                );
                Ok(Freshness::Stale)
            }
            Err(e) => Err(e),
        }
    }

    fn answered(&self, route: &Route, reference: &str, status: u16, a: &Answer) -> MirrorError {
        MirrorError::Answered {
            upstream: self.host(route).to_string(),
            what: format!("{}:{reference}", route.repo),
            status,
            retry_after: a.limits().retry_after,
        }
    }

    /// One manifest request upstream under `--mirror-timeout`, counted and
    /// recorded in the upstream's health.
    async fn ask(
        &self,
        store: &Store,
        route: &Route,
        reference: &str,
        head: bool,
    ) -> Result<Answer, MirrorError> {
        let kind = if head { "head" } else { "manifest" };
        let r = self.reference(route, reference);
        let got = self
            .bounded(route, self.registry.manifest_answer(&r, head))
            .await;
        match &got {
            Ok(a) => {
                self.count(store, route, kind, a.status.as_str());
                let outcome = Outcome::of_status(a.status.as_u16());
                self.record(store, route, outcome, a.limits());
            }
            Err(e) => {
                let result = match e {
                    MirrorError::Timeout { .. } => "timeout",
                    _ => "error",
                };
                self.count(store, route, kind, result);
                self.record(store, route, Outcome::Failed, Limits::default());
            }
        }
        got
    }

    async fn fetch_manifest(
        &self,
        store: &Store,
        route: &Route,
        reference: &str,
        want: Option<Digest>,
    ) -> Result<Freshness, MirrorError> {
        let a = self.ask(store, route, reference, false).await?;
        match a.status.as_u16() {
            200 => {}
            404 => {
                return Err(MirrorError::NotFound {
                    upstream: self.host(route).to_string(),
                    what: format!("{}:{reference}", route.repo),
                })
            }
            status => return Err(self.answered(route, reference, status, &a)),
        }
        // By digest, the digest asked for; by tag, the one the upstream
        // says it served: bytes that hash otherwise are refused.
        let actual = Digest::sha256_of(&a.body);
        if let Some(want) = want.or_else(|| a.digest()) {
            if actual != want {
                return Err(MirrorError::Digest {
                    upstream: self.host(route).to_string(),
                    what: format!("manifest {}:{reference}", route.repo),
                    expected: want,
                    actual,
                });
            }
        }
        // A digest is kept under its internal tag (see the module's doc).
        let tag = match reference.parse::<Digest>() {
            Ok(d) => digest_tag(&d),
            Err(_) => reference.to_string(),
        };
        store
            .put_mirrored_manifest(&route.local, &tag, a.body)
            .await
            .map_err(self.store_err(route))?;
        Ok(Freshness::Fetched)
    }
}
