//! Cache-aside: the application reads the cache, loads on a miss and stores what it loaded.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use layercache_core::{
    Backend, Clock, EntryOptions, Key, Loader, Result, SharedClock, SystemClock, async_trait,
};
use layercache_stampede::{
    DistributedLock, EarlyExpiry, GuardedCache, GuardedCacheBuilder, GuardedStats,
};

/// The default TTL of negative entries (a source's "absent"): 10 s.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// Adapts a `Loader<V>` to a cache of `Option<V>` values: the source's "absent" becomes the value
/// `None`, cached like any other (with the negative TTL). Allocated only on a miss.
pub struct AbsentAsValue<L: ?Sized>(pub Arc<L>);

impl<L: ?Sized> fmt::Debug for AbsentAsValue<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AbsentAsValue")
    }
}

#[async_trait]
impl<V, L> Loader<Option<V>> for AbsentAsValue<L>
where
    V: Send + 'static,
    L: Loader<V> + ?Sized,
{
    async fn load(&self, key: &Key) -> Result<Option<Option<V>>> {
        Ok(Some(self.0.load(key).await?))
    }

    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Option<Option<V>>>> {
        Ok(self
            .0
            .load_many(keys)
            .await?
            .into_iter()
            .map(Some)
            .collect())
    }
}

/// Builds a [`CacheAside`]; see [`CacheAside::builder`].
pub struct CacheAsideBuilder<V> {
    backend: Arc<dyn Backend<Option<V>>>,
    options: EntryOptions,
    negative: Option<EntryOptions>,
    clock: SharedClock,
    single_flight: bool,
    lock: Option<DistributedLock>,
    early: Option<EarlyExpiry>,
    configure: Option<ConfigureGuards<V>>,
}

/// Adjusts the guards' builder (fail-safe, timeouts, eager refresh).
type ConfigureGuards<V> =
    Box<dyn FnOnce(GuardedCacheBuilder<Option<V>>) -> GuardedCacheBuilder<Option<V>> + Send>;

impl<V> fmt::Debug for CacheAsideBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheAsideBuilder")
            .field("backend", &self.backend)
            .field("options", &self.options)
            .field("negative", &self.negative)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> CacheAsideBuilder<V> {
    /// The TTL policy of cached values (default [`EntryOptions::default`]: 5 minutes).
    #[must_use]
    pub fn options(mut self, options: EntryOptions) -> Self {
        self.options = options;
        self
    }

    /// The TTL of negative entries (default [`DEFAULT_NEGATIVE_TTL`]).
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative = Some(EntryOptions::new(ttl));
        self
    }

    /// The full options of negative entries (TTL, jitter, tags).
    #[must_use]
    pub fn negative_options(mut self, options: EntryOptions) -> Self {
        self.negative = Some(options);
        self
    }

    /// Do not cache the source's "absent": every read of a missing key reaches the source.
    #[must_use]
    pub fn no_negative_caching(mut self) -> Self {
        self.negative = None;
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

    /// Coalesce loads across processes with a distributed lock (default off).
    #[must_use]
    pub fn lock(mut self, lock: DistributedLock) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Refresh hot entries early with XFetch (default off).
    #[must_use]
    pub fn early_expiry(mut self, early: EarlyExpiry) -> Self {
        self.early = Some(early);
        self
    }

    /// Sets anything else on the guards underneath: fail-safe, soft and hard load timeouts, eager
    /// refresh, the wait bound (see [`GuardedCacheBuilder`]).
    #[must_use]
    pub fn configure(
        mut self,
        f: impl FnOnce(GuardedCacheBuilder<Option<V>>) -> GuardedCacheBuilder<Option<V>>
        + Send
        + 'static,
    ) -> Self {
        self.configure = Some(Box::new(f));
        self
    }

    /// Builds the cache; invalid options are a config error.
    pub fn build(self) -> Result<CacheAside<V>> {
        if let Some(negative) = &self.negative {
            negative.validate()?;
        }
        let negative = self.negative.clone();
        let mut guarded = GuardedCache::builder(Arc::clone(&self.backend))
            .options(self.options.clone())
            .clock(Arc::clone(&self.clock))
            .single_flight(self.single_flight)
            .options_policy(move |value: &Option<V>| match value {
                None => negative.clone(),
                Some(_) => None,
            });
        if let Some(lock) = self.lock {
            guarded = guarded.lock(lock);
        }
        if let Some(early) = self.early {
            guarded = guarded.early_expiry(early);
        }
        if let Some(configure) = self.configure {
            guarded = configure(guarded);
        }
        Ok(CacheAside {
            guarded: guarded.build()?,
            options: self.options,
            cache_negatives: self.negative.is_some(),
            clock: self.clock,
        })
    }
}

/// Cache-aside over any backend: [`get`](Self::get), [`set`](Self::set), [`delete`](Self::delete)
/// and [`get_or_load`](Self::get_or_load) (miss → load → store).
///
/// - **Negative caching**: the source's "absent" is cached too, with its own short TTL (default
///   [`DEFAULT_NEGATIVE_TTL`]), so repeated reads of a missing row do not reach the source. The cache
///   therefore stores `Option<V>`: give it a `Backend<Option<V>>` (any serde type works with Redis).
/// - **TTL jitter** and tags come from the [`EntryOptions`]; any call can bring its own options.
/// - **Single-flight** is on by default; a distributed lock and XFetch early expiry are opt-in.
/// - **Invalidation wins**: once [`delete`](Self::delete) or [`set`](Self::set) returns, no load
///   that started earlier in this process stores an older value.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use layercache_core::{EntryOptions, Key, loader_fn};
/// use layercache_moka::MokaBackend;
/// use layercache_strategy::CacheAside;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let backend = MokaBackend::<Option<String>>::builder().build()?;
/// let cache = CacheAside::builder(Arc::new(backend))
///     .options(EntryOptions::new(Duration::from_secs(60)).with_jitter(Duration::from_secs(5)))
///     .negative_ttl(Duration::from_secs(5))
///     .build()?;
/// let users = Arc::new(loader_fn(|key: Key| async move {
///     Ok((key.as_str() == "user:1").then(|| "Ada".to_owned()))
/// }));
/// assert_eq!(cache.get_or_load(&Key::new("user:1")?, &users).await?.as_deref(), Some("Ada"));
/// assert_eq!(cache.get_or_load(&Key::new("user:2")?, &users).await?, None); // cached as absent
/// assert_eq!(cache.get(&Key::new("user:1")?).await?.as_deref(), Some("Ada"));
/// # Ok::<(), layercache_core::Error>(())
/// # }).unwrap();
/// ```
pub struct CacheAside<V> {
    guarded: GuardedCache<Option<V>>,
    options: EntryOptions,
    cache_negatives: bool,
    clock: SharedClock,
}

impl<V> Clone for CacheAside<V> {
    fn clone(&self) -> Self {
        CacheAside {
            guarded: self.guarded.clone(),
            options: self.options.clone(),
            cache_negatives: self.cache_negatives,
            clock: Arc::clone(&self.clock),
        }
    }
}

impl<V> fmt::Debug for CacheAside<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheAside")
            .field("guarded", &self.guarded)
            .field("options", &self.options)
            .field("cache_negatives", &self.cache_negatives)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> CacheAside<V> {
    /// A builder over `backend`, with single-flight and negative caching on.
    pub fn builder(backend: Arc<dyn Backend<Option<V>>>) -> CacheAsideBuilder<V> {
        CacheAsideBuilder {
            backend,
            options: EntryOptions::default(),
            negative: Some(EntryOptions::new(DEFAULT_NEGATIVE_TTL)),
            clock: Arc::new(SystemClock),
            single_flight: true,
            lock: None,
            early: None,
            configure: None,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend<Option<V>>> {
        self.guarded.backend()
    }

    /// The guarded cache underneath (its counters, its write lock).
    pub fn guarded(&self) -> &GuardedCache<Option<V>> {
        &self.guarded
    }

    /// The counters so far.
    pub fn stats(&self) -> GuardedStats {
        self.guarded.stats()
    }

    /// The cached value of `key` if it is fresh; `None` on a miss, a stale entry or a cached
    /// absence. Backend errors are returned (nothing is loaded here).
    pub async fn get(&self, key: &Key) -> Result<Option<V>> {
        let entry = self.backend().get(key).await?;
        Ok(entry
            .filter(|e| e.meta.is_fresh(self.clock.now()))
            .and_then(|e| e.value))
    }

    /// Stores `value` under `key` with the cache's options. Loads of `key` that started earlier
    /// will not overwrite it.
    pub async fn set(&self, key: &Key, value: V) -> Result<()> {
        self.set_with(key, value, &self.options).await
    }

    /// Stores `value` under `key` with `options`.
    pub async fn set_with(&self, key: &Key, value: V, options: &EntryOptions) -> Result<()> {
        let entry = options.entry(Some(value), self.clock.now(), Duration::ZERO)?;
        let guard = self.guarded.write_lock(key).await;
        guard.invalidate_loads();
        self.backend().set(key, entry).await
    }

    /// Removes `key`; `true` when it was cached. Loads of `key` that started earlier will not put
    /// their value back.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        self.guarded.invalidate(key).await
    }

    /// The value of `key`: cached when fresh, else loaded with `loader` and stored. A cache failure
    /// never fails the call (the value comes from the loader); a loader failure does.
    pub async fn get_or_load<L>(&self, key: &Key, loader: &Arc<L>) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let value = self
            .guarded
            .get_or_load_lazy(key, None, || Arc::new(AbsentAsValue(Arc::clone(loader))))
            .await?;
        Ok(value.flatten())
    }

    /// [`get_or_load`](Self::get_or_load) with options for this call (negative entries keep the
    /// negative options).
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
        let value = self
            .guarded
            .get_or_load_lazy(key, Some(options), || {
                Arc::new(AbsentAsValue(Arc::clone(loader)))
            })
            .await?;
        Ok(value.flatten())
    }

    /// Whether absences are cached.
    pub fn caches_negatives(&self) -> bool {
        self.cache_negatives
    }

    /// The entry options of cached values.
    pub fn options(&self) -> &EntryOptions {
        &self.options
    }

    pub(crate) fn clock(&self) -> &SharedClock {
        &self.clock
    }
}
