//! Write-through: writes go to the source of truth first, then to the cache.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use layercache_core::{Key, Loader, Result, Writer};
use layercache_tiered::TieredCache;

/// Counters of a [`WriteThrough`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteThroughStats {
    /// Writes (puts and deletes) that reached the source.
    pub writes: u64,
    /// Writes the source refused (the cache was left untouched).
    pub source_errors: u64,
    /// Cache updates that failed after a successful source write (reported to the caller).
    pub cache_write_failures: u64,
    /// Cache updates that removed the key instead of storing it, because another write of the key
    /// raced this one at the source.
    pub raced: u64,
}

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    source_errors: AtomicU64,
    cache_write_failures: AtomicU64,
    raced: AtomicU64,
}

/// Write-through over a [`TieredCache`]: [`put`](Self::put) writes the source, then the cache;
/// [`get`](Self::get) reads through the cache. A thin adapter: its cache writes are the cache's
/// own, checked against the cache's per-key version table.
///
/// - **No lock across the source write.** A put claims its key in the cache's version table
///   ([`TieredCache::begin_write`]) before writing the source, then writes the cache with that
///   claim ([`TieredCache::set_after`]). If another write of the key began meanwhile, the two
///   raced at the source in an order the cache cannot know, so the put removes the key instead of
///   storing (the next read loads what the source kept). Loads of unrelated keys never wait.
/// - **Invalidation wins.** Loads that read the source before the put changed it do not store
///   their value once the put returns.
/// - A source write that fails leaves the cache untouched and returns the error. A cache write
///   that fails after the source write succeeded is returned too (the source has the value; the
///   cache's own retry removes the stale L2 copy), and counted.
pub struct WriteThrough<V, L: ?Sized, W: ?Sized> {
    cache: TieredCache<V>,
    loader: Arc<L>,
    writer: Arc<W>,
    counters: Arc<Counters>,
}

impl<V, L: ?Sized, W: ?Sized> Clone for WriteThrough<V, L, W> {
    fn clone(&self) -> Self {
        WriteThrough {
            cache: self.cache.clone(),
            loader: Arc::clone(&self.loader),
            writer: Arc::clone(&self.writer),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<V, L: ?Sized, W: ?Sized> fmt::Debug for WriteThrough<V, L, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteThrough")
            .field("cache", &self.cache)
            .finish()
    }
}

impl<V, L, W> WriteThrough<V, L, W>
where
    V: Clone + Send + Sync + 'static,
    L: Loader<V> + ?Sized + 'static,
    W: Writer<V> + ?Sized + 'static,
{
    /// Write-through over `cache`, reading with `loader` and writing with `writer`.
    pub fn new(cache: TieredCache<V>, loader: Arc<L>, writer: Arc<W>) -> Self {
        WriteThrough {
            cache,
            loader,
            writer,
            counters: Arc::default(),
        }
    }

    /// The cache underneath.
    pub fn cache(&self) -> &TieredCache<V> {
        &self.cache
    }

    /// The counters so far.
    pub fn stats(&self) -> WriteThroughStats {
        let c = &self.counters;
        WriteThroughStats {
            writes: c.writes.load(Ordering::Relaxed),
            source_errors: c.source_errors.load(Ordering::Relaxed),
            cache_write_failures: c.cache_write_failures.load(Ordering::Relaxed),
            raced: c.raced.load(Ordering::Relaxed),
        }
    }

    /// The value of `key`, through the cache.
    pub async fn get(&self, key: &Key) -> Result<Option<V>> {
        self.cache.get_or_load_from(key, &self.loader).await
    }

    /// Writes `value` to the source, then to the cache.
    pub async fn put(&self, key: &Key, value: V) -> Result<()> {
        let intent = self.cache.begin_write(key);
        if let Err(error) = self.writer.write(key, &value).await {
            self.counters.source_errors.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.update_cache(self.cache.set_after(intent, Some(value)).await)
    }

    /// Removes `key` from the source, then from the cache (a cached absence when negative caching
    /// is on).
    pub async fn delete(&self, key: &Key) -> Result<()> {
        let intent = self.cache.begin_write(key);
        if let Err(error) = self.writer.remove(key).await {
            self.counters.source_errors.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.update_cache(self.cache.set_after(intent, None).await)
    }

    fn update_cache(&self, result: Result<bool>) -> Result<()> {
        match result {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.counters.raced.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.counters
                    .cache_write_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(error.context("the source has the write, the cache update failed"))
            }
        }
    }
}
