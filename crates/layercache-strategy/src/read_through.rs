//! Read-through: the cache owns its loader; callers only read.

use std::fmt;
use std::sync::Arc;

use layercache_core::{Key, Loader, Result};
use layercache_tiered::TieredCache;

/// Read-through over a [`TieredCache`]: the cache owns its [`Loader`], so callers only name keys.
/// A thin adapter: every read is the cache's own pipeline (`get_or_load_from`, `get_many`), so it
/// shares the cache's single-flight, timeouts, fail-safe and per-key version table with every
/// other user of the same cache.
///
/// ```
/// use std::sync::Arc;
/// use layercache_core::{Key, loader_fn};
/// use layercache_strategy::ReadThrough;
/// use layercache_tiered::TieredCache;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cache: TieredCache<usize> = TieredCache::builder().build()?;
/// let lengths = ReadThrough::new(cache, Arc::new(loader_fn(|key: Key| async move { Ok(Some(key.as_str().len())) })));
/// assert_eq!(lengths.get(&Key::new("abc")?).await?, Some(3));
/// # Ok::<(), layercache_core::Error>(())
/// # }).unwrap();
/// ```
pub struct ReadThrough<V, L: ?Sized> {
    cache: TieredCache<V>,
    loader: Arc<L>,
}

impl<V, L: ?Sized> Clone for ReadThrough<V, L> {
    fn clone(&self) -> Self {
        ReadThrough {
            cache: self.cache.clone(),
            loader: Arc::clone(&self.loader),
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
    /// Read-through over `cache`, loading with `loader`.
    pub fn new(cache: TieredCache<V>, loader: Arc<L>) -> Self {
        ReadThrough { cache, loader }
    }

    /// The cache underneath.
    pub fn cache(&self) -> &TieredCache<V> {
        &self.cache
    }

    /// The value of `key`.
    pub async fn get(&self, key: &Key) -> Result<Option<V>> {
        self.cache.get_or_load_from(key, &self.loader).await
    }

    /// The values of `keys`, in order; the misses are loaded with one `load_many`.
    pub async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<V>>> {
        self.cache.get_many(keys, &self.loader).await
    }
}
