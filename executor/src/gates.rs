//! Turns taken by key among concurrent tasks: one download per digest
//! (stages running at once and the base prefetch), one extraction per
//! shared base layer, one step at a time per cache mount id. The map only
//! grows, by one small entry per key a build meets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// An async lock per key, made on first use.
pub struct Gates<K> {
    map: Mutex<BTreeMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for Gates<K> {
    fn default() -> Self {
        Gates {
            map: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<K: Ord + Clone> Gates<K> {
    /// The lock of `key`: whoever holds it has the key's turn.
    pub fn gate(&self, key: &K) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key.clone()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_and_keys_apart() {
        let g: Gates<String> = Gates::default();
        let a = g.gate(&"a".to_string());
        let _held = a.lock().await;
        assert!(g.gate(&"a".to_string()).try_lock().is_err());
        assert!(g.gate(&"b".to_string()).try_lock().is_ok());
    }
}
