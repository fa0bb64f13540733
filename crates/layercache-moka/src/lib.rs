//! The in-process tier of layercache: [`MokaBackend<V>`] over [`moka::sync::Cache`].
//!
//! Values are stored as they are — no encoding, no copy beyond the `Clone` a hit returns — so an
//! L1 hit costs what a raw moka `get` costs (docs/adr/0011-lean-request-path.md):
//!
//! - the synchronous moka cache, because a hit never waits: [`MokaBackend::lookup_at`] answers
//!   without a future (docs/adr/0009-moka-sync-cache.md);
//! - keys hashed with [foldhash](https://docs.rs/foldhash) (seeded per process), not SipHash;
//! - **no per-entry timers in moka**: an entry carries its own deadline (its
//!   [`stale_until`](layercache_core::EntryMeta::stale_until), and at most the TTL cap after it was
//!   stored), checked against the backend's clock when it is read. An entry past its deadline reads
//!   as a miss and waits, like any cold entry, to be replaced or evicted by the capacity bound;
//! - the entry sits inline in moka's own entry (no allocation of its own, no pointer to chase on a
//!   hit); a hit is moka's clone of it: a copy of the meta and the value's `clone`. Keep large
//!   values behind an `Arc` (`MokaBackend<Arc<T>>`) and a hit allocates nothing.
//!
//! The cache is bounded by entry count (default 10,000) or by bytes through a weigher. moka keeps no
//! hit or miss counts; the backend keeps its own ([`MokaStats`]).
//!
//! **Eviction policy** ([`L1Policy`], builder's [`eviction_policy`](MokaBackendBuilder::eviction_policy)):
//! moka's TinyLFU by default — a new key is admitted only when it has been seen more often than the
//! entry it would evict, so a one-time scan does not flush a hot working set — or plain LRU, which
//! admits every key and evicts the least recently used (better on traces whose keys are reused soon
//! after their first use, worse under scans; docs/benchmarks.md has both on real traces).
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
use std::time::Duration;

use layercache_core::{
    Backend, Clock, Entry, Error, Key, Namespace, Result, SharedClock, SystemClock, Timestamp,
    async_trait,
};
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

/// The default bound on the number of entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// How the cache chooses what to evict when it is full.
///
/// ```
/// use layercache_moka::{L1Policy, MokaBackend};
///
/// let lru: MokaBackend<String> = MokaBackend::builder().eviction_policy(L1Policy::Lru).build()?;
/// assert_eq!(L1Policy::default(), L1Policy::TinyLfu);
/// # Ok::<(), layercache_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum L1Policy {
    /// moka's default: TinyLFU admission (a frequency sketch decides whether a new key may
    /// replace the victim) over an LRU eviction order. Resists scans; keeps what is used often.
    #[default]
    TinyLfu,
    /// Least recently used: every new key is admitted and the least recently used entry goes.
    /// Wins on traces with strong recency (a key is reused soon after its first use).
    Lru,
}

impl L1Policy {
    fn to_moka(self) -> EvictionPolicy {
        match self {
            L1Policy::TinyLfu => EvictionPolicy::tiny_lfu(),
            L1Policy::Lru => EvictionPolicy::lru(),
        }
    }
}

/// The hasher of the L1 map: foldhash, seeded once per process.
type Hasher = foldhash::fast::RandomState;

/// A point-in-time view of a [`MokaBackend`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MokaStats {
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing (or an expired entry).
    pub misses: u64,
    /// Entries removed to respect the capacity bound; counted only when the builder's
    /// [`count_evictions`](MokaBackendBuilder::count_evictions) is on (0 otherwise).
    pub evictions: u64,
    /// Reads that found an entry past its deadline (its `stale_until`, or the TTL cap); such an
    /// entry reads as a miss until it is replaced or evicted.
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

/// What the map holds for a key, inline in moka's own entry (no allocation of its own, no pointer
/// to chase on a hit): the entry and the moment it stops being served from here.
#[derive(Clone, Debug)]
struct Slot<V> {
    entry: Entry<V>,
    /// `stale_until`, or earlier by the TTL cap.
    until: Timestamp,
}

type Weigher<V> = Arc<dyn Fn(&Key, &V) -> u32 + Send + Sync>;

/// Builds a [`MokaBackend`]. Defaults: at most [`DEFAULT_MAX_ENTRIES`] entries, the system clock,
/// [`L1Policy::TinyLfu`].
pub struct MokaBackendBuilder<V> {
    max_entries: u64,
    policy: L1Policy,
    max_bytes: Option<(u64, Weigher<V>)>,
    clock: SharedClock,
    name: Option<String>,
    ttl_cap: Option<Duration>,
    count_evictions: bool,
}

impl<V> fmt::Debug for MokaBackendBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaBackendBuilder")
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes.as_ref().map(|(b, _)| b))
            .field("policy", &self.policy)
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

    /// How entries are chosen for eviction when the cache is full (default
    /// [`L1Policy::TinyLfu`]).
    #[must_use]
    pub fn eviction_policy(mut self, policy: L1Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The clock that decides expiry (default the [system clock](SystemClock)).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The clock that decides expiry, shared with other parts (see [`clock`](Self::clock)).
    #[must_use]
    pub fn shared_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Serves no entry longer than `cap` after it was stored, whatever its `stale_until` (default
    /// no cap). A two-tier cache caps its L1 so that changes made through other processes show
    /// within `cap`.
    #[must_use]
    pub fn time_to_live_cap(mut self, cap: Duration) -> Self {
        self.ttl_cap = Some(cap);
        self
    }

    /// Counts the entries evicted for capacity in [`MokaStats::evictions`] (default off: moka
    /// then takes a per-key lock on every insert, which costs about a third of an insert).
    #[must_use]
    pub fn count_evictions(mut self, count: bool) -> Self {
        self.count_evictions = count;
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
        if self.ttl_cap.is_some_and(|cap| cap.is_zero()) {
            return Err(Error::config("time_to_live_cap must be greater than zero"));
        }
        let counters = Arc::new(Counters::default());
        let mut builder = Cache::builder().eviction_policy(self.policy.to_moka());
        if self.count_evictions {
            let counters = Arc::clone(&counters);
            builder = builder.eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counters.evictions.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        if let Some(name) = &self.name {
            builder = builder.name(name);
        }
        builder = match self.max_bytes {
            Some((0, _)) => return Err(Error::config("max_bytes must be greater than 0")),
            Some((max_bytes, weigher)) => builder
                .max_capacity(max_bytes)
                .weigher(move |key: &Key, slot: &Slot<V>| weigher(key, &slot.entry.value)),
            None if self.max_entries == 0 => {
                return Err(Error::config("max_entries must be greater than 0"));
            }
            None => builder.max_capacity(self.max_entries),
        };
        Ok(MokaBackend {
            cache: builder.build_with_hasher(Hasher::default()),
            clock: self.clock,
            ttl_cap: self.ttl_cap,
            temporary_cap: Arc::new(AtomicU64::new(u64::MAX)),
            counters,
        })
    }
}

/// The in-process tier: typed values in a [`moka::sync::Cache`], no encoding.
///
/// Cloning is cheap and shares the cache.
pub struct MokaBackend<V> {
    cache: Cache<Key, Slot<V>, Hasher>,
    clock: SharedClock,
    ttl_cap: Option<Duration>,
    /// A cap set while the cache runs (ms; `u64::MAX`: none), shared by clones.
    temporary_cap: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl<V> Clone for MokaBackend<V> {
    fn clone(&self) -> Self {
        MokaBackend {
            cache: self.cache.clone(),
            clock: Arc::clone(&self.clock),
            ttl_cap: self.ttl_cap,
            temporary_cap: Arc::clone(&self.temporary_cap),
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
            policy: L1Policy::TinyLfu,
            max_bytes: None,
            clock: Arc::new(SystemClock),
            name: None,
            ttl_cap: None,
            count_evictions: false,
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

    /// Runs moka's pending maintenance (evictions, counts) now. Tests use it to read exact
    /// [`stats`](Self::stats); normal use needs no call.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// The live entry under `key`, without a future: what [`Backend::get`] answers, for callers
    /// that hold the concrete backend. Counted in [`stats`](Self::stats).
    pub fn get_entry(&self, key: &Key) -> Option<Entry<V>> {
        match self.lookup_at(key, self.clock.now()) {
            Some(entry) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(entry)
            }
            None => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The live entry under `key` at `now` (read from the caller's clock), without a future or a
    /// count in [`stats`](Self::stats): the two-tier cache's L1 hit path, which keeps its own
    /// counters and has read the clock already. The entry is moka's clone of it (the value's
    /// `clone` and a copy of the meta).
    pub fn lookup_at(&self, key: &Key, now: Timestamp) -> Option<Entry<V>> {
        let slot = self.cache.get(key)?;
        if now >= slot.until {
            self.counters.expirations.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(slot.entry)
    }

    /// Removes `key` without a future; `true` when it was present (and live).
    pub fn remove_entry(&self, key: &Key) -> bool {
        self.cache
            .remove(key)
            .is_some_and(|slot| self.clock.now() < slot.until)
    }

    /// Removes every key of `namespace` without a future; returns how many were removed.
    pub fn remove_namespace(&self, namespace: &Namespace) -> u64 {
        self.remove_where(|key, _| namespace.contains(key))
    }

    /// Removes every entry for which `remove` says so (a scan of the whole cache); returns how
    /// many were removed.
    pub fn remove_where(&self, remove: impl Fn(&Key, &Entry<V>) -> bool) -> u64 {
        let keys: Vec<Arc<Key>> = self
            .cache
            .iter()
            .filter(|(key, slot)| remove(key, &slot.entry))
            .map(|(key, _)| key)
            .collect();
        keys.iter()
            .map(|key| u64::from(self.cache.remove(&**key).is_some()))
            .sum()
    }

    /// Removes every entry at once (moka marks them, and drops them lazily).
    pub fn remove_all(&self) {
        self.cache.invalidate_all();
    }

    /// Caps how long entries stored from now on are served from here (`None`: only the
    /// builder's cap), for every clone of this backend. The two-tier cache sets it while its
    /// invalidation transport is disconnected.
    pub fn cap_time_to_live(&self, cap: Option<Duration>) {
        let millis = cap.map_or(u64::MAX, |cap| {
            u64::try_from(cap.as_millis()).unwrap_or(u64::MAX - 1)
        });
        self.temporary_cap.store(millis, Ordering::Relaxed);
    }

    /// Stores `entry` under `key` without a future; see [`Backend::set`]. An entry already past
    /// its `stale_until` removes the key instead.
    pub fn set_entry(&self, key: &Key, entry: Entry<V>) {
        self.set_entry_at(key, entry, self.clock.now());
    }

    /// [`set_entry`](Self::set_entry) at `now`, read from the caller's clock (a caller that has
    /// just read it saves a second read).
    pub fn set_entry_at(&self, key: &Key, entry: Entry<V>, now: Timestamp) {
        if entry.meta.is_expired(now) {
            self.cache.invalidate(key);
            return;
        }
        let mut until = match self.ttl_cap {
            Some(cap) => entry.meta.stale_until.min(now + cap),
            None => entry.meta.stale_until,
        };
        let temporary = self.temporary_cap.load(Ordering::Relaxed);
        if temporary != u64::MAX {
            until = until.min(now + Duration::from_millis(temporary));
        }
        self.cache.insert(key.clone(), Slot { entry, until });
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
        let backend = MokaBackend::builder()
            .max_entries(10)
            .count_evictions(true)
            .build()
            .unwrap();
        let ns = KeySpace::new("t").unwrap().namespace("n").unwrap();
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let backend = MokaBackend {
            clock: Arc::new(clock.clone()),
            ..backend
        };
        for i in 0..100 {
            backend
                .set(&ns.key(i).unwrap(), entry("v", &clock, 60))
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
            backend.set(&ns.key(i).unwrap(), e).await.unwrap();
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
