//! Pull-through mirror mode (`serve --mirror <host>=<url>`): base images
//! for the whole fleet from the cache server, so a cold CI pod never
//! spends Docker Hub's pull budget and an upstream outage stops no build
//! whose bases were pulled before.
//!
//! A pull is routed to an upstream as containerd selects mirrors (the
//! `ns=<host>` query parameter), by a repository named `<host>/<repo>`
//! (`<server>/docker.io/library/alpine`), or, with `--mirror-only` (Docker
//! Engine's `registry-mirrors`, which sends neither), to the first
//! upstream. What is pulled is kept under an internal repository
//! `_mirror/<host>/<repo>` that no client can name (a repository component
//! cannot start with `_`), so mirror and cache repositories never collide;
//! routed names are read-only to clients.
//!
//! Freshness: a tag is revalidated at most once per `--mirror-revalidate`
//! window, by a manifest HEAD (which Docker Hub does not count as a pull);
//! the manifest is fetched only when the digest moved. Digests are
//! immutable: fetched once. One upstream request serves every concurrent
//! caller of a manifest or blob (single flight). When the upstream fails
//! (an error status, a timeout, a refused connection) and a copy is kept,
//! the copy is served and marked stale (`X-Kiln-Stale: true`, a metric).
//! Everything fetched is verified against its digest before it is stored.
//!
//! Budgets and outages (`health.rs`): a 429 holds the upstream for what its
//! `Retry-After` asks (a minute when it does not say), three failures in a
//! row open a circuit breaker (30 s, doubling while it keeps failing); while
//! held, kept copies are served stale without asking and an uncached pull
//! fails at once with what the upstream last answered. Docker Hub's
//! `ratelimit-remaining` is exported, and revalidation windows stretch
//! fourfold while less than a tenth of the budget is left. Manifest
//! requests go outside oci-client ([`Registry::manifest_answer`]) for those
//! headers; its bearer tokens are kept until they expire.
//!
//! Expiry and GC: a manifest pulled by digest is kept under an internal
//! tag (`sha256-<hex>`), and every tag served is marked used (at most one
//! write per `--touch-after`), so what the fleet still pulls — platform
//! manifests of an index included — is never expired or collected, and
//! what nobody pulls any more goes after `--ttl`.

mod blob;
mod flight;
mod health;
mod manifest;

pub use blob::BlobFetch;
pub use health::Hold;

use crate::store::{Store, StoreError};
use health::{Health, Outcome};
use kiln_common::registry::{Limits, Registry, RegistryError, RegistryOptions};
use kiln_common::Digest;
use oci_client::Reference;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tags whose validation time is remembered before old ones are dropped.
const MAX_VALIDATED: usize = 50_000;

/// One `--mirror <host>=<url>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The registry host clients name (`docker.io`).
    pub host: String,
    /// Where it is reached (`https://registry-1.docker.io`).
    pub url: String,
}

impl std::str::FromStr for Upstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Upstream, String> {
        let (host, url) = s
            .split_once('=')
            .ok_or_else(|| format!("--mirror {s:?}: expected <host>=<url>"))?;
        let ok_url = url.starts_with("https://") || url.starts_with("http://");
        if host.is_empty() || host.contains('/') || !ok_url {
            return Err(format!(
                "--mirror {s:?}: expected <host>=<http(s)://url>, e.g. docker.io=https://registry-1.docker.io"
            ));
        }
        Ok(Upstream {
            host: host.to_string(),
            url: url.trim_end_matches('/').to_string(),
        })
    }
}

impl Upstream {
    /// The upstream's `host[:port]`, as registry references name it.
    fn registry(&self) -> &str {
        self.url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
    }
}

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub upstreams: Vec<Upstream>,
    /// `--mirror-only`: every pull goes to the first upstream.
    pub only: bool,
    /// `--mirror-revalidate`: how long a tag is served without asking.
    pub revalidate: Duration,
    /// `--mirror-timeout`: the longest an upstream manifest request, or a
    /// blob's first byte, may take; past it the upstream counts as failed
    /// (the kept copy is served).
    pub timeout: Duration,
    /// `--mirror-credentials`: a Docker `config.json` for the upstreams;
    /// `None`: Docker's usual lookup.
    pub credentials: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("upstream {upstream}")]
    Upstream {
        upstream: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("upstream {upstream}: {what} does not hash to {expected} (got {actual})")]
    Digest {
        upstream: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("upstream {upstream} has no {what}")]
    NotFound { upstream: String, what: String },
    #[error("storing what upstream {upstream} sent")]
    Store {
        upstream: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("staging a blob from upstream {upstream}")]
    Io {
        upstream: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the upstream clients")]
    Client(#[source] Box<RegistryError>),
    #[error("reading the upstreams' credentials (--mirror-credentials)")]
    Credentials(#[source] kiln_common::auth::AuthError),
    #[error("upstream {upstream} did not answer within {after:?}")]
    Timeout { upstream: String, after: Duration },
    #[error("upstream {upstream} answered {status} for {what}")]
    Answered {
        upstream: String,
        what: String,
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("upstream {upstream} is {why}; not asked again for {}s", .retry_after.as_secs().max(1))]
    Held {
        upstream: String,
        why: Hold,
        retry_after: Duration,
    },
}

impl MirrorError {
    /// Whether the upstream failed to serve (rather than the content or the
    /// store): a kept copy is then served stale.
    fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            MirrorError::Upstream { .. }
                | MirrorError::Timeout { .. }
                | MirrorError::Answered { .. }
                | MirrorError::Held { .. }
        )
    }
}

/// Where a routed pull goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    upstream: usize,
    /// The repository upstream (`library/alpine`).
    pub repo: String,
    /// Where its content is kept here (`_mirror/docker.io/library/alpine`).
    pub local: String,
}

/// What a manifest request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Kept, and known to be current (or immutable: a digest).
    Fresh,
    /// Fetched from the upstream for this request.
    Fetched,
    /// Kept, but the upstream could not be asked: served as it is.
    Stale,
}

pub struct Mirror {
    cfg: MirrorConfig,
    registry: Registry,
    /// When each `(local repo, tag)` was last validated upstream, and
    /// whether that attempt failed (the copy is then stale until the next).
    validated: Mutex<HashMap<(String, String), (Instant, Freshness)>>,
    /// Per upstream (as `cfg.upstreams`): holds, breaker, budget.
    health: Vec<Mutex<Health>>,
    flights: flight::Flights,
    staging: std::path::PathBuf,
}

impl Mirror {
    pub fn new(cfg: MirrorConfig, staging: std::path::PathBuf) -> Result<Mirror, MirrorError> {
        let insecure = cfg
            .upstreams
            .iter()
            .filter(|u| u.url.starts_with("http://"))
            .map(|u| u.registry().to_string())
            .collect();
        let creds = match &cfg.credentials {
            Some(p) => {
                kiln_common::auth::DockerConfig::load(p).map_err(MirrorError::Credentials)?
            }
            None => kiln_common::auth::DockerConfig::load_default()
                .unwrap_or_else(|_| kiln_common::auth::DockerConfig::default()),
        };
        let registry = Registry::new(
            RegistryOptions {
                insecure_hosts: insecure,
                stall_timeout: Some(Duration::from_secs(30)),
                ..Default::default()
            },
            creds,
        )
        .map_err(|e| MirrorError::Client(Box::new(e)))?;
        Ok(Mirror {
            health: cfg.upstreams.iter().map(|_| Mutex::default()).collect(),
            cfg,
            registry,
            validated: Mutex::new(HashMap::new()),
            flights: flight::Flights::default(),
            staging,
        })
    }

    /// Where a pull of `repo` (with `ns`, containerd's query parameter)
    /// goes; `None` for a cache repository.
    pub fn route(&self, repo: &str, ns: Option<&str>) -> Option<Route> {
        let by_ns = ns.and_then(|ns| self.cfg.upstreams.iter().position(|u| u.host == ns));
        let (i, upstream_repo) = match by_ns {
            Some(i) => (i, repo.to_string()),
            None => match self.cfg.upstreams.iter().position(|u| {
                repo.strip_prefix(&u.host)
                    .is_some_and(|r| r.starts_with('/'))
            }) {
                Some(i) => (i, repo[self.cfg.upstreams[i].host.len() + 1..].to_string()),
                None if self.cfg.only && !self.cfg.upstreams.is_empty() => (0, repo.to_string()),
                None => return None,
            },
        };
        let u = &self.cfg.upstreams[i];
        // Docker Hub's official images live under `library/`.
        let upstream_repo = if u.host == "docker.io" && !upstream_repo.contains('/') {
            format!("library/{upstream_repo}")
        } else {
            upstream_repo
        };
        Some(Route {
            upstream: i,
            local: format!("_mirror/{}/{upstream_repo}", u.host.replace(':', "_")),
            repo: upstream_repo,
        })
    }

    /// The host `route` goes to (`docker.io`), for metrics.
    pub fn host(&self, route: &Route) -> &str {
        &self.upstream(route).host
    }

    fn upstream(&self, route: &Route) -> &Upstream {
        &self.cfg.upstreams[route.upstream]
    }

    fn reference(&self, route: &Route, reference: &str) -> Reference {
        let reg = self.upstream(route).registry().to_string();
        match reference.parse::<Digest>() {
            Ok(_) => Reference::with_digest(reg, route.repo.clone(), reference.to_string()),
            Err(_) => Reference::with_tag(reg, route.repo.clone(), reference.to_string()),
        }
    }

    fn up_err(&self, route: &Route) -> impl Fn(RegistryError) -> MirrorError + '_ {
        let upstream = self.upstream(route).host.clone();
        move |e| MirrorError::Upstream {
            upstream: upstream.clone(),
            source: Box::new(e),
        }
    }

    fn store_err(&self, route: &Route) -> impl Fn(StoreError) -> MirrorError + '_ {
        let upstream = self.upstream(route).host.clone();
        move |e| MirrorError::Store {
            upstream: upstream.clone(),
            source: Box::new(e),
        }
    }

    fn count(&self, store: &Store, route: &Route, kind: &str, result: &str) {
        store
            .metrics()
            .mirror_upstream
            .get_or_create(&crate::metrics::MirrorLabel {
                upstream: self.upstream(route).host.clone(),
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Records how a request to `route`'s upstream ended, and exports what
    /// it said of the budget.
    fn record(&self, store: &Store, route: &Route, outcome: Outcome, limits: Limits) {
        let Ok(mut h) = self.health[route.upstream].lock() else {
            return;
        };
        h.record(Instant::now(), outcome, limits);
        let label = crate::metrics::UpstreamLabel {
            upstream: self.host(route).to_string(),
        };
        let m = store.metrics();
        if let Some(r) = h.remaining {
            m.mirror_ratelimit_remaining
                .get_or_create(&label)
                .set(i64::try_from(r).unwrap_or(i64::MAX));
        }
        if let Some(l) = h.limit {
            m.mirror_ratelimit_limit
                .get_or_create(&label)
                .set(i64::try_from(l).unwrap_or(i64::MAX));
        }
        let held = h.held(Instant::now());
        m.mirror_held_seconds
            .get_or_create(&label)
            .set(held.map_or(0, |(_, d)| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    }

    /// `Err(Held)` while `route`'s upstream must not be asked.
    fn may_ask(&self, route: &Route) -> Result<(), MirrorError> {
        let held = self.health[route.upstream]
            .lock()
            .ok()
            .and_then(|h| h.held(Instant::now()));
        match held {
            Some((why, retry_after)) => Err(MirrorError::Held {
                upstream: self.host(route).to_string(),
                why,
                retry_after,
            }),
            None => Ok(()),
        }
    }

    /// The revalidation window for `route`'s upstream now.
    fn window(&self, route: &Route) -> Duration {
        self.health[route.upstream]
            .lock()
            .map_or(self.cfg.revalidate, |h| h.window(self.cfg.revalidate))
    }

    /// `call` under `--mirror-timeout`, its errors as [`MirrorError`]s.
    async fn bounded<T>(
        &self,
        route: &Route,
        call: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, MirrorError> {
        match tokio::time::timeout(self.cfg.timeout, call).await {
            Ok(r) => r.map_err(self.up_err(route)),
            Err(_) => Err(MirrorError::Timeout {
                upstream: self.host(route).to_string(),
                after: self.cfg.timeout,
            }),
        }
    }

    fn mark(&self, key: (String, String), f: Freshness) {
        if let Ok(mut v) = self.validated.lock() {
            // Bounded: entries past the longest window say nothing more
            // than an absent one (the tag is asked about either way).
            if v.len() >= MAX_VALIDATED {
                let longest = self.cfg.revalidate.saturating_mul(4);
                v.retain(|_, (t, _)| t.elapsed() < longest);
            }
            v.insert(key, (Instant::now(), f));
        }
    }

    /// Marks `reference` of `route` as used now; a digest first gets its
    /// internal tag if it was kept only by a tag (which may move).
    pub async fn used(&self, store: &Store, route: &Route, reference: &str) {
        let tag = match reference.parse::<Digest>() {
            Ok(d) => {
                let tag = digest_tag(&d);
                if matches!(store.resolve_tag(&route.local, &tag).await, Ok(None)) {
                    if let Err(e) = store.put_tag(&route.local, &tag, &d).await {
                        tracing::warn!(
                            "{}@{d}: not kept by a tag: {}",
                            route.repo,
                            kiln_common::report::Report(&e)
                        );
                    }
                }
                tag
            }
            Err(_) => reference.to_string(),
        };
        store.keep_used(&route.local, &tag).await;
    }
}

/// The internal tag keeping a manifest pulled by digest.
fn digest_tag(d: &Digest) -> String {
    format!("sha256-{}", d.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(only: bool) -> Mirror {
        let cfg = MirrorConfig {
            upstreams: vec![
                "docker.io=https://registry-1.docker.io".parse().unwrap(),
                "ghcr.io=https://ghcr.io".parse().unwrap(),
            ],
            only,
            revalidate: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            credentials: None,
        };
        Mirror::new(cfg, std::env::temp_dir()).unwrap()
    }

    #[test]
    fn pulls_route_by_ns_by_name_or_to_the_first_upstream() {
        let m = mirror(false);
        let r = m.route("library/alpine", Some("docker.io")).unwrap();
        assert_eq!(
            (r.repo.as_str(), r.local.as_str()),
            ("library/alpine", "_mirror/docker.io/library/alpine")
        );
        let r = m.route("docker.io/alpine", None).unwrap();
        assert_eq!(r.repo, "library/alpine");
        let r = m.route("ghcr.io/org/tool", None).unwrap();
        assert_eq!(
            (r.repo.as_str(), r.local.as_str()),
            ("org/tool", "_mirror/ghcr.io/org/tool")
        );
        // A cache repository is not routed; nor is a name that only starts
        // like a host.
        assert_eq!(m.route("cache/app", None), None);
        assert_eq!(m.route("docker.iox/app", None), None);
        assert_eq!(m.route("library/alpine", Some("quay.io")), None);
        // --mirror-only: everything to the first.
        let r = mirror(true).route("library/alpine", None).unwrap();
        assert_eq!(r.local, "_mirror/docker.io/library/alpine");
    }

    #[test]
    fn upstreams_parse_with_a_clear_error() {
        assert!("docker.io"
            .parse::<Upstream>()
            .unwrap_err()
            .contains("<host>=<url>"));
        assert!("docker.io=ftp://x".parse::<Upstream>().is_err());
        let u: Upstream = "127.0.0.1:5001=http://127.0.0.1:5001/".parse().unwrap();
        assert_eq!(u.registry(), "127.0.0.1:5001");
    }
}
