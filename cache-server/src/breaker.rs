//! Deadlines and a circuit breaker between the store and its backend. An
//! object store that hangs (an S3 brownout, a dead NAT: connections
//! accepted, nothing answered) must not hold requests — and the builds
//! behind them — for the client library's two-minute timeout: every backend
//! call gets a deadline, and after several timeouts in a row the breaker
//! opens and calls fail at once until a probe gets through.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive timeouts that open the breaker.
const OPEN_AFTER: u32 = 3;

/// Why a guarded call did not reach the backend or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("the backend did not answer {op} within {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("the backend is skipped for {left:?} after {OPEN_AFTER} timeouts in a row")]
    Open { left: Duration },
}

pub struct Breaker {
    /// For small calls (head, get, put of tags and manifests, delete).
    pub meta: Duration,
    /// For blob uploads and listings.
    pub transfer: Duration,
    /// How long the breaker stays open.
    pub cool_off: Duration,
    timeouts: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    pub fn new(meta: Duration, transfer: Duration, cool_off: Duration) -> Breaker {
        Breaker {
            meta,
            transfer,
            cool_off,
            timeouts: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// How long the breaker stays open, if it is.
    pub fn open_for(&self) -> Option<Duration> {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Runs `fut` under `deadline`, unless the breaker is open. `Ok(inner)`
    /// is whatever the call returned (its own errors included).
    pub async fn call<T>(
        &self,
        op: &'static str,
        deadline: Duration,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, GuardError> {
        if let Some(left) = self.open_for() {
            return Err(GuardError::Open { left });
        }
        match tokio::time::timeout(deadline, fut).await {
            Ok(v) => {
                self.timeouts.store(0, Ordering::Relaxed);
                Ok(v)
            }
            Err(_) => {
                let n = self.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= OPEN_AFTER {
                    let until = self.now_ms() + self.cool_off.as_millis() as u64;
                    self.open_until_ms.store(until, Ordering::Relaxed);
                    tracing::warn!(
                        "backend: {n} calls in a row timed out; skipping it for {:?}",
                        self.cool_off
                    );
                }
                Err(GuardError::Timeout {
                    op,
                    after: deadline,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_after_repeated_timeouts_and_closes_after_the_cool_off() {
        let b = Breaker::new(
            Duration::from_millis(20),
            Duration::from_millis(20),
            Duration::from_millis(200),
        );
        let hang = || tokio::time::sleep(Duration::from_secs(5));
        for _ in 0..OPEN_AFTER {
            assert!(matches!(
                b.call("get", b.meta, hang()).await,
                Err(GuardError::Timeout { .. })
            ));
        }
        // Open: fails at once, without waiting for the deadline.
        let t = Instant::now();
        assert!(matches!(
            b.call("get", b.meta, hang()).await,
            Err(GuardError::Open { .. })
        ));
        assert!(t.elapsed() < Duration::from_millis(15));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(b.open_for().is_none());
        assert_eq!(b.call("get", b.meta, async { 7 }).await.unwrap(), 7);
    }
}
