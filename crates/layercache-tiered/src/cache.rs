//! `TieredCache`: the main entry point.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use layercache_core::{
    Backend, Clock, EntryOptions, Error, Key, Loader, LockStore, Result, SharedClock, SystemClock,
};
use layercache_moka::MokaBackend;
use layercache_redis::RedisBackend;
use layercache_stampede::{
    DistributedLock, EarlyExpiry, GuardedCacheBuilder, LockOptions, WarmReport,
};
use layercache_strategy::{AbsentAsValue, CacheAside, DEFAULT_NEGATIVE_TTL};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{DEFAULT_PENDING_WRITES, DEFAULT_RETRY_INTERVAL, TieredBackend};
use crate::circuit::{CircuitBreaker, CircuitState, DEFAULT_COOL_DOWN, DEFAULT_FAILURE_THRESHOLD};
use crate::stats::TieredStats;

/// The default bound on L1 entries.
pub const DEFAULT_L1_MAX_ENTRIES: u64 = 10_000;
/// The default cap on how long L1 keeps an entry (60 s): changes made through other processes
/// show in this process within it.
pub const DEFAULT_L1_TTL_CAP: Duration = Duration::from_secs(60);
/// The default timeout of each L2 command (100 ms).
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_millis(100);

type Weigher<V> = Arc<dyn Fn(&Key, &V) -> u32 + Send + Sync>;
type Tier<V> = Arc<dyn Backend<Option<V>>>;
type GuardSetting<V> =
    Box<dyn FnOnce(GuardedCacheBuilder<Option<V>>) -> GuardedCacheBuilder<Option<V>> + Send>;

enum L2Source<V> {
    None,
    Url(String),
    Redis(RedisBackend),
    Custom(Arc<dyn Backend<Option<V>>>),
}

/// Builds a [`TieredCache`]; see [`TieredCache::builder`]. Every bound has a default (the
/// `DEFAULT_*` constants of this crate and of the crates it composes).
pub struct TieredCacheBuilder<V> {
    l1: bool,
    l1_max_entries: u64,
    l1_max_bytes: Option<(u64, Weigher<V>)>,
    l1_ttl_cap: Duration,
    l2: L2Source<V>,
    l2_timeout: Duration,
    lock: Option<LockOptions>,
    lock_store: Option<Arc<dyn LockStore>>,
    options: EntryOptions,
    negative_ttl: Option<Duration>,
    /// Settings handed on to the guards' builder as they are given.
    guards: Vec<GuardSetting<V>>,
    early: Option<EarlyExpiry>,
    breaker_threshold: u32,
    breaker_cool_down: Duration,
    pending_writes: usize,
    clock: SharedClock,
    custom_clock: bool,
    name: String,
}

impl<V> fmt::Debug for TieredCacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("name", &self.name)
            .field("l1", &self.l1)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<V> TieredCacheBuilder<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A name for logs and metric labels (default `"default"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Bounds L1 to `max` entries (default [`DEFAULT_L1_MAX_ENTRIES`]).
    #[must_use]
    pub fn l1_max_entries(mut self, max: u64) -> Self {
        self.l1_max_entries = max;
        self
    }

    /// Bounds L1 to `max_bytes`, weighing each value with `weigher`.
    #[must_use]
    pub fn l1_max_bytes(
        mut self,
        max_bytes: u64,
        weigher: impl Fn(&Key, &V) -> u32 + Send + Sync + 'static,
    ) -> Self {
        self.l1_max_bytes = Some((max_bytes, Arc::new(weigher)));
        self
    }

    /// Caps how long L1 keeps an entry (default [`DEFAULT_L1_TTL_CAP`]).
    #[must_use]
    pub fn l1_ttl_cap(mut self, cap: Duration) -> Self {
        self.l1_ttl_cap = cap;
        self
    }

    /// No L1: every read goes to L2 (which must then be set).
    #[must_use]
    pub fn without_l1(mut self) -> Self {
        self.l1 = false;
        self
    }

    /// Uses the Redis at `url` as L2 (connected lazily: the cache starts while Redis is down).
    #[must_use]
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.l2 = L2Source::Url(url.into());
        self
    }

    /// Uses `redis` as L2 (its own timeouts apply).
    #[must_use]
    pub fn redis(mut self, redis: RedisBackend) -> Self {
        self.l2 = L2Source::Redis(redis);
        self
    }

    /// Uses any backend as L2 (give a lock store too for the distributed lock).
    #[must_use]
    pub fn l2_backend(mut self, backend: Arc<dyn Backend<Option<V>>>) -> Self {
        self.l2 = L2Source::Custom(backend);
        self
    }

    /// The timeout of each L2 command when L2 comes from [`redis_url`](Self::redis_url) (default
    /// [`DEFAULT_L2_TIMEOUT`]).
    #[must_use]
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2_timeout = timeout;
        self
    }

    /// Coalesce loads across processes with a distributed lock in Redis (default off).
    #[must_use]
    pub fn distributed_lock(mut self, options: LockOptions) -> Self {
        self.lock = Some(options);
        self
    }

    /// The lock store for [`distributed_lock`](Self::distributed_lock) when L2 is not Redis.
    #[must_use]
    pub fn lock_store(mut self, store: Arc<dyn LockStore>) -> Self {
        self.lock_store = Some(store);
        self
    }

    /// The TTL policy of cached values (default [`EntryOptions::default`]: 5 minutes).
    #[must_use]
    pub fn options(mut self, options: EntryOptions) -> Self {
        self.options = options;
        self
    }

    /// The TTL of cached absences (default [`DEFAULT_NEGATIVE_TTL`]).
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Do not cache absences.
    #[must_use]
    pub fn no_negative_caching(mut self) -> Self {
        self.negative_ttl = None;
        self
    }

    /// Fail-safe: serve a stale value when the loader fails, retrying it at most every `throttle`
    /// (default off). Give the options a stale TTL so stale values exist.
    #[must_use]
    pub fn fail_safe(mut self, throttle: Duration) -> Self {
        self.guards
            .push(Box::new(move |guarded| guarded.fail_safe(throttle)));
        self
    }

    /// Soft timeout on loads: past it, a stale value is served and the load finishes in the
    /// background (default off).
    #[must_use]
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.guards
            .push(Box::new(move |guarded| guarded.soft_timeout(timeout)));
        self
    }

    /// Hard timeout on loads: past it, the load fails with a `Timeout` error (default off).
    #[must_use]
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.guards
            .push(Box::new(move |guarded| guarded.hard_timeout(timeout)));
        self
    }

    /// Refresh in the background once `fraction` of the TTL has passed (default off).
    #[must_use]
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.guards
            .push(Box::new(move |guarded| guarded.eager_refresh(fraction)));
        self
    }

    /// XFetch probabilistic early refresh (default off).
    #[must_use]
    pub fn early_expiry(mut self, early: EarlyExpiry) -> Self {
        self.early = Some(early);
        self
    }

    /// The L2 circuit breaker: open after `failures` consecutive failures, probe after `cool_down`
    /// (defaults [`DEFAULT_FAILURE_THRESHOLD`], [`DEFAULT_COOL_DOWN`]).
    #[must_use]
    pub fn circuit_breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cool_down = cool_down;
        self
    }

    /// The bound on L2 writes queued for sending or retry (default [`DEFAULT_PENDING_WRITES`]).
    #[must_use]
    pub fn pending_l2_writes(mut self, max: usize) -> Self {
        self.pending_writes = max;
        self
    }

    /// The clock (default the system clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self.custom_clock = true;
        self
    }

    /// Builds the cache. Invalid options are a config error; nothing connects yet. With
    /// [`redis_url`](Self::redis_url) it must be called within a tokio runtime (the connection
    /// task is spawned on it); outside one it is a config error.
    pub fn build(self) -> Result<TieredCache<V>> {
        let l1: Option<MokaBackend<Option<V>>> = if self.l1 {
            let mut builder = MokaBackend::builder()
                .max_entries(self.l1_max_entries)
                .time_to_live_cap(self.l1_ttl_cap)
                .name(self.name.clone());
            if self.custom_clock {
                builder = builder.clock(Arc::clone(&self.clock));
            }
            if let Some((max_bytes, weigher)) = self.l1_max_bytes {
                builder =
                    builder.max_bytes(max_bytes, move |key: &Key, value: &Option<V>| match value {
                        Some(value) => weigher(key, value),
                        None => 1,
                    });
            }
            Some(builder.build()?)
        } else {
            None
        };
        let (redis, l2): (Option<RedisBackend>, Option<Tier<V>>) = match self.l2 {
            L2Source::Url(url) => {
                let redis = RedisBackend::builder(url)
                    .command_timeout(self.l2_timeout)
                    .clock(Arc::clone(&self.clock))
                    .connect_lazy()?;
                (Some(redis.clone()), Some(Arc::new(redis)))
            }
            L2Source::Redis(redis) => (Some(redis.clone()), Some(Arc::new(redis))),
            L2Source::Custom(backend) => (None, Some(backend)),
            L2Source::None => (None, None),
        };
        let tiers = TieredBackend::new(
            l1.clone()
                .map(|l1| Arc::new(l1) as Arc<dyn Backend<Option<V>>>),
            l2,
            CircuitBreaker::new(self.breaker_threshold, self.breaker_cool_down),
            self.pending_writes,
            DEFAULT_RETRY_INTERVAL,
        )?;
        let mut aside = CacheAside::builder(Arc::new(tiers.clone()) as Arc<dyn Backend<Option<V>>>)
            .options(self.options)
            .clock(Arc::clone(&self.clock));
        aside = match self.negative_ttl {
            Some(ttl) => aside.negative_ttl(ttl),
            None => aside.no_negative_caching(),
        };
        if let Some(lock_options) = self.lock {
            let store: Arc<dyn LockStore> = match (self.lock_store, &redis) {
                (Some(store), _) => store,
                (None, Some(redis)) => Arc::new(redis.lock_store()),
                (None, None) => {
                    return Err(Error::config(
                        "a distributed lock needs Redis as L2 or a lock store",
                    ));
                }
            };
            aside = aside.lock(DistributedLock::from_arc(store, lock_options)?);
        }
        if let Some(early) = self.early {
            aside = aside.early_expiry(early);
        }
        let guards = self.guards;
        let aside = aside
            .configure(move |guarded| {
                guards
                    .into_iter()
                    .fold(guarded, |guarded, setting| setting(guarded))
            })
            .build()?;
        Ok(TieredCache {
            aside,
            tiers,
            l1,
            redis,
            clock: self.clock,
            name: self.name.into(),
        })
    }
}

/// A two-tier cache: L1 (moka, in process) over L2 (Redis, shared), with stampede guards,
/// negative caching, fail-safe, timeouts, background refresh, bulk reads and warm-up.
///
/// Build it with [`TieredCache::builder`]; L1 alone, L2 alone, or both. Cloning is cheap and shares
/// the cache.
pub struct TieredCache<V> {
    aside: CacheAside<V>,
    tiers: TieredBackend<Option<V>>,
    l1: Option<MokaBackend<Option<V>>>,
    redis: Option<RedisBackend>,
    clock: SharedClock,
    name: Arc<str>,
}

impl<V> Clone for TieredCache<V> {
    fn clone(&self) -> Self {
        TieredCache {
            aside: self.aside.clone(),
            tiers: self.tiers.clone(),
            l1: self.l1.clone(),
            redis: self.redis.clone(),
            clock: Arc::clone(&self.clock),
            name: Arc::clone(&self.name),
        }
    }
}

impl<V> fmt::Debug for TieredCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("name", &self.name)
            .field("tiers", &self.tiers)
            .finish()
    }
}

impl<V> TieredCache<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A builder: L1 on (10,000 entries, 60 s cap), no L2, 5-minute TTL, negative caching 10 s,
    /// single-flight on; everything else off.
    pub fn builder() -> TieredCacheBuilder<V> {
        TieredCacheBuilder {
            l1: true,
            l1_max_entries: DEFAULT_L1_MAX_ENTRIES,
            l1_max_bytes: None,
            l1_ttl_cap: DEFAULT_L1_TTL_CAP,
            l2: L2Source::None,
            l2_timeout: DEFAULT_L2_TIMEOUT,
            lock: None,
            lock_store: None,
            options: EntryOptions::default(),
            negative_ttl: Some(DEFAULT_NEGATIVE_TTL),
            guards: Vec::new(),
            early: None,
            breaker_threshold: DEFAULT_FAILURE_THRESHOLD,
            breaker_cool_down: DEFAULT_COOL_DOWN,
            pending_writes: DEFAULT_PENDING_WRITES,
            clock: Arc::new(SystemClock),
            custom_clock: false,
            name: "default".to_owned(),
        }
    }

    /// The value of `key`: L1, then L2, then `loader` (coalesced, stored in both tiers).
    pub async fn get_or_load<L>(&self, key: &Key, loader: &Arc<L>) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        // The L1 hit path, without a future or a boxed call: the concrete moka L1, then the
        // guards' hit logic (counters, XFetch and eager refresh). Anything else takes the full path.
        if let Some(l1) = &self.l1
            && let Some(entry) = l1.get_entry(key)
        {
            let mut make_loader = Some(|| Arc::new(AbsentAsValue(Arc::clone(loader))));
            if let Ok(value) = self
                .aside
                .guarded()
                .serve_fresh(key, entry, None, &mut make_loader)
            {
                self.tiers
                    .counters()
                    .l1_hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(value);
            }
        }
        // Boxed so that the hit path's future stays small.
        Box::pin(self.aside.get_or_load(key, loader)).await
    }

    /// [`get_or_load`](Self::get_or_load) with entry options for this call.
    pub async fn get_or_load_with<L>(
        &self,
        key: &Key,
        loader: &Arc<L>,
        options: &EntryOptions,
    ) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        self.aside.get_or_load_with(key, loader, options).await
    }

    /// The cached value of `key` if fresh, without loading.
    pub async fn get(&self, key: &Key) -> Result<Option<V>> {
        self.aside.get(key).await
    }

    /// The values of `keys`, in order: L1, then one L2 MGET for the L1 misses, then one
    /// `load_many` for the rest, each key coalesced with concurrent loads of it.
    pub async fn get_many<L>(&self, keys: &[Key], loader: &Arc<L>) -> Result<Vec<Option<V>>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let batch = Arc::new(AbsentAsValue(Arc::clone(loader)));
        let values = self.aside.guarded().get_many_or_load(keys, &batch).await?;
        Ok(values.into_iter().map(Option::flatten).collect())
    }

    /// Stores `value` in both tiers before returning (L2 failures are queued for retry and
    /// returned). Loads of `key` that started earlier will not overwrite it.
    pub async fn set(&self, key: &Key, value: V) -> Result<()> {
        let entry = self
            .aside
            .options()
            .entry(Some(value), self.clock.now(), Duration::ZERO)?;
        let guard = self.aside.guarded().write_lock(key).await;
        guard.invalidate_loads();
        self.tiers.set_now(key, entry).await
    }

    /// Removes `key` from both tiers; loads that started earlier will not put it back.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        self.aside.delete(key).await
    }

    /// Loads `keys` from the source into both tiers, `concurrency` at a time (0 for the default),
    /// and reports per key.
    pub async fn warm<L>(&self, keys: Vec<Key>, loader: &Arc<L>, concurrency: usize) -> WarmReport
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let loader = Arc::new(AbsentAsValue(Arc::clone(loader)));
        self.aside.guarded().warm(keys, &loader, concurrency).await
    }

    /// Sends queued L2 writes now; returns the first L2 error.
    pub async fn flush(&self) -> Result<()> {
        self.tiers.flush_pending().await
    }

    /// The L2 circuit's state.
    pub fn circuit(&self) -> CircuitState {
        self.tiers.circuit()
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tiers as one backend.
    pub fn backend(&self) -> &TieredBackend<Option<V>> {
        &self.tiers
    }

    /// The counters so far.
    pub fn stats(&self) -> TieredStats {
        use std::sync::atomic::Ordering::Relaxed;
        let tiers = self.tiers.counters();
        let guarded = self.aside.stats();
        let l1 = self.l1.as_ref().map(MokaBackend::stats);
        TieredStats {
            l1_hits: tiers.l1_hits.load(Relaxed),
            l1_misses: tiers.l1_misses.load(Relaxed),
            l2_hits: tiers.l2_hits.load(Relaxed),
            l2_misses: tiers.l2_misses.load(Relaxed),
            l2_errors: tiers.l2_errors.load(Relaxed),
            l2_skipped: tiers.l2_skipped.load(Relaxed),
            l2_writes: tiers.l2_writes.load(Relaxed),
            l2_write_failures: tiers.l2_write_failures.load(Relaxed),
            l2_pending_writes: self.tiers.pending_writes() as u64,
            l2_pending_dropped: tiers.pending_dropped.load(Relaxed),
            l2_decode_failures: self.redis.as_ref().map_or(0, |r| r.stats().decode_failures),
            circuit: self.tiers.circuit(),
            circuit_opened: self.tiers.circuit_opened(),
            loads: guarded.loads,
            load_errors: guarded.load_errors,
            stale_served: guarded.stale_served,
            coalesced: guarded.flights.coalesced,
            refreshes: guarded.early_refreshes + guarded.eager_refreshes,
            evictions: l1.map_or(0, |s| s.evictions),
            l1_entries: l1.map_or(0, |s| s.entries),
        }
    }

    /// Publishes [`stats`](Self::stats) through the `metrics` facade, labelled with the cache's
    /// name: counters `layercache_<field>_total` and gauges for the queue, the circuit (0 closed,
    /// 1 half-open, 2 open) and L1's size. Call it periodically (e.g. every few seconds).
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        let s = self.stats();
        let name = self.name.to_string();
        let counters = [
            ("layercache_l1_hits_total", s.l1_hits),
            ("layercache_l1_misses_total", s.l1_misses),
            ("layercache_l2_hits_total", s.l2_hits),
            ("layercache_l2_misses_total", s.l2_misses),
            ("layercache_l2_errors_total", s.l2_errors),
            ("layercache_l2_skipped_total", s.l2_skipped),
            ("layercache_l2_decode_failures_total", s.l2_decode_failures),
            ("layercache_loads_total", s.loads),
            ("layercache_load_errors_total", s.load_errors),
            ("layercache_stale_served_total", s.stale_served),
            ("layercache_coalesced_total", s.coalesced),
            ("layercache_evictions_total", s.evictions),
        ];
        for (metric, value) in counters {
            metrics::counter!(metric, "cache" => name.clone()).absolute(value);
        }
        let circuit = match s.circuit {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        };
        metrics::gauge!("layercache_l2_circuit_state", "cache" => name.clone()).set(circuit);
        metrics::gauge!("layercache_l2_pending_writes", "cache" => name.clone())
            .set(s.l2_pending_writes as f64);
        metrics::gauge!("layercache_l1_entries", "cache" => name).set(s.l1_entries as f64);
    }
}
