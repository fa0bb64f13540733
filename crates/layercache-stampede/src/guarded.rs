//! `get_or_load` over a backend, with the guards composed in the right order.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;

use layercache_core::{
    Backend, Clock, Entry, EntryOptions, Error, Key, Loader, Result, SharedClock, SystemClock,
};

use crate::early::EarlyExpiry;
use crate::generations::Generations;
use crate::lock::{DistributedLock, OnLockTimeout};
use crate::single_flight::{DEFAULT_MAX_WAIT, SingleFlight, SingleFlightStats};

/// Counters of a [`GuardedCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuardedStats {
    /// Reads answered by a fresh cached value.
    pub hits: u64,
    /// Reads that found no fresh value and had to wait for a load.
    pub misses: u64,
    /// Calls of the loader (synchronous loads and refreshes).
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Early refreshes started by XFetch.
    pub early_refreshes: u64,
    /// Early refreshes that stored a new value.
    pub refreshes_completed: u64,
    /// Waits for another process's load that ended with its value in the cache.
    pub lock_waits_served: u64,
    /// Waits for another process's load that reached `max_wait`.
    pub lock_timeouts: u64,
    /// Backend or lock-store calls that failed (the caller was served by the loader instead).
    pub backend_errors: u64,
    /// Loaded values not stored because a write of their key (or stripe) happened during the load.
    pub stores_skipped: u64,
    /// Stale values served because the loader failed (fail-safe) or passed its soft timeout.
    pub stale_served: u64,
    /// Loads that passed the soft timeout (a stale value was served; the load went on).
    pub soft_timeouts: u64,
    /// Eager refreshes started because a fraction of the TTL had passed.
    pub eager_refreshes: u64,
    /// Single-flight counters: flights led and callers coalesced.
    pub flights: SingleFlightStats,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    early_refreshes: AtomicU64,
    refreshes_completed: AtomicU64,
    lock_waits_served: AtomicU64,
    lock_timeouts: AtomicU64,
    backend_errors: AtomicU64,
    stores_skipped: AtomicU64,
    stale_served: AtomicU64,
    soft_timeouts: AtomicU64,
    eager_refreshes: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Inner<V> {
    backend: Arc<dyn Backend<V>>,
    options: EntryOptions,
    clock: SharedClock,
    flights: SingleFlight<Option<V>>,
    single_flight: bool,
    lock: Option<DistributedLock>,
    early: Option<EarlyExpiry>,
    policy: Option<OptionsPolicy<V>>,
    resilience: Resilience,
    generations: Generations,
    counters: Counters,
}

/// Fail-safe and timeout settings; all off by default.
#[derive(Clone, Copy, Debug, Default)]
struct Resilience {
    fail_safe: Option<Duration>,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    eager_refresh: Option<f64>,
}

/// The default number of concurrent loads of [`GuardedCache::warm`].
pub const DEFAULT_WARM_CONCURRENCY: usize = 16;

/// What warming one key did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum WarmOutcome {
    /// The value was loaded and stored.
    Loaded,
    /// The source has no value for the key (nothing stored).
    Absent,
    /// The load failed.
    Failed(Error),
}

/// The per-item report of [`GuardedCache::warm`], in the order the keys were given.
#[derive(Clone, Debug)]
pub struct WarmReport {
    /// Each key with what happened to it.
    pub items: Vec<(Key, WarmOutcome)>,
}

impl WarmReport {
    /// How many keys were loaded (or found absent) without error.
    pub fn ok(&self) -> usize {
        self.items
            .iter()
            .filter(|(_, o)| !matches!(o, WarmOutcome::Failed(_)))
            .count()
    }

    /// The keys that failed, with their errors.
    pub fn failed(&self) -> impl Iterator<Item = (&Key, &Error)> {
        self.items
            .iter()
            .filter_map(|(key, outcome)| match outcome {
                WarmOutcome::Failed(error) => Some((key, error)),
                _ => None,
            })
    }
}

/// Chooses entry options per loaded value; `None` keeps the call's or the cache's options.
pub type OptionsPolicy<V> = Arc<dyn Fn(&V) -> Option<EntryOptions> + Send + Sync>;

/// Builds a [`GuardedCache`]; see [`GuardedCache::builder`].
pub struct GuardedCacheBuilder<V> {
    backend: Arc<dyn Backend<V>>,
    options: EntryOptions,
    clock: SharedClock,
    single_flight: bool,
    max_wait: Duration,
    lock: Option<DistributedLock>,
    early: Option<EarlyExpiry>,
    policy: Option<OptionsPolicy<V>>,
    resilience: Resilience,
}

impl<V> fmt::Debug for GuardedCacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedCacheBuilder")
            .field("backend", &self.backend)
            .field("options", &self.options)
            .field("single_flight", &self.single_flight)
            .field("lock", &self.lock)
            .field("early", &self.early)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> GuardedCacheBuilder<V> {
    /// The TTL policy of loaded values (default [`EntryOptions::default`]).
    #[must_use]
    pub fn options(mut self, options: EntryOptions) -> Self {
        self.options = options;
        self
    }

    /// The clock that decides freshness (default the system clock); give the backend the same one.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Coalesce concurrent loads of a key in this process (default on).
    #[must_use]
    pub fn single_flight(mut self, on: bool) -> Self {
        self.single_flight = on;
        self
    }

    /// How long a caller waits for a load in progress (default [`DEFAULT_MAX_WAIT`]).
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Coalesce loads across processes with a distributed lock (default off). Waiters poll the
    /// backend for the holder's value, so the backend must be shared (Redis).
    #[must_use]
    pub fn lock(mut self, lock: DistributedLock) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Refresh entries early in the background with XFetch (default off).
    #[must_use]
    pub fn early_expiry(mut self, early: EarlyExpiry) -> Self {
        self.early = Some(early);
        self
    }

    /// Fail-safe: when the loader fails or times out and a stale value (within its stale-until)
    /// exists, serve it, and store it as fresh for `throttle` so the loader is retried no more often
    /// than that (default off).
    #[must_use]
    pub fn fail_safe(mut self, throttle: Duration) -> Self {
        self.resilience.fail_safe = Some(throttle);
        self
    }

    /// Soft timeout: when a load takes longer and a stale value exists, the caller gets the stale
    /// value; the load goes on in the background and fills the cache (default off; needs
    /// single-flight).
    #[must_use]
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.resilience.soft_timeout = Some(timeout);
        self
    }

    /// Hard timeout: a load that takes longer fails with a `Timeout` error (then fail-safe may serve
    /// a stale value) (default off).
    #[must_use]
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.resilience.hard_timeout = Some(timeout);
        self
    }

    /// Eager refresh: once `fraction` (in `(0, 1)`) of an entry's fresh TTL has passed, a read
    /// starts a background refresh (one per key at a time) and still returns the current value —
    /// stale-while-revalidate before the value goes stale (default off).
    #[must_use]
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.resilience.eager_refresh = Some(fraction);
        self
    }

    /// Chooses entry options per loaded value (negative caching gives absent values a short TTL
    /// this way). Returning `None` keeps the call's or the cache's options.
    #[must_use]
    pub fn options_policy(
        mut self,
        policy: impl Fn(&V) -> Option<EntryOptions> + Send + Sync + 'static,
    ) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// Builds the cache; invalid options are a config error.
    pub fn build(self) -> Result<GuardedCache<V>> {
        self.options.validate()?;
        let r = &self.resilience;
        if let Some(fraction) = r.eager_refresh
            && !(fraction > 0.0 && fraction < 1.0)
        {
            return Err(Error::config(format!(
                "eager refresh fraction must be in (0, 1), got {fraction}"
            )));
        }
        if [r.fail_safe, r.soft_timeout, r.hard_timeout]
            .into_iter()
            .flatten()
            .any(|d| d.is_zero())
        {
            return Err(Error::config(
                "fail-safe throttle and load timeouts must be greater than zero",
            ));
        }
        if let (Some(soft), Some(hard)) = (r.soft_timeout, r.hard_timeout)
            && soft >= hard
        {
            return Err(Error::config(
                "the soft timeout must be shorter than the hard timeout",
            ));
        }
        if self.max_wait.is_zero() {
            return Err(Error::config("max_wait must be greater than zero"));
        }
        Ok(GuardedCache {
            inner: Arc::new(Inner {
                backend: self.backend,
                options: self.options,
                clock: self.clock,
                flights: SingleFlight::new().with_max_wait(self.max_wait),
                single_flight: self.single_flight,
                lock: self.lock,
                early: self.early,
                policy: self.policy,
                resilience: self.resilience,
                generations: Generations::new(),
                counters: Counters::default(),
            }),
        })
    }
}

/// A backend with `get_or_load` guarded against stampedes.
///
/// A read takes these steps, outermost first — the order matters:
///
/// 1. **Read the backend.** A fresh value is returned at once. With [`EarlyExpiry`], the read may
///    also start a background refresh (one per key at a time); the caller still gets the current
///    value without waiting.
/// 2. **Single-flight** (per process): of the callers that miss together, one leads the load and
///    the rest wait for its outcome.
/// 3. **Distributed lock** (across processes, optional): the leader takes the key's lock and loads;
///    leaders in other processes poll the backend for its value, bounded by `max_wait`.
/// 4. **Load and store**: the loader runs, its duration is measured (XFetch's delta), and the value
///    is stored with the entry options.
///
/// The wrong order costs dearly: a lock outside single-flight makes every concurrent caller of a
/// process poll Redis for the lock (callers × processes requests instead of processes); an early
/// refresh that bypasses single-flight starts one load per lucky reader; single-flight around the
/// load alone (without the store) lets callers that arrive between load and store load again.
///
/// Cache failures never fail the caller: when the backend or the lock store errs, the value comes
/// from the loader. Loader errors reach every waiting caller and are not cached.
pub struct GuardedCache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for GuardedCache<V> {
    fn clone(&self) -> Self {
        GuardedCache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> fmt::Debug for GuardedCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedCache")
            .field("backend", &self.inner.backend)
            .field("single_flight", &self.inner.single_flight)
            .field("lock", &self.inner.lock)
            .field("early", &self.inner.early)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> GuardedCache<V> {
    /// A builder over `backend`, with single-flight on and no lock or early expiry.
    pub fn builder(backend: Arc<dyn Backend<V>>) -> GuardedCacheBuilder<V> {
        GuardedCacheBuilder {
            backend,
            options: EntryOptions::default(),
            clock: Arc::new(SystemClock),
            single_flight: true,
            max_wait: DEFAULT_MAX_WAIT,
            lock: None,
            early: None,
            policy: None,
            resilience: Resilience::default(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend<V>> {
        &self.inner.backend
    }

    /// The counters so far.
    pub fn stats(&self) -> GuardedStats {
        let c = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GuardedStats {
            hits: load(&c.hits),
            misses: load(&c.misses),
            loads: load(&c.loads),
            load_errors: load(&c.load_errors),
            early_refreshes: load(&c.early_refreshes),
            refreshes_completed: load(&c.refreshes_completed),
            lock_waits_served: load(&c.lock_waits_served),
            lock_timeouts: load(&c.lock_timeouts),
            backend_errors: load(&c.backend_errors),
            stores_skipped: load(&c.stores_skipped),
            stale_served: load(&c.stale_served),
            soft_timeouts: load(&c.soft_timeouts),
            eager_refreshes: load(&c.eager_refreshes),
            flights: self.inner.flights.stats(),
        }
    }

    /// The values of `keys`, in order: one batched backend read (`get_many`, one MGET on Redis),
    /// then one batched loader call (`load_many`) for the keys that were not fresh, stored with one
    /// `set_many` (skipping keys written meanwhile). Each missing key is a single-flight of its
    /// own: keys another caller is already loading are joined, not loaded again, and callers of
    /// `get_or_load` can join the batch's keys. Duplicate keys are loaded once. A backend failure
    /// counts as all misses; a loader failure fails the keys of that batch.
    pub async fn get_many_or_load<L>(&self, keys: &[Key], loader: &Arc<L>) -> Result<Vec<Option<V>>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let inner = &self.inner;
        let cached = match inner.backend.get_many(keys).await {
            Ok(cached) if cached.len() == keys.len() => cached,
            Ok(_) | Err(_) => {
                bump(&inner.counters.backend_errors);
                keys.iter().map(|_| None).collect()
            }
        };
        let now = inner.clock.now();
        let mut out: Vec<Option<Option<V>>> = Vec::with_capacity(keys.len());
        let mut missing: Vec<Key> = Vec::new();
        for (key, entry) in keys.iter().zip(cached) {
            match entry {
                Some(entry) if entry.meta.is_fresh(now) => {
                    bump(&inner.counters.hits);
                    out.push(Some(Some(entry.value)));
                }
                _ => {
                    bump(&inner.counters.misses);
                    missing.push(key.clone());
                    out.push(None);
                }
            }
        }
        if missing.is_empty() {
            return Ok(out.into_iter().map(Option::flatten).collect());
        }
        let batch_inner = Arc::clone(inner);
        let loader = Arc::clone(loader);
        let loaded = inner
            .flights
            .run_many(&missing, move |led| async move {
                batch_inner.load_batch(led, &*loader).await
            })
            .await;
        let mut loaded = loaded.into_iter();
        for slot in out.iter_mut().filter(|slot| slot.is_none()) {
            match loaded.next() {
                Some(value) => *slot = Some(value?),
                None => return Err(Error::loader("a batch load lost a key")),
            }
        }
        Ok(out.into_iter().map(Option::flatten).collect())
    }

    /// Loads `keys` from the source and stores them, whatever the cache holds, at most
    /// `concurrency` at a time (default [`DEFAULT_WARM_CONCURRENCY`] when 0 is given). One failure
    /// does not stop the rest: the report says, per key, whether it was loaded.
    pub async fn warm<L>(&self, keys: Vec<Key>, loader: &Arc<L>, concurrency: usize) -> WarmReport
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let concurrency = if concurrency == 0 {
            DEFAULT_WARM_CONCURRENCY
        } else {
            concurrency
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, key) in keys.iter().enumerate() {
            let (inner, loader, permits, key) = (
                Arc::clone(&self.inner),
                Arc::clone(loader),
                Arc::clone(&permits),
                key.clone(),
            );
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let job = Job::new(&inner, &key, loader, None);
                let outcome = match inner.load_and_store(&job).await {
                    Ok(Some(_)) => WarmOutcome::Loaded,
                    Ok(None) => WarmOutcome::Absent,
                    Err(error) => WarmOutcome::Failed(error),
                };
                (index, outcome)
            });
        }
        let mut outcomes: Vec<Option<WarmOutcome>> = keys.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, outcome)) => outcomes[index] = Some(outcome),
                Err(error) => tracing::warn!(%error, "a warm-up task panicked"),
            }
        }
        WarmReport {
            items: keys
                .into_iter()
                .zip(outcomes)
                .map(|(key, outcome)| {
                    let outcome = outcome
                        .unwrap_or_else(|| WarmOutcome::Failed(Error::loader("the load panicked")));
                    (key, outcome)
                })
                .collect(),
        }
    }

    /// Takes the write lock of `key` (shared by a stripe of keys): writes of a key that hold it are
    /// serialised, and [`WriteGuard::invalidate_loads`] makes every load of the key that started
    /// earlier skip its store. Write-through and delete use it so that once they return, no older
    /// load puts an old value back.
    pub async fn write_lock(&self, key: &Key) -> WriteGuard<'_, V> {
        let guard = self.inner.generations.lock(key).await;
        WriteGuard {
            inner: &self.inner,
            key: key.clone(),
            _stripe: guard,
        }
    }

    /// Removes `key` from the backend so that no load that started earlier puts it back.
    pub async fn invalidate(&self, key: &Key) -> Result<bool> {
        let guard = self.write_lock(key).await;
        guard.invalidate_loads();
        self.inner.backend.delete(key).await
    }

    /// Whether a load or refresh of `key` is in progress in this process.
    pub fn is_loading(&self, key: &Key) -> bool {
        self.inner.flights.is_in_flight(key)
    }

    /// The value of `key`: from the backend when fresh, otherwise from `loader` (then stored with
    /// the cache's entry options). `Ok(None)` when the source has no value; absence is not cached
    /// here (the strategies' negative caching stores `Option<V>` values and a policy for them).
    pub async fn get_or_load<L>(&self, key: &Key, loader: &Arc<L>) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        self.get_or_load_lazy(key, None, || Arc::clone(loader))
            .await
    }

    /// [`get_or_load`](Self::get_or_load) with entry options for this call; invalid options are a
    /// config error.
    pub async fn get_or_load_with<L>(
        &self,
        key: &Key,
        loader: &Arc<L>,
        options: &EntryOptions,
    ) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        options.validate()?;
        self.get_or_load_lazy(key, Some(options), || Arc::clone(loader))
            .await
    }

    /// The hit path, for callers that read the cache themselves (the two-tier cache reads its L1
    /// without a future): when `entry` is fresh at the cache's clock, counts a hit, starts a
    /// background refresh if XFetch or eager refresh says so (taking the loader from `make_loader`)
    /// and returns the value; otherwise gives the entry back.
    pub fn serve_fresh<L, F>(
        &self,
        key: &Key,
        entry: Entry<V>,
        options: Option<&EntryOptions>,
        make_loader: &mut Option<F>,
    ) -> std::result::Result<V, Entry<V>>
    where
        L: Loader<V> + ?Sized + 'static,
        F: FnOnce() -> Arc<L>,
    {
        let inner = &self.inner;
        let now = inner.clock.now();
        if !entry.meta.is_fresh(now) {
            return Err(entry);
        }
        bump(&inner.counters.hits);
        let eager = inner.resilience.eager_refresh.is_some_and(|fraction| {
            let ttl = entry
                .meta
                .fresh_until
                .saturating_since(entry.meta.created_at);
            now >= entry.meta.created_at + ttl.mul_f64(fraction)
        });
        let early = !eager
            && inner
                .early
                .as_ref()
                .is_some_and(|early| early.should_refresh(&entry.meta, now));
        if (eager || early)
            && !inner.flights.is_in_flight(key)
            && let Some(make_loader) = make_loader.take()
        {
            let job = Job::new(inner, key, make_loader(), options);
            let work = Arc::clone(inner).refresh(job, entry.clone());
            if inner.flights.spawn_if_idle(key, work) {
                bump(if eager {
                    &inner.counters.eager_refreshes
                } else {
                    &inner.counters.early_refreshes
                });
            }
        }
        Ok(entry.value)
    }

    /// [`get_or_load`](Self::get_or_load) for callers that adapt their loader: `make_loader` runs
    /// only when a load or refresh is needed, so a hit costs no allocation.
    pub async fn get_or_load_lazy<L, F>(
        &self,
        key: &Key,
        options: Option<&EntryOptions>,
        make_loader: F,
    ) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
        F: FnOnce() -> Arc<L>,
    {
        let inner = &self.inner;
        let mut make_loader = Some(make_loader);
        let previous = match inner.backend.get(key).await {
            Ok(Some(entry)) => match self.serve_fresh(key, entry, options, &mut make_loader) {
                Ok(value) => return Ok(Some(value)),
                Err(stale) => Some(stale),
            },
            Ok(None) => None,
            Err(error) => {
                bump(&inner.counters.backend_errors);
                tracing::warn!(%key, %error, "cache read failed; loading from the source");
                None
            }
        };
        bump(&inner.counters.misses);
        let Some(make_loader) = make_loader else {
            return Err(Error::loader("the loader was already taken"));
        };
        // Boxed so that the hit path's future stays small (moving a large future costs a hit).
        Box::pin(self.load_on_miss(key, options, make_loader(), previous)).await
    }

    /// The miss path of [`get_or_load_lazy`](Self::get_or_load_lazy): single-flight, soft timeout.
    async fn load_on_miss<L>(
        &self,
        key: &Key,
        options: Option<&EntryOptions>,
        loader: Arc<L>,
        previous: Option<Entry<V>>,
    ) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let inner = &self.inner;
        let soft = match (inner.resilience.soft_timeout, &previous) {
            (Some(timeout), Some(stale)) if inner.single_flight => {
                Some((timeout, stale.value.clone()))
            }
            _ => None,
        };
        let job = Job::new(inner, key, loader, options);
        if !inner.single_flight {
            return Arc::clone(inner).fill(job, previous, false).await;
        }
        let flight = inner.flights.run_checked(key, |recheck| {
            Arc::clone(inner).fill(job, previous, recheck)
        });
        match soft {
            None => flight.await,
            // On a soft timeout only this caller's wait ends: the flight goes on and fills the cache.
            Some((timeout, stale)) => match tokio::time::timeout(timeout, flight).await {
                Ok(result) => result,
                Err(_) => {
                    bump(&inner.counters.soft_timeouts);
                    bump(&inner.counters.stale_served);
                    Ok(Some(stale))
                }
            },
        }
    }
}

/// The write lock of a key; see [`GuardedCache::write_lock`]. Released on drop.
pub struct WriteGuard<'a, V> {
    inner: &'a Inner<V>,
    key: Key,
    _stripe: tokio::sync::MutexGuard<'a, ()>,
}

impl<V> fmt::Debug for WriteGuard<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteGuard")
            .field("key", &self.key)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> WriteGuard<'_, V> {
    /// Makes loads of the key that started before now skip their store, and lets callers that
    /// arrive from now on start a new load instead of joining one that may return an older value.
    /// Call it after the source write, before writing the cache.
    pub fn invalidate_loads(&self) {
        self.inner.generations.bump(&self.key);
        self.inner.flights.forget(&self.key);
    }
}

/// What one load needs, owned so it can run in its own task.
struct Job<L: ?Sized> {
    key: Key,
    loader: Arc<L>,
    options: Option<EntryOptions>,
    /// The write generation of the key when the load was asked for.
    generation: u64,
}

impl<L: ?Sized> Job<L> {
    fn new<V>(inner: &Inner<V>, key: &Key, loader: Arc<L>, options: Option<&EntryOptions>) -> Self {
        Job {
            key: key.clone(),
            loader,
            options: options.cloned(),
            generation: inner.generations.current(key),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Inner<V> {
    /// Runs the loader, measures it and stores the value.
    async fn load_and_store<L>(&self, job: &Job<L>) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized,
    {
        let key = &job.key;
        bump(&self.counters.loads);
        let started = Instant::now();
        let loading = job
            .loader
            .load(key)
            .instrument(tracing::debug_span!("layercache.load", %key));
        let loaded = match self.resilience.hard_timeout {
            None => loading.await,
            Some(timeout) => tokio::time::timeout(timeout, loading)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::timeout(format!(
                        "loading {key} exceeded the hard timeout of {timeout:?}"
                    )))
                }),
        }
        .inspect_err(|_| bump(&self.counters.load_errors))?;
        let cost = started.elapsed();
        let Some(value) = loaded else {
            return Ok(None);
        };
        let options = match &self.policy {
            Some(policy) => policy(&value),
            None => None,
        };
        let options = options
            .as_ref()
            .or(job.options.as_ref())
            .unwrap_or(&self.options);
        let entry = options.entry(value.clone(), self.clock.now(), cost)?;
        self.store(key, job.generation, entry).await;
        Ok(Some(value))
    }

    /// One batched load of `keys` (the single-flight leader's work for a bulk read): stores the
    /// values that are present, skipping keys written during the load.
    async fn load_batch<L>(&self, keys: Vec<Key>, loader: &L) -> Result<Vec<Option<V>>>
    where
        L: Loader<V> + ?Sized,
    {
        let generations: Vec<u64> = keys.iter().map(|k| self.generations.current(k)).collect();
        bump(&self.counters.loads);
        let started = Instant::now();
        let loaded = loader
            .load_many(&keys)
            .instrument(tracing::debug_span!(
                "layercache.load_many",
                keys = keys.len()
            ))
            .await
            .inspect_err(|_| bump(&self.counters.load_errors))?;
        if loaded.len() != keys.len() {
            bump(&self.counters.load_errors);
            return Err(Error::loader(format!(
                "load_many of {} keys returned {} values",
                keys.len(),
                loaded.len()
            )));
        }
        let cost = started.elapsed();
        let now = self.clock.now();
        let _stripes = self.generations.lock_many(&keys).await;
        let mut items = Vec::new();
        for ((key, value), generation) in keys.iter().zip(&loaded).zip(generations) {
            let Some(value) = value else { continue };
            if self.generations.current(key) != generation {
                bump(&self.counters.stores_skipped);
                continue;
            }
            let options = self.policy.as_ref().and_then(|p| p(value));
            let options = options.as_ref().unwrap_or(&self.options);
            items.push((key.clone(), options.entry(value.clone(), now, cost)?));
        }
        if let Err(error) = self.backend.set_many(items).await {
            bump(&self.counters.backend_errors);
            tracing::warn!(%error, "storing loaded values failed; serving them anyway");
        }
        Ok(loaded)
    }

    /// Stores `entry` unless a write of its key happened since `generation` was noted.
    async fn store(&self, key: &Key, generation: u64, entry: Entry<V>) {
        let _stripe = self.generations.lock(key).await;
        if self.generations.current(key) != generation {
            // A write happened since this load began: its value wins, this one is not stored.
            bump(&self.counters.stores_skipped);
        } else if let Err(error) = self.backend.set(key, entry).await {
            bump(&self.counters.backend_errors);
            tracing::warn!(%key, %error, "storing a loaded value failed; serving it anyway");
        }
    }

    /// Loads and stores; when that fails and fail-safe is on, serves `previous` if it is still
    /// within its stale-until, storing it as fresh for the throttle so the loader rests.
    async fn load_or_fail_safe<L>(
        &self,
        job: &Job<L>,
        previous: Option<&Entry<V>>,
    ) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized,
    {
        let error = match self.load_and_store(job).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let now = self.clock.now();
        match (self.resilience.fail_safe, previous) {
            (Some(throttle), Some(previous)) if !previous.meta.is_expired(now) => {
                bump(&self.counters.stale_served);
                tracing::warn!(key = %job.key, %error, "loader failed; serving the stale value (fail-safe)");
                let mut entry = previous.clone();
                entry.meta.fresh_until = (now + throttle).min(entry.meta.stale_until);
                self.store(&job.key, job.generation, entry).await;
                Ok(Some(previous.value.clone()))
            }
            _ => Err(error),
        }
    }

    /// A fresh entry newer than `previous`, if the backend has one (another process stored it).
    async fn newer_in_backend(&self, key: &Key, previous: Option<&Entry<V>>) -> Option<Entry<V>> {
        let newer =
            |entry: &Entry<V>| previous.is_none_or(|p| entry.meta.created_at > p.meta.created_at);
        match self.backend.get(key).await {
            Ok(Some(entry)) if entry.meta.is_fresh(self.clock.now()) && newer(&entry) => {
                Some(entry)
            }
            Ok(_) => None,
            Err(_) => {
                bump(&self.counters.backend_errors);
                None
            }
        }
    }

    /// The load a missing caller waits for (the single-flight leader's work). `previous` is the
    /// entry the caller saw (stale, or fresh for an early refresh); it is served when the lock wait
    /// times out and the configuration says so.
    async fn fill<L>(
        self: Arc<Self>,
        job: Job<L>,
        previous: Option<Entry<V>>,
        recheck: bool,
    ) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        // A flight of this key landed moments ago: its value is most likely stored already.
        if recheck && let Some(entry) = self.newer_in_backend(&job.key, previous.as_ref()).await {
            return Ok(Some(entry.value));
        }
        let Some(lock) = &self.lock else {
            return self.load_or_fail_safe(&job, previous.as_ref()).await;
        };
        let key = &job.key;
        let deadline = tokio::time::Instant::now() + lock.options().max_wait;
        let mut backoff = lock.backoff();
        loop {
            match lock.try_lock(key).await {
                Ok(Some(guard)) => {
                    // The previous holder may have stored its value just before we took the lock.
                    let result = match self.newer_in_backend(key, previous.as_ref()).await {
                        Some(entry) => Ok(Some(entry.value)),
                        None => self.load_or_fail_safe(&job, previous.as_ref()).await,
                    };
                    if let Err(error) = guard.release().await {
                        tracing::warn!(%key, %error, "could not release a lock; it expires with its lease");
                    }
                    return result;
                }
                Ok(None) => {}
                Err(error) => {
                    bump(&self.counters.backend_errors);
                    tracing::warn!(%key, %error, "lock store failed; loading without the lock");
                    return self.load_or_fail_safe(&job, previous.as_ref()).await;
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                bump(&self.counters.lock_timeouts);
                let servable = previous
                    .as_ref()
                    .filter(|p| !p.meta.is_expired(self.clock.now()));
                return match (lock.options().on_timeout, servable) {
                    (OnLockTimeout::ServeStale | OnLockTimeout::Fail, Some(servable)) => {
                        bump(&self.counters.stale_served);
                        Ok(Some(servable.value.clone()))
                    }
                    (OnLockTimeout::Fail, None) => Err(Error::lock(format!(
                        "waited {:?} for another process to load {key}",
                        lock.options().max_wait
                    ))),
                    _ => self.load_or_fail_safe(&job, previous.as_ref()).await,
                };
            }
            tokio::time::sleep(backoff.next_pause().min(deadline - now)).await;
            if let Some(entry) = self.newer_in_backend(key, previous.as_ref()).await {
                bump(&self.counters.lock_waits_served);
                return Ok(Some(entry.value));
            }
        }
    }

    /// An early refresh of `previous`: a fill that wants a value newer than the one it saw.
    async fn refresh<L>(self: Arc<Self>, job: Job<L>, previous: Entry<V>) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let result = Arc::clone(&self).fill(job, Some(previous), false).await;
        if matches!(result, Ok(Some(_))) {
            bump(&self.counters.refreshes_completed);
        }
        result
    }
}
