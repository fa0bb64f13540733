//! `get_or_load` over a backend, with the guards composed in the right order.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    generations: Generations,
    counters: Counters,
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

    /// Builds the cache; invalid entry options are a config error.
    pub fn build(self) -> Result<GuardedCache<V>> {
        self.options.validate()?;
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
            flights: self.inner.flights.stats(),
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
        let previous = match inner.backend.get(key).await {
            Ok(Some(entry)) => {
                let now = inner.clock.now();
                if entry.meta.is_fresh(now) {
                    bump(&inner.counters.hits);
                    if let Some(early) = &inner.early
                        && early.should_refresh(&entry.meta, now)
                        && !inner.flights.is_in_flight(key)
                    {
                        let job = Job::new(inner, key, make_loader(), options);
                        let work = Arc::clone(inner).refresh(job, entry.clone());
                        if inner.flights.spawn_if_idle(key, work) {
                            bump(&inner.counters.early_refreshes);
                        }
                    }
                    return Ok(Some(entry.value));
                }
                Some(entry)
            }
            Ok(None) => None,
            Err(error) => {
                bump(&inner.counters.backend_errors);
                tracing::warn!(%key, %error, "cache read failed; loading from the source");
                None
            }
        };
        bump(&inner.counters.misses);
        let fill = Arc::clone(inner).fill(Job::new(inner, key, make_loader(), options), previous);
        if inner.single_flight {
            inner.flights.run(key, fill).await
        } else {
            fill.await
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
        let loaded = job
            .loader
            .load(key)
            .await
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
        let _stripe = self.generations.lock(key).await;
        if self.generations.current(key) != job.generation {
            // A write happened since this load began: its value wins, this one is not stored.
            bump(&self.counters.stores_skipped);
        } else if let Err(error) = self.backend.set(key, entry).await {
            bump(&self.counters.backend_errors);
            tracing::warn!(%key, %error, "storing a loaded value failed; serving it anyway");
        }
        Ok(Some(value))
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
    async fn fill<L>(self: Arc<Self>, job: Job<L>, previous: Option<Entry<V>>) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let Some(lock) = &self.lock else {
            return self.load_and_store(&job).await;
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
                        None => self.load_and_store(&job).await,
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
                    return self.load_and_store(&job).await;
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                bump(&self.counters.lock_timeouts);
                let servable = previous.filter(|p| !p.meta.is_expired(self.clock.now()));
                return match (lock.options().on_timeout, servable) {
                    (OnLockTimeout::ServeStale | OnLockTimeout::Fail, Some(previous)) => {
                        Ok(Some(previous.value))
                    }
                    (OnLockTimeout::Fail, None) => Err(Error::lock(format!(
                        "waited {:?} for another process to load {key}",
                        lock.options().max_wait
                    ))),
                    _ => self.load_and_store(&job).await,
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
        let result = Arc::clone(&self).fill(job, Some(previous)).await;
        if matches!(result, Ok(Some(_))) {
            bump(&self.counters.refreshes_completed);
        }
        result
    }
}
