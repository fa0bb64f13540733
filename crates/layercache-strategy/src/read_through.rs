//! Read-through: the cache owns its loader; reads never see the source directly.

use std::fmt;
use std::sync::Arc;

use layercache_core::{Key, Loader, Result};

use crate::cache_aside::{AbsentAsValue, CacheAside};

/// A cache that owns its loader: [`get`](Self::get) loads on a miss, and
/// [`get_many`](Self::get_many) reads all keys in one batch and loads all misses with one
/// [`Loader::load_many`] call.
///
/// Negative caching, TTLs, single-flight and the other guards are those of the [`CacheAside`] it
/// is built on.
pub struct ReadThrough<V, L: ?Sized> {
    cache: CacheAside<V>,
    loader: Arc<L>,
    batch_loader: Arc<AbsentAsValue<L>>,
}

impl<V, L: ?Sized> Clone for ReadThrough<V, L> {
    fn clone(&self) -> Self {
        ReadThrough {
            cache: self.cache.clone(),
            loader: Arc::clone(&self.loader),
            batch_loader: Arc::clone(&self.batch_loader),
        }
    }
}

impl<V, L: ?Sized> fmt::Debug for ReadThrough<V, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadThrough")
            .field("cache", &self.cache)
            .finish()
    }
}

impl<V, L> ReadThrough<V, L>
where
    V: Clone + Send + Sync + 'static,
    L: Loader<V> + ?Sized + 'static,
{
    /// A read-through cache over `cache`, loading with `loader`.
    pub fn new(cache: CacheAside<V>, loader: Arc<L>) -> Self {
        let batch_loader = Arc::new(AbsentAsValue(Arc::clone(&loader)));
        ReadThrough {
            cache,
            loader,
            batch_loader,
        }
    }

    /// The cache underneath.
    pub fn cache(&self) -> &CacheAside<V> {
        &self.cache
    }

    /// The value of `key`, loaded on a miss.
    pub async fn get(&self, key: &Key) -> Result<Option<V>> {
        self.cache.get_or_load(key, &self.loader).await
    }

    /// The values of `keys`, in order: one batched cache read, one batched load of the misses.
    pub async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<V>>> {
        let values = self
            .cache
            .guarded()
            .get_many_or_load(keys, &self.batch_loader)
            .await?;
        Ok(values.into_iter().map(Option::flatten).collect())
    }
}
