//! What the server tells Prometheus. Every outcome a test or an operator
//! needs to see has a counter here: lookups by result, tier hits and bytes,
//! backend errors (a failed lookup is never silently a miss), evictions, GC,
//! coalesced fetches, and the build-level figures executors report.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabel {
    pub repo: String,
    pub result: String,
}

/// A shared cache mount's scope (`--cache-mount-scope`) in a repository.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountLabel {
    pub repo: String,
    pub scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountResultLabel {
    pub repo: String,
    pub scope: String,
    pub result: String,
}

/// The scope of a shared cache mount's tag, `mount-<scope>-<hash>` as the
/// executor names them (the scope made tag-safe); `None` for other tags.
pub fn mount_scope(tag: &str) -> Option<&str> {
    let rest = tag.strip_prefix("mount-")?;
    let (scope, hash) = rest.rsplit_once('-')?;
    (hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !scope.is_empty())
        .then_some(scope)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub tier: String,
}

impl TierLabel {
    pub fn disk() -> TierLabel {
        TierLabel {
            tier: "disk".into(),
        }
    }
    pub fn memory() -> TierLabel {
        TierLabel {
            tier: "memory".into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierResultLabel {
    pub tier: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierBytesLabel {
    pub tier: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub repo: String,
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepoLabel {
    pub repo: String,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// A hit served from a fallback repository (`--cache-from`) for a build
/// whose own repository (`repo`) lacked the entry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub repo: String,
    pub source: String,
}

/// A write refused: the repository and who asked (`anonymous`, `user`,
/// `identity`, `unverified`, `rejected`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub repo: String,
    pub caller: String,
}

/// A mirror's request to its upstream (`head`, `manifest`, `blob`) and
/// whether it was answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabel {
    pub upstream: String,
    pub kind: String,
    pub result: String,
}

/// A mirrored pull served: `fresh` or `stale` (the upstream failed).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedLabel {
    pub upstream: String,
    /// `cache` (kept and current), `upstream` (fetched for this pull) or
    /// `stale` (kept, the upstream failed or was held).
    pub from: String,
}

/// One mirror upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

pub struct Metrics {
    registry: Registry,
    pub lookups: Family<LookupLabel, Counter>,
    pub tier_requests: Family<TierResultLabel, Counter>,
    pub tier_bytes: Family<TierBytesLabel, Counter>,
    pub tier_stored_bytes: Family<TierLabel, Gauge>,
    pub tier_capacity_bytes: Family<TierLabel, Gauge>,
    /// `--max-size`, the store's budget that GC keeps it under (0: none).
    pub store_budget_bytes: Gauge,
    pub request_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub responses: Family<StatusLabel, Counter>,
    pub backend_errors: Family<OpLabel, Counter>,
    /// Backend calls that hit their deadline.
    pub backend_timeouts: Counter,
    /// 1 while the backend is skipped after repeated timeouts.
    pub backend_circuit_open: Gauge,
    pub evictions: Family<TierLabel, Counter>,
    pub coalesced: Family<TierLabel, Counter>,
    pub uploads: Family<KindLabel, Counter>,
    pub gc_runs: Counter,
    pub gc_failures: Counter,
    /// Same name as `cache-server gc --pushgateway` pushes: one alert
    /// covers GC in the server and GC as a CronJob.
    pub gc_last_success: Gauge,
    pub gc_deleted: Family<KindLabel, Counter>,
    pub gc_deleted_bytes: Counter,
    pub stored_bytes: Gauge,
    pub stored_blobs: Gauge,
    pub stored_entries: Gauge,
    pub build_steps: Family<LookupLabel, Counter>,
    pub build_seconds_saved: Family<RepoLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub builds: Family<RepoLabel, Counter>,
    pub build_bytes_saved: Family<RepoLabel, Counter>,
    pub build_first_miss: Family<StepLabel, Counter>,
    pub fallback_hits: Family<SourceLabel, Counter>,
    pub refused_writes: Family<RefusedLabel, Counter>,
    pub mirror_upstream: Family<MirrorLabel, Counter>,
    pub damaged_entries: Family<RepoLabel, Counter>,
    pub mirror_served: Family<ServedLabel, Counter>,
    pub mirror_ratelimit_remaining: Family<UpstreamLabel, Gauge>,
    pub mirror_ratelimit_limit: Family<UpstreamLabel, Gauge>,
    pub mirror_held_seconds: Family<UpstreamLabel, Gauge>,
    pub mirror_bytes_saved: Family<UpstreamLabel, Counter>,
    pub eviction_freed_bytes: Histogram,
    pub mount_restores: Family<MountResultLabel, Counter>,
    pub mount_restored_bytes: Family<MountLabel, Counter>,
    pub mount_saves: Family<MountLabel, Counter>,
    pub mount_size: Family<MountLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln_cache");
        let m = Metrics {
            registry: Registry::default(),
            lookups: Family::default(),
            tier_requests: Family::default(),
            tier_bytes: Family::default(),
            tier_stored_bytes: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            responses: Family::default(),
            backend_errors: Family::default(),
            backend_timeouts: Counter::default(),
            backend_circuit_open: Gauge::default(),
            evictions: Family::default(),
            coalesced: Family::default(),
            uploads: Family::default(),
            gc_runs: Counter::default(),
            gc_failures: Counter::default(),
            gc_last_success: Gauge::default(),
            gc_deleted: Family::default(),
            gc_deleted_bytes: Counter::default(),
            stored_bytes: Gauge::default(),
            tier_capacity_bytes: Family::default(),
            store_budget_bytes: Gauge::default(),
            stored_blobs: Gauge::default(),
            stored_entries: Gauge::default(),
            build_steps: Family::default(),
            build_seconds_saved: Family::default(),
            builds: Family::default(),
            build_bytes_saved: Family::default(),
            build_first_miss: Family::default(),
            fallback_hits: Family::default(),
            refused_writes: Family::default(),
            mirror_upstream: Family::default(),
            damaged_entries: Family::default(),
            mirror_served: Family::default(),
            mirror_ratelimit_remaining: Family::default(),
            mirror_ratelimit_limit: Family::default(),
            mirror_held_seconds: Family::default(),
            mirror_bytes_saved: Family::default(),
            eviction_freed_bytes: Histogram::new(exponential_buckets(4096.0, 4.0, 10)),
            mount_restores: Family::default(),
            mount_restored_bytes: Family::default(),
            mount_saves: Family::default(),
            mount_size: Family::default(),
        };
        registry.register(
            "lookups",
            "Cache entry lookups (batch or manifest by tag) by repository and result: hit, miss, expired, error",
            m.lookups.clone(),
        );
        registry.register(
            "tier_requests",
            "Reads per tier (memory, disk, remote) and result (hit, miss)",
            m.tier_requests.clone(),
        );
        registry.register(
            "tier_bytes",
            "Bytes read from (out) and written to (in) each tier",
            m.tier_bytes.clone(),
        );
        registry.register(
            "tier_stored_bytes",
            "Bytes currently held by a local tier",
            m.tier_stored_bytes.clone(),
        );
        registry.register(
            "tier_capacity_bytes",
            "What a local tier may hold before it evicts",
            m.tier_capacity_bytes.clone(),
        );
        registry.register(
            "store_budget_bytes",
            "The store's size budget (--max-size) that GC enforces; 0 when there is none",
            m.store_budget_bytes.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency by route and method",
            m.request_seconds.clone(),
        );
        registry.register(
            "responses",
            "Responses by route and status",
            m.responses.clone(),
        );
        registry.register(
            "backend_errors",
            "Remote store operations that failed, by operation",
            m.backend_errors.clone(),
        );
        registry.register(
            "backend_timeouts",
            "Backend calls that did not answer within their deadline",
            m.backend_timeouts.clone(),
        );
        registry.register(
            "backend_circuit_open",
            "1 while the backend is skipped after repeated timeouts",
            m.backend_circuit_open.clone(),
        );
        registry.register(
            "evictions",
            "Entries evicted from a local tier for space",
            m.evictions.clone(),
        );
        registry.register(
            "coalesced_requests",
            "Requests that waited on another request's fetch of the same object instead of fetching it again",
            m.coalesced.clone(),
        );
        registry.register(
            "uploads",
            "Blob uploads by result: committed, digest_invalid, size_invalid, aborted",
            m.uploads.clone(),
        );
        registry.register(
            "gc_runs",
            "Garbage collections completed",
            m.gc_runs.clone(),
        );
        registry.register(
            "gc_failures",
            "Garbage collections that failed (the server retries at the next interval)",
            m.gc_failures.clone(),
        );
        registry.register(
            "gc_last_success_timestamp_seconds",
            "When the last garbage collection completed (Unix time)",
            m.gc_last_success.clone(),
        );
        registry.register(
            "gc_deleted",
            "Objects deleted by GC by kind: tag, manifest, blob",
            m.gc_deleted.clone(),
        );
        registry.register(
            "gc_deleted_bytes",
            "Blob bytes deleted by GC",
            m.gc_deleted_bytes.clone(),
        );
        registry.register(
            "stored_bytes",
            "Blob bytes in the remote store (as of the last GC scan)",
            m.stored_bytes.clone(),
        );
        registry.register(
            "stored_blobs",
            "Blobs in the remote store (as of the last GC scan)",
            m.stored_blobs.clone(),
        );
        registry.register(
            "stored_entries",
            "Tags (cache entries) in the remote store (as of the last GC scan)",
            m.stored_entries.clone(),
        );
        registry.register(
            "build_steps",
            "Build steps executors reported, by repository and result (hit, miss)",
            m.build_steps.clone(),
        );
        registry.register(
            "build_seconds_saved",
            "Seconds executors report their cache hits saved",
            m.build_seconds_saved.clone(),
        );
        registry.register("builds", "Builds executors reported", m.builds.clone());
        registry.register(
            "build_bytes_saved",
            "Layer bytes executors report their cache hits reused (not built or pushed again)",
            m.build_bytes_saved.clone(),
        );
        registry.register(
            "build_first_miss",
            "Builds whose first cache miss was this step (`line N INSTRUCTION`): a step that is the first miss of every build busts the cache",
            m.build_first_miss.clone(),
        );
        registry.register(
            "fallback_hits",
            "Batch-lookup hits a build's own repository lacked and a fallback repository (--cache-from) had, by both: how much branch builds gain from main's cache",
            m.fallback_hits.clone(),
        );
        registry.register(
            "refused_writes",
            "Writes refused by the access policy, by repository and kind of caller: pull requests trying main's scope show up here",
            m.refused_writes.clone(),
        );
        registry.register(
            "damaged_entries",
            "Lookups whose tag names a manifest or blob the store does not have (damage from outside, not expiry): answered as misses",
            m.damaged_entries.clone(),
        );
        registry.register(
            "mirror_upstream_requests",
            "Requests a mirror made to its upstream, by kind (head, manifest, blob) and result (the HTTP status, timeout, error)",
            m.mirror_upstream.clone(),
        );
        registry.register(
            "mirror_manifests_served",
            "Mirrored manifests served, by where from: cache (kept and current), upstream (fetched for the pull), stale (kept; the upstream failed or was held)",
            m.mirror_served.clone(),
        );
        registry.register(
            "mirror_ratelimit_remaining",
            "Pulls the upstream says are left in its window (Docker Hub's ratelimit-remaining), as last seen",
            m.mirror_ratelimit_remaining.clone(),
        );
        registry.register(
            "mirror_ratelimit_limit",
            "Pulls the upstream allows per window (ratelimit-limit), as last seen",
            m.mirror_ratelimit_limit.clone(),
        );
        registry.register(
            "mirror_held_seconds",
            "Seconds the upstream is not asked for, as of its last request: a 429's Retry-After, or the circuit breaker open",
            m.mirror_held_seconds.clone(),
        );
        registry.register(
            "mirror_bytes_saved",
            "Blob bytes the mirror served from its store without asking the upstream",
            m.mirror_bytes_saved.clone(),
        );
        registry.register(
            "eviction_freed_bytes",
            "Bytes each eviction under a size budget actually freed (blobs no other entry uses)",
            m.eviction_freed_bytes.clone(),
        );
        registry.register(
            "mount_restores",
            "Shared cache mounts asked for by executors, by repository, scope (--cache-mount-scope) and result: hit, miss",
            m.mount_restores.clone(),
        );
        registry.register(
            "mount_restored_bytes",
            "Bytes of the shared cache mounts executors restored (the files the saved listing names), by repository and scope",
            m.mount_restored_bytes.clone(),
        );
        registry.register(
            "mount_saves",
            "Shared cache mounts saved by executors, by repository and scope",
            m.mount_saves.clone(),
        );
        registry.register(
            "mount_size_bytes",
            "Bytes of the last shared cache mount saved, by repository and scope",
            m.mount_size.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A shared cache mount's manifest was asked for (GET by tag).
    pub fn mount_restore(&self, repo: &str, scope: &str, bytes: Option<u64>) {
        let label = MountLabel {
            repo: repo.to_string(),
            scope: scope.to_string(),
        };
        self.mount_restores
            .get_or_create(&MountResultLabel {
                repo: label.repo.clone(),
                scope: label.scope.clone(),
                result: if bytes.is_some() { "hit" } else { "miss" }.to_string(),
            })
            .inc();
        if let Some(b) = bytes {
            self.mount_restored_bytes.get_or_create(&label).inc_by(b);
        }
    }

    /// A shared cache mount was saved (its manifest PUT by tag).
    pub fn mount_save(&self, repo: &str, scope: &str, bytes: u64) {
        let label = MountLabel {
            repo: repo.to_string(),
            scope: scope.to_string(),
        };
        self.mount_saves.get_or_create(&label).inc();
        self.mount_size
            .get_or_create(&label)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn lookup(&self, repo: &str, result: &str) {
        self.lookups
            .get_or_create(&LookupLabel {
                repo: repo.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn tier(&self, tier: &str, hit: bool) {
        self.tier_requests
            .get_or_create(&TierResultLabel {
                tier: tier.to_string(),
                result: if hit { "hit" } else { "miss" }.to_string(),
            })
            .inc();
    }

    pub fn bytes(&self, tier: &str, direction: &str, n: u64) {
        self.tier_bytes
            .get_or_create(&TierBytesLabel {
                tier: tier.to_string(),
                direction: direction.to_string(),
            })
            .inc_by(n);
    }

    /// An upload's outcome: committed, digest_invalid, size_invalid, aborted.
    pub fn upload(&self, result: &str) {
        self.uploads
            .get_or_create(&KindLabel {
                kind: result.to_string(),
            })
            .inc();
    }

    /// Objects GC deleted, by kind: tag, manifest, blob.
    pub fn gc_deleted(&self, kind: &str, n: u64) {
        self.gc_deleted
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc_by(n);
    }

    pub fn backend_error(&self, op: &str) {
        self.backend_errors
            .get_or_create(&OpLabel { op: op.to_string() })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_tags_name_their_scope() {
        let h = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            mount_scope(&format!("mount-feature-x-{h}")),
            Some("feature-x")
        );
        assert_eq!(mount_scope(&format!("mount-{h}")), None);
        assert_eq!(mount_scope("mount-main-123"), None);
        assert_eq!(mount_scope(&format!("cache-main-{h}")), None);
    }
}
