//! The one builder of a [`TieredCache`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use layercache_core::{
    Backend, Clock, EntryOptions, Error, InvalidationTransport, Key, LockStore, Result,
    SharedClock, SystemClock,
};
use layercache_moka::{L1Policy, MokaBackend};
use layercache_stampede::{DistributedLock, EarlyExpiry, LockOptions, SingleFlight};

use crate::cache::TieredCache;
use crate::circuit::{CircuitBreaker, DEFAULT_COOL_DOWN, DEFAULT_FAILURE_THRESHOLD};
use crate::pipeline::Runtime;
use crate::tiers::Tiers;

/// The default bound on L1 entries.
pub const DEFAULT_L1_MAX_ENTRIES: u64 = 10_000;
/// The default cap on how long L1 keeps an entry (60 s): changes made through other processes
/// show in this process within it.
pub const DEFAULT_L1_TTL_CAP: Duration = Duration::from_secs(60);
/// The default timeout of each L2 command (100 ms).
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_millis(100);
/// The default TTL of cached absences (negative caching): 10 s.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// The default bound on keys whose failed L2 delete waits for its retry (10,000); past it the
/// oldest is given up (counted in `l2_pending_dropped`, logged).
pub const DEFAULT_PENDING_WRITES: usize = 10_000;
/// The default pause before a failed L2 delete is retried (200 ms).
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// The default bound on how long a caller waits for a load another caller leads: none
/// (`Duration::MAX`), because the load itself is bounded (the hard timeout, the lock's wait).
pub const DEFAULT_MAX_WAIT: Duration = Duration::MAX;

/// The default cap on how long L1 keeps an entry while the invalidation transport is
/// disconnected (1 s): the longest a missed invalidation can be served from L1.
pub const DEFAULT_DISCONNECTED_L1_TTL: Duration = Duration::from_secs(1);
/// The default invalidation window (60 s): how long a delete's tombstone in L2 refuses the store
/// of a load that began before the delete, in any process. Keep it above the longest load (the
/// hard timeout, 10 s by default).
pub const DEFAULT_INVALIDATION_WINDOW: Duration = Duration::from_secs(60);

type Weigher<V> = Arc<dyn Fn(&Key, &V) -> u32 + Send + Sync>;

type Tier<V> = Arc<dyn Backend<Option<V>>>;

#[cfg(feature = "redis")]
type ConnectRedis<V> = Box<
    dyn FnOnce(Duration, SharedClock) -> Result<(Tier<V>, layercache_redis::RedisBackend)>
        + Send
        + Sync,
>;

pub(crate) enum L2Source<V> {
    None,
    Custom(Tier<V>),
    /// Made where `V`'s serde bounds are known ([`TieredCacheBuilder::redis_url`]).
    #[cfg(feature = "redis")]
    Redis(ConnectRedis<V>),
}

/// Builds a [`TieredCache`]; see [`TieredCache::builder`]. Every bound has a default (the
/// `DEFAULT_*` constants of this crate and of the crates it composes), and every setting is
/// checked by [`build`](Self::build), which returns a `Config` error naming what is wrong.
pub struct TieredCacheBuilder<V> {
    pub(crate) l1: bool,
    pub(crate) l1_max_entries: u64,
    pub(crate) l1_max_bytes: Option<(u64, Weigher<V>)>,
    pub(crate) l1_count_evictions: bool,
    pub(crate) l1_policy: L1Policy,
    pub(crate) l1_ttl_cap: Duration,
    pub(crate) l2: L2Source<V>,
    pub(crate) l2_timeout: Duration,
    pub(crate) lock: Option<LockOptions>,
    pub(crate) lock_store: Option<Arc<dyn LockStore>>,
    pub(crate) options: EntryOptions,
    pub(crate) negative: Option<EntryOptions>,
    pub(crate) early: Option<EarlyExpiry>,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cool_down: Duration,
    pub(crate) pending_writes: usize,
    pub(crate) retry_interval: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) clock: Option<SharedClock>,
    pub(crate) name: String,
    pub(crate) transport: Option<Arc<dyn InvalidationTransport>>,
    pub(crate) disconnected_l1_ttl: Duration,
    pub(crate) invalidation_window: Duration,
    pub(crate) latency_histograms: bool,
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

impl<V: Clone + Send + Sync + 'static> TieredCacheBuilder<V> {
    pub(crate) fn new() -> Self {
        TieredCacheBuilder {
            l1: true,
            l1_max_entries: DEFAULT_L1_MAX_ENTRIES,
            l1_max_bytes: None,
            l1_count_evictions: false,
            l1_policy: L1Policy::TinyLfu,
            l1_ttl_cap: DEFAULT_L1_TTL_CAP,
            l2: L2Source::None,
            l2_timeout: DEFAULT_L2_TIMEOUT,
            lock: None,
            lock_store: None,
            options: EntryOptions::default(),
            negative: Some(EntryOptions::new(DEFAULT_NEGATIVE_TTL)),
            early: None,
            breaker_threshold: DEFAULT_FAILURE_THRESHOLD,
            breaker_cool_down: DEFAULT_COOL_DOWN,
            pending_writes: DEFAULT_PENDING_WRITES,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            max_wait: DEFAULT_MAX_WAIT,
            clock: None,
            name: "default".to_owned(),
            transport: None,
            disconnected_l1_ttl: DEFAULT_DISCONNECTED_L1_TTL,
            invalidation_window: DEFAULT_INVALIDATION_WINDOW,
            latency_histograms: true,
        }
    }

    /// Whether reads record latency histograms through the `metrics` facade (default on; only
    /// with the `metrics` feature): `layercache_get_seconds`, `layercache_l1_seconds`,
    /// `layercache_l2_seconds` and `layercache_load_seconds`, labelled `cache` and `outcome`.
    /// Their handles are registered at [`build`](Self::build): install the recorder first.
    /// Off, a read does not read the clock for them (two clock reads per L1 hit when on).
    #[must_use]
    pub fn latency_histograms(mut self, enabled: bool) -> Self {
        self.latency_histograms = enabled;
        self
    }

    /// A name for logs and metric labels (default `"default"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The bound on L1 entries (default [`DEFAULT_L1_MAX_ENTRIES`]).
    #[must_use]
    pub fn l1_max_entries(mut self, max: u64) -> Self {
        self.l1_max_entries = max;
        self
    }

    /// Bounds L1 by bytes instead, as measured by `weigher` (a cached absence weighs 1).
    #[must_use]
    pub fn l1_max_bytes(
        mut self,
        max_bytes: u64,
        weigher: impl Fn(&Key, &V) -> u32 + Send + Sync + 'static,
    ) -> Self {
        self.l1_max_bytes = Some((max_bytes, Arc::new(weigher)));
        self
    }

    /// The cap on how long L1 keeps an entry (default [`DEFAULT_L1_TTL_CAP`]).
    #[must_use]
    pub fn l1_ttl_cap(mut self, cap: Duration) -> Self {
        self.l1_ttl_cap = cap;
        self
    }

    /// Counts L1 evictions in [`TieredStats::evictions`](crate::TieredStats::evictions) (default
    /// off: moka then takes a per-key lock on every L1 insert, about a third of its cost).
    #[must_use]
    pub fn l1_count_evictions(mut self, count: bool) -> Self {
        self.l1_count_evictions = count;
        self
    }

    /// How L1 chooses what to evict when full (default [`L1Policy::TinyLfu`], moka's own: a new
    /// key must have been seen more often than the entry it would evict, so a scan of keys read
    /// once does not flush the working set). [`L1Policy::Lru`] admits every key; it can win on
    /// traces where a key is read again soon after its first read (docs/benchmarks.md,
    /// `hit_ratio`).
    #[must_use]
    pub fn l1_eviction_policy(mut self, policy: L1Policy) -> Self {
        self.l1_policy = policy;
        self
    }

    /// No L1: every read goes to L2 (loads then wait until L2 has their value).
    #[must_use]
    pub fn without_l1(mut self) -> Self {
        self.l1 = false;
        self
    }

    /// Any backend as L2 (it stores `Option<V>`: cached absences are values).
    #[must_use]
    pub fn l2_backend(mut self, backend: Arc<dyn Backend<Option<V>>>) -> Self {
        self.l2 = L2Source::Custom(backend);
        self
    }

    /// The timeout of each L2 command (default [`DEFAULT_L2_TIMEOUT`]); for the Redis L2 this
    /// builder connects.
    #[must_use]
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2_timeout = timeout;
        self
    }

    /// Coalesce loads across processes with a distributed lock (default off): one process loads,
    /// the others poll L2 for its value. Needs Redis as L2, or a [`lock_store`](Self::lock_store).
    #[must_use]
    pub fn distributed_lock(mut self, options: LockOptions) -> Self {
        self.lock = Some(options);
        self
    }

    /// Where the distributed lock lives (default: the Redis L2).
    #[must_use]
    pub fn lock_store(mut self, store: Arc<dyn LockStore>) -> Self {
        self.lock_store = Some(store);
        self
    }

    /// The default entry options: TTL, stale period, jitter, tags, and how loads behave (hard and
    /// soft timeouts, fail-safe, eager refresh, stale-while-revalidate). Default
    /// [`EntryOptions::default`]. Any call can bring its own.
    #[must_use]
    pub fn options(mut self, options: EntryOptions) -> Self {
        self.options = options;
        self
    }

    /// The TTL of cached absences (default [`DEFAULT_NEGATIVE_TTL`]).
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative = Some(EntryOptions::new(ttl));
        self
    }

    /// Do not cache absences: every read of a missing key reaches the source.
    #[must_use]
    pub fn no_negative_caching(mut self) -> Self {
        self.negative = None;
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

    /// The bound on keys whose failed L2 delete waits for a retry (default
    /// [`DEFAULT_PENDING_WRITES`]) and the pause between retries (default
    /// [`DEFAULT_RETRY_INTERVAL`]).
    #[must_use]
    pub fn pending_l2_writes(mut self, max: usize, retry_interval: Duration) -> Self {
        self.pending_writes = max;
        self.retry_interval = retry_interval;
        self
    }

    /// How long a caller waits for a load another caller leads (default [`DEFAULT_MAX_WAIT`]:
    /// as long as the load, which its hard timeout bounds).
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The clock (default the [`SystemClock`]: a vDSO read per request, no thread).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Keeps the L1 of this cache's instances coherent: writes, deletes, clears and tag
    /// invalidations are published through `transport`, and the other instances' are applied
    /// here (default: none; L1 then shows other instances' changes within its TTL cap). See
    /// [`MemoryTransport`](layercache_core::MemoryTransport) and, in `layercache-redis`, the
    /// pub/sub backplane. The cache must be built within a tokio runtime.
    #[must_use]
    pub fn invalidation(mut self, transport: impl InvalidationTransport + 'static) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// The cap on L1 entries while the transport is disconnected (default
    /// [`DEFAULT_DISCONNECTED_L1_TTL`]).
    #[must_use]
    pub fn disconnected_l1_ttl(mut self, ttl: Duration) -> Self {
        self.disconnected_l1_ttl = ttl;
        self
    }

    /// How long a delete's tombstone in L2 refuses older loads' stores (default
    /// [`DEFAULT_INVALIDATION_WINDOW`]); keep it above the longest load.
    #[must_use]
    pub fn invalidation_window(mut self, window: Duration) -> Self {
        self.invalidation_window = window;
        self
    }

    fn validate(&self) -> Result<()> {
        self.options.validate()?;
        if let Some(negative) = &self.negative {
            negative.validate()?;
        }
        if self.l1
            && (self.l1_max_entries == 0
                || self.l1_max_bytes.as_ref().is_some_and(|(b, _)| *b == 0))
        {
            return Err(Error::config("the L1 bound must be at least 1"));
        }
        if self.l1_ttl_cap.is_zero() || self.l2_timeout.is_zero() || self.max_wait.is_zero() {
            return Err(Error::config(
                "the L1 TTL cap, the L2 timeout and max_wait must be greater than zero",
            ));
        }
        if self.disconnected_l1_ttl.is_zero() || self.invalidation_window.is_zero() {
            return Err(Error::config(
                "the disconnected L1 TTL and the invalidation window must be greater than zero",
            ));
        }
        if self.transport.is_some() && tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "a cache with an invalidation transport must be built within a tokio runtime",
            ));
        }
        if self.retry_interval.is_zero() || self.pending_writes == 0 {
            return Err(Error::config(
                "the L2 retry interval and the pending-write bound must be greater than zero",
            ));
        }
        Ok(())
    }

    /// Builds the cache. Invalid settings are a `Config` error; nothing connects yet. With a Redis
    /// URL it must be called within a tokio runtime (the connection task is spawned on it).
    pub fn build(self) -> Result<TieredCache<V>> {
        self.validate()?;
        let clock: SharedClock = match &self.clock {
            Some(clock) => Arc::clone(clock),
            None => Arc::new(SystemClock),
        };
        // The system clock calibrates the CPU's counter on its first read (about a millisecond):
        // here, not in the cache's first request.
        clock.now_for_reads();
        let l1 = if self.l1 {
            let mut builder = MokaBackend::builder()
                .max_entries(self.l1_max_entries)
                .time_to_live_cap(self.l1_ttl_cap)
                .shared_clock(Arc::clone(&clock))
                .count_evictions(self.l1_count_evictions)
                .eviction_policy(self.l1_policy)
                .name(self.name.clone());
            if let Some((max_bytes, weigher)) = &self.l1_max_bytes {
                let weigher = Arc::clone(weigher);
                builder = builder.max_bytes(*max_bytes, move |key: &Key, value: &Option<V>| {
                    value.as_ref().map_or(1, |value| weigher(key, value))
                });
            }
            Some(builder.build()?)
        } else {
            None
        };
        #[cfg(feature = "redis")]
        let mut redis = None;
        let l2: Option<Tier<V>> = match self.l2 {
            L2Source::None => None,
            L2Source::Custom(backend) => Some(backend),
            #[cfg(feature = "redis")]
            L2Source::Redis(connect) => {
                let (tier, backend) = connect(self.l2_timeout, Arc::clone(&clock))?;
                redis = Some(backend);
                Some(tier)
            }
        };
        #[cfg(feature = "redis")]
        let lock_store = self.lock_store.or_else(|| {
            redis
                .as_ref()
                .map(|r| Arc::new(r.lock_store()) as Arc<dyn LockStore>)
        });
        #[cfg(not(feature = "redis"))]
        let lock_store = self.lock_store;
        let lock = match self.lock {
            None => None,
            Some(options) => {
                let store = lock_store.ok_or_else(|| {
                    Error::config("a distributed lock needs Redis as L2, or a lock store")
                })?;
                Some(DistributedLock::from_arc(store, options)?)
            }
        };
        let mut tiers = Tiers::new(
            l1,
            l2,
            CircuitBreaker::new(self.breaker_threshold, self.breaker_cool_down),
            clock,
            self.retry_interval,
            self.pending_writes,
            self.invalidation_window,
        )?;
        tiers.latency = crate::latency::Latency::new(&self.name, self.latency_histograms);
        let coherence = self.transport.map(|transport| {
            crate::coherence::Coherence::start(
                transport,
                self.disconnected_l1_ttl,
                self.name.as_str().into(),
                Arc::clone(&tiers.clock),
                Arc::clone(&tiers.counters),
            )
        });
        let runtime = Runtime {
            tiers,
            flights: SingleFlight::new().with_max_wait(self.max_wait),
            lock,
            early: self.early,
            options: self.options,
            negative: self.negative,
            coherence,
        };
        #[cfg(feature = "redis")]
        let l2_stats = match redis {
            Some(redis) => crate::cache::L2Stats::Redis(Box::new(redis)),
            None => crate::cache::L2Stats::None,
        };
        #[cfg(not(feature = "redis"))]
        let l2_stats = crate::cache::L2Stats::None;
        TieredCache::from_runtime(runtime, self.name, l2_stats)
    }
}

#[cfg(feature = "redis")]
impl<V> TieredCacheBuilder<V>
where
    V: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// Redis as L2, connected lazily from `url` (`redis://`, `rediss://` with the `tls` feature of
    /// `layercache-redis`, `redis+cluster://`...). The connection is made at
    /// [`build`](Self::build), which must then run inside a tokio runtime.
    #[must_use]
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.l2 = L2Source::Redis(Box::new(move |timeout, clock| {
            let redis = layercache_redis::RedisBackend::builder(url)
                .command_timeout(timeout)
                .clock(clock)
                .connect_lazy()?;
            Ok((Arc::new(redis.clone()) as Tier<V>, redis))
        }));
        self
    }

    /// A Redis backend you built as L2 (shared by several caches, say).
    #[must_use]
    pub fn redis(mut self, redis: layercache_redis::RedisBackend) -> Self {
        self.l2 = L2Source::Redis(Box::new(move |_, _| {
            Ok((Arc::new(redis.clone()) as Tier<V>, redis))
        }));
        self
    }
}
