//! Single flight: callers asking for the same key wait for the one ahead
//! of them instead of asking the upstream again; the second finds the
//! object stored. One lock per key, dropped with its last holder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

#[derive(Default)]
pub struct Flights {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Flights {
    /// Waits until no other caller holds `key`; holds it until the guard drops.
    pub async fn enter(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|_, w| w.strong_count() > 0);
            match m.get(&key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    m.insert(key, Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}
