//! The in-process tier of layercache: [`MokaBackend<V>`] over [`moka::sync::Cache`].
//!
//! Values are stored as they are — no encoding, no copy beyond the `Clone` a hit returns — so an
//! L1 hit costs about a raw moka `get`. The synchronous moka cache is used because a hit never
//! waits: [`MokaBackend::get_entry`] answers without a future, which is what makes the two-tier
//! cache's L1 hit cheap (docs/adr/0009-moka-sync-cache.md). The cache is bounded by entry count (default 10,000) or by
//! bytes through a weigher, and each entry expires at its own
//! [`stale_until`](layercache_core::EntryMeta::stale_until). moka keeps no hit or miss counts; the
//! backend keeps its own ([`MokaStats`]).
//!
//! ```
//! use std::time::Duration;
//! use layercache_core::{Backend, Clock, EntryOptions, KeySpace, SystemClock};
//! use layercache_moka::MokaBackend;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let cache: MokaBackend<String> = MokaBackend::builder().max_entries(1_000).build()?;
//! let key = KeySpace::new("app")?.namespace("greetings")?.key("en")?;
//! let entry = EntryOptions::new(Duration::from_secs(60)).entry("hello".to_owned(), SystemClock.now(), Duration::ZERO)?;
//! cache.set(&key, entry).await?;
//! assert_eq!(cache.get(&key).await?.map(|e| e.value).as_deref(), Some("hello"));
//! assert_eq!(cache.stats().hits, 1);
//! # Ok::<(), layercache_core::Error>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use layercache_core::{
    Backend, Clock, CoarseClock, Entry, Error, Key, Namespace, Result, SharedClock, async_trait,
};
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;

/// The default bound on the number of entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// A point-in-time view of a [`MokaBackend`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MokaStats {
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing (or an expired entry).
    pub misses: u64,
    /// Entries removed to respect the capacity bound.
    pub evictions: u64,
    /// Entries removed because they reached their `stale_until`.
    pub expirations: u64,
    /// Entries currently held (moka's estimate; pending maintenance may lag).
    pub entries: u64,
    /// The sum of the entries' weights (entries, or bytes with a weigher).
    pub weighted_size: u64,
}

impl MokaStats {
    /// Hits over reads, or 0 when nothing was read.
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

/// Each entry lives until its own `stale_until`, read from the backend's clock, and at most the
/// TTL cap.
struct EntryExpiry {
    clock: SharedClock,
    cap: Option<Duration>,
}

impl EntryExpiry {
    fn remaining<V>(&self, entry: &Entry<V>) -> Duration {
        let left = entry.meta.time_to_live(self.clock.now());
        self.cap.map_or(left, |cap| left.min(cap))
    }
}

impl<V> Expiry<Key, Arc<Entry<V>>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Arc<Entry<V>>,
        _at: Instant,
    ) -> Option<Duration> {
        Some(self.remaining(value))
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Arc<Entry<V>>,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.remaining(value))
    }
}

type Weigher<V> = Arc<dyn Fn(&Key, &V) -> u32 + Send + Sync>;

/// Builds a [`MokaBackend`]. Defaults: at most [`DEFAULT_MAX_ENTRIES`] entries, the system clock.
pub struct MokaBackendBuilder<V> {
    max_entries: u64,
    max_bytes: Option<(u64, Weigher<V>)>,
    clock: SharedClock,
    exact_clock: bool,
    name: Option<String>,
    ttl_cap: Option<Duration>,
}

impl<V> fmt::Debug for MokaBackendBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaBackendBuilder")
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes.as_ref().map(|(b, _)| b))
            .field("clock", &self.clock)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> MokaBackendBuilder<V> {
    /// Bounds the cache to `max_entries` entries (default [`DEFAULT_MAX_ENTRIES`]).
    #[must_use]
    pub fn max_entries(mut self, max_entries: u64) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// Bounds the cache to `max_bytes`, each entry weighing what `weigher` says (its size in bytes,
    /// as well as the caller can tell). Replaces the entry-count bound.
    #[must_use]
    pub fn max_bytes(
        mut self,
        max_bytes: u64,
        weigher: impl Fn(&Key, &V) -> u32 + Send + Sync + 'static,
    ) -> Self {
        self.max_bytes = Some((max_bytes, Arc::new(weigher)));
        self
    }

    /// The clock that decides expiry (default the system clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self.exact_clock = true;
        self
    }

    /// Keeps no entry longer than `cap`, whatever its `stale_until` (default no cap). A two-tier
    /// cache caps its L1 so that changes made through other processes show within `cap`. The cap
    /// is measured by moka's own monotonic clock.
    #[must_use]
    pub fn time_to_live_cap(mut self, cap: Duration) -> Self {
        self.ttl_cap = Some(cap);
        self
    }

    /// A name for moka's internal diagnostics.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Builds the backend. A zero bound is refused with a config error.
    pub fn build(self) -> Result<MokaBackend<V>> {
        let counters = Arc::new(Counters::default());
        let listener_counters = Arc::clone(&counters);
        let mut builder = Cache::builder()
            .expire_after(EntryExpiry {
                clock: Arc::clone(&self.clock),
                cap: self.ttl_cap,
            })
            .eviction_listener(move |_key, _value, cause| match cause {
                RemovalCause::Size => {
                    listener_counters.evictions.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Expired => {
                    listener_counters
                        .expirations
                        .fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            });
        if self.ttl_cap.is_some_and(|cap| cap.is_zero()) {
            return Err(Error::config("time_to_live_cap must be greater than zero"));
        }
        if let Some(name) = &self.name {
            builder = builder.name(name);
        }
        builder = match self.max_bytes {
            Some((0, _)) => return Err(Error::config("max_bytes must be greater than 0")),
            Some((max_bytes, weigher)) => builder
                .max_capacity(max_bytes)
                .weigher(move |key: &Key, entry: &Arc<Entry<V>>| weigher(key, &entry.value)),
            None if self.max_entries == 0 => {
                return Err(Error::config("max_entries must be greater than 0"));
            }
            None => builder.max_capacity(self.max_entries),
        };
        Ok(MokaBackend {
            cache: builder.build(),
            clock: self.clock,
            exact_clock: self.exact_clock,
            counters,
        })
    }
}

/// The in-process tier: typed values in a [`moka::sync::Cache`], no encoding.
///
/// Cloning is cheap and shares the cache.
pub struct MokaBackend<V> {
    // Entries sit behind an `Arc`: moka moves smaller values, and a hit clones the entry once.
    cache: Cache<Key, Arc<Entry<V>>>,
    clock: SharedClock,
    /// Whether a clock was injected; with the system clock moka's own expiry is exact enough and
    /// a hit skips reading the clock.
    exact_clock: bool,
    counters: Arc<Counters>,
}

impl<V> Clone for MokaBackend<V> {
    fn clone(&self) -> Self {
        MokaBackend {
            cache: self.cache.clone(),
            clock: Arc::clone(&self.clock),
            exact_clock: self.exact_clock,
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<V> fmt::Debug for MokaBackend<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaBackend")
            .field("entries", &self.cache.entry_count())
            .field("clock", &self.clock)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> MokaBackend<V> {
    /// A builder with the defaults.
    pub fn builder() -> MokaBackendBuilder<V> {
        MokaBackendBuilder {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: None,
            clock: Arc::new(CoarseClock::new()),
            exact_clock: false,
            name: None,
            ttl_cap: None,
        }
    }

    /// A backend holding at most `max_entries` entries.
    pub fn with_max_entries(max_entries: u64) -> Result<Self> {
        Self::builder().max_entries(max_entries).build()
    }

    /// The counters so far.
    pub fn stats(&self) -> MokaStats {
        MokaStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expirations: self.counters.expirations.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
            weighted_size: self.cache.weighted_size(),
        }
    }

    /// Runs moka's pending maintenance (evictions, expirations, counts) now. Tests use it to read
    /// exact [`stats`](Self::stats); normal use needs no call.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// The live entry under `key`, without a future: what [`Backend::get`] answers, for callers
    /// that hold the concrete backend (the two-tier cache's L1 hit path).
    pub fn get_entry(&self, key: &Key) -> Option<Entry<V>> {
        match self.cache.get(key) {
            // moka expires by its own monotonic clock; checking an injected clock too keeps it exact.
            Some(entry) if !(self.exact_clock && entry.meta.is_expired(self.clock.now())) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(Entry::clone(&entry))
            }
            _ => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The live entry under `key`, without a future and without counting it in
    /// [`stats`](Self::stats): for callers that keep their own hit counters (the two-tier cache's
    /// L1 hit path, where every atomic shows).
    pub fn lookup(&self, key: &Key) -> Option<Entry<V>> {
        let entry = self.cache.get(key)?;
        // moka expires by its own monotonic clock; checking an injected clock too keeps it exact.
        if self.exact_clock && entry.meta.is_expired(self.clock.now()) {
            return None;
        }
        Some(Entry::clone(&entry))
    }

    /// Removes `key` without a future; `true` when it was present.
    pub fn remove_entry(&self, key: &Key) -> bool {
        self.cache.remove(key).is_some()
    }

    /// Removes every key of `namespace` without a future; returns how many were removed.
    pub fn remove_namespace(&self, namespace: &Namespace) -> u64 {
        let keys: Vec<Arc<Key>> = self
            .cache
            .iter()
            .filter(|(key, _)| namespace.contains(key))
            .map(|(key, _)| key)
            .collect();
        keys.iter()
            .map(|key| u64::from(self.cache.remove(&**key).is_some()))
            .sum()
    }

    /// Stores `entry` under `key` without a future; see [`Backend::set`].
    pub fn set_entry(&self, key: &Key, entry: Entry<V>) {
        if entry.meta.is_expired(self.clock.now()) {
            self.cache.invalidate(key);
        } else {
            self.cache.insert(key.clone(), Arc::new(entry));
        }
    }
}

#[async_trait]
impl<V: Clone + Send + Sync + 'static> Backend<V> for MokaBackend<V> {
    async fn get(&self, key: &Key) -> Result<Option<Entry<V>>> {
        Ok(self.get_entry(key))
    }

    async fn set(&self, key: &Key, entry: Entry<V>) -> Result<()> {
        self.set_entry(key, entry);
        Ok(())
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry<V>>>> {
        Ok(keys.iter().map(|key| self.get_entry(key)).collect())
    }

    async fn set_many(&self, items: Vec<(Key, Entry<V>)>) -> Result<()> {
        for (key, entry) in items {
            self.set_entry(&key, entry);
        }
        Ok(())
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        Ok(self.remove_entry(key))
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        Ok(self.remove_namespace(namespace))
    }

    fn name(&self) -> &'static str {
        "moka"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use layercache_core::{EntryOptions, KeySpace, ManualClock, SystemClock, Timestamp};

    fn entry(value: &str, clock: &ManualClock, ttl_secs: u64) -> Entry<String> {
        EntryOptions::new(Duration::from_secs(ttl_secs))
            .entry(value.to_owned(), clock.now(), Duration::ZERO)
            .unwrap()
    }

    #[tokio::test]
    async fn evicts_beyond_entry_bound_and_counts_it() {
        let backend = MokaBackend::builder().max_entries(10).build().unwrap();
        let ns = KeySpace::new("t").unwrap().namespace("n").unwrap();
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let backend = MokaBackend {
            clock: Arc::new(clock.clone()),
            ..backend
        };
        for i in 0..100 {
            backend
                .set(&ns.key(&i.to_string()).unwrap(), entry("v", &clock, 60))
                .await
                .unwrap();
        }
        backend.run_pending_tasks().await;
        let stats = backend.stats();
        assert!(stats.entries <= 10, "{stats:?}");
        assert!(stats.evictions >= 90, "{stats:?}");
    }

    #[tokio::test]
    async fn weigher_bounds_bytes() {
        let backend: MokaBackend<String> = MokaBackend::builder()
            .max_bytes(1_000, |_k, v: &String| v.len() as u32)
            .build()
            .unwrap();
        let ns = KeySpace::new("t").unwrap().namespace("n").unwrap();
        let now = SystemClock.now();
        for i in 0..50 {
            let e = EntryOptions::new(Duration::from_secs(60))
                .entry("x".repeat(100), now, Duration::ZERO)
                .unwrap();
            backend
                .set(&ns.key(&i.to_string()).unwrap(), e)
                .await
                .unwrap();
        }
        backend.run_pending_tasks().await;
        assert!(
            backend.stats().weighted_size <= 1_000,
            "{:?}",
            backend.stats()
        );
    }

    #[test]
    fn zero_bounds_are_config_errors() {
        assert!(MokaBackend::<u8>::with_max_entries(0).is_err());
        let err = MokaBackend::<u8>::builder()
            .max_bytes(0, |_, _| 1)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), layercache_core::ErrorKind::Config);
    }
}
