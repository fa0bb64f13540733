//! Write-through: writes go to the source of truth first, then to the cache.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{Key, Loader, Result, Writer};

use crate::cache_aside::CacheAside;

/// Counters of a [`WriteThrough`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteThroughStats {
    /// Writes (puts and deletes) that reached the source.
    pub writes: u64,
    /// Writes the source refused (the cache was left untouched).
    pub source_errors: u64,
    /// Cache updates that failed after a successful source write (the key was then removed from
    /// the cache, or, if that failed too, left to expire).
    pub cache_write_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    source_errors: AtomicU64,
    cache_write_failures: AtomicU64,
}

/// Write-through over a [`CacheAside`]: [`put`](Self::put) writes the source, then the cache;
/// [`get`](Self::get) reads through the cache.
///
/// - A source write that fails leaves the cache untouched and returns the error.
/// - A cache write that fails after the source write succeeded removes the key from the cache, so
///   no stale value stays; it is reported in [`WriteThroughStats::cache_write_failures`] and the
///   log, and `put` still returns `Ok` (the source of truth has the value).
/// - No window: a put holds its key's write lock from the source write to the cache write and
///   invalidates the loads that began before it (see `docs/adr/0005-write-generations.md`), so
///   once `put` returns no concurrent reader of this process can store the old value again, and
///   puts of one key reach the source and the cache in the same order.
pub struct WriteThrough<V, L: ?Sized, W: ?Sized> {
    cache: CacheAside<V>,
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
    pub fn new(cache: CacheAside<V>, loader: Arc<L>, writer: Arc<W>) -> Self {
        WriteThrough {
            cache,
            loader,
            writer,
            counters: Arc::default(),
        }
    }

    /// The cache underneath.
    pub fn cache(&self) -> &CacheAside<V> {
        &self.cache
    }

    /// The counters so far.
    pub fn stats(&self) -> WriteThroughStats {
        WriteThroughStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            source_errors: self.counters.source_errors.load(Ordering::Relaxed),
            cache_write_failures: self.counters.cache_write_failures.load(Ordering::Relaxed),
        }
    }

    /// The value of `key`, through the cache.
    pub async fn get(&self, key: &Key) -> Result<Option<V>> {
        self.cache.get_or_load(key, &self.loader).await
    }

    /// Writes `value` to the source, then to the cache.
    pub async fn put(&self, key: &Key, value: V) -> Result<()> {
        let entry = self.cache.options().entry(
            Some(value.clone()),
            self.cache.clock().now(),
            Duration::ZERO,
        )?;
        let guard = self.cache.guarded().write_lock(key).await;
        if let Err(error) = self.writer.write(key, &value).await {
            self.counters.source_errors.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        guard.invalidate_loads();
        if let Err(error) = self.cache.backend().set(key, entry).await {
            self.cache_failed(key, error).await;
        }
        Ok(())
    }

    /// Removes `key` from the source, then from the cache.
    pub async fn delete(&self, key: &Key) -> Result<()> {
        let guard = self.cache.guarded().write_lock(key).await;
        if let Err(error) = self.writer.remove(key).await {
            self.counters.source_errors.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        guard.invalidate_loads();
        if let Err(error) = self.cache.backend().delete(key).await {
            self.cache_failed(key, error).await;
        }
        Ok(())
    }

    async fn cache_failed(&self, key: &Key, error: layercache_core::Error) {
        self.counters
            .cache_write_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%key, %error, "cache update after a source write failed; removing the key");
        if let Err(error) = self.cache.backend().delete(key).await {
            tracing::warn!(%key, %error, "could not remove the key either; it expires with its TTL");
        }
    }
}
