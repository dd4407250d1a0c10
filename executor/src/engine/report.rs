//! The build's running totals; the figures it reports are in
//! [`crate::outcome`].

use crate::outcome::FirstMiss;
use std::sync::atomic::AtomicU64;

/// The build's running totals (steps of several stages add to them).
#[derive(Default)]
pub(super) struct Counters {
    pub hits: AtomicU64,
    /// Execution time the hits' entries recorded, in milliseconds.
    pub saved_ms: AtomicU64,
    /// Layer bytes the hits reused instead of building and pushing again.
    pub saved_bytes: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
    pub pushed_cache: AtomicU64,
    /// The lowest-numbered first miss among the stages (stages may run
    /// concurrently, so "first" is by position, not by time).
    pub first_miss: std::sync::Mutex<Option<FirstMiss>>,
}

impl Counters {
    pub fn record_first_miss(&self, miss: FirstMiss) {
        let mut slot = self
            .first_miss
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_none_or(|m| miss.line < m.line) {
            *slot = Some(miss);
        }
    }
}
