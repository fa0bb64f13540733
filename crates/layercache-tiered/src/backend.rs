//! The two tiers as one [`Backend`]: for code written against the trait, and so the whole cache
//! runs the backend conformance suite like every other tier.

use std::fmt;

use layercache_core::{Backend, Entry, Key, Namespace, Result, async_trait};

use crate::cache::TieredCache;

/// A [`TieredCache`] seen as a [`Backend<V>`]: `get` reads L1, then L2 (refilling L1 through the
/// version table); `set`, `delete` and `clear` are the cache's own writes, so they invalidate its
/// loads in flight and return once L2 has them. A cached absence reads as a miss.
pub struct TieredBackend<V>(pub(crate) TieredCache<V>);

impl<V> fmt::Debug for TieredBackend<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TieredBackend").field(&self.0).finish()
    }
}

#[async_trait]
impl<V: Clone + Send + Sync + 'static> Backend<V> for TieredBackend<V> {
    async fn get(&self, key: &Key) -> Result<Option<Entry<V>>> {
        let entry = self.0.entry(key).await;
        Ok(entry.and_then(|entry| {
            let Entry { value, meta } = entry;
            value.map(|value| Entry::new(value, meta))
        }))
    }

    async fn set(&self, key: &Key, entry: Entry<V>) -> Result<()> {
        self.0
            .write_entry(key, Some(entry.map(Some)))
            .await
            .map(|_| ())
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        self.0.delete(key).await
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        self.0.clear(namespace).await
    }

    fn check_size(&self, entry: &Entry<V>) -> Result<()> {
        // L2 is what has a limit; it sees values as `Option<V>` (a copy, on this rare path).
        match &self.0.runtime.tiers.l2 {
            Some(l2) => l2.check_size(&entry.clone().map(Some)),
            None => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        "tiered"
    }
}
