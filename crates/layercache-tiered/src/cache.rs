//! `TieredCache`: the one cache type, and its public API.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache_core::{EntryOptions, Error, Invalidation, Key, Loader, Namespace, Result, Ticket};

use crate::builder::TieredCacheBuilder;
use crate::bulk::{DEFAULT_WARM_BATCH, DEFAULT_WARM_CONCURRENCY, WarmOutcome, WarmReport};
use crate::circuit::CircuitState;
use crate::loaded::{Loaded, from_closure, from_loader};
use crate::pipeline::Runtime;
use crate::stats::TieredStats;

/// The default bound on how long [`TieredCache::shutdown`] waits for pending L2 writes (10 s).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the L2's own counters come from.
pub(crate) enum L2Stats {
    None,
    #[cfg(feature = "redis")]
    Redis(Box<layercache_redis::RedisBackend>),
}

/// A two-tier cache: L1 (moka, in process) over L2 (Redis or any [`Backend`](layercache_core::Backend),
/// shared), with stampede guards, negative caching, fail-safe, timeouts, background refresh, bulk
/// reads, warm-up and metrics — and one owner of each key's state.
///
/// Build it with [`TieredCache::builder`]: L1 alone, L2 alone, or both. Cloning is cheap and shares
/// the cache.
///
/// # Reads
///
/// [`get_or_load`](Self::get_or_load) takes the key and a closure that loads it from the source
/// (`Ok(None)`: the source has no such row, cached briefly as an absence). The layers a read goes
/// through, in order, are documented in the crate docs; what a caller sees:
/// - a fresh value is served from L1 (no future, no encoding) or L2;
/// - concurrent misses of a key share one load (and one process loads for all, with the
///   distributed lock); a caller that joined gets the same value or error;
/// - a load is bounded by the hard timeout (default 10 s); fail-safe, soft timeouts and
///   stale-while-revalidate serve a stale value instead of waiting or failing;
/// - a loader error comes back as a `Loader` [`Error`] whose [`source_as`](Error::source_as)
///   gives the loader's own error.
///
/// # Writes and invalidation
///
/// Every write ([`set`](Self::set), [`delete`](Self::delete), [`delete_many`](Self::delete_many),
/// [`clear`](Self::clear)) returns once L2 has it, or returns the L2 error (a failed delete is then
/// retried in the background until it lands). **Invalidation wins**: once a write returns, no load
/// of this process that started before it stores an older value in any tier. L2 writes are ordered
/// per key and sent concurrently across keys.
pub struct TieredCache<V> {
    pub(crate) runtime: Arc<Runtime<V>>,
    name: Arc<str>,
    l2_stats: Arc<L2Stats>,
}

impl<V> Clone for TieredCache<V> {
    fn clone(&self) -> Self {
        TieredCache {
            runtime: Arc::clone(&self.runtime),
            name: Arc::clone(&self.name),
            l2_stats: Arc::clone(&self.l2_stats),
        }
    }
}

impl<V> fmt::Debug for TieredCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("name", &self.name)
            .field("tiers", &self.runtime.tiers)
            .finish()
    }
}

/// A write-through's claim on a key, taken before the source write; see
/// [`TieredCache::begin_write`].
#[derive(Debug)]
pub struct WriteIntent(Ticket);

impl<V: Clone + Send + Sync + 'static> TieredCache<V> {
    /// A builder: L1 on (10,000 entries, 60 s cap), no L2, 5-minute TTL, hard timeout 10 s,
    /// absences cached 10 s, single-flight on; everything else off.
    pub fn builder() -> TieredCacheBuilder<V> {
        TieredCacheBuilder::new()
    }

    pub(crate) fn from_runtime(
        runtime: Runtime<V>,
        name: String,
        l2_stats: L2Stats,
    ) -> Result<Self> {
        let runtime = Arc::new(runtime);
        if let Some(coherence) = &runtime.coherence {
            let sink: std::sync::Weak<dyn layercache_core::InvalidationSink> =
                Arc::downgrade(&runtime) as _;
            coherence.transport.attach(coherence.origin, sink)?;
        }
        Ok(TieredCache {
            runtime,
            name: name.into(),
            l2_stats: Arc::new(l2_stats),
        })
    }

    /// Tells the other instances (when a transport is configured).
    async fn publish(&self, item: Invalidation) {
        if let Some(coherence) = &self.runtime.coherence {
            coherence.publish(item).await;
        }
    }

    /// The value of `key`: L1, then L2, then `load` (coalesced with concurrent loads of the key,
    /// stored in both tiers), with the cache's options.
    ///
    /// `load` returns the value (`None`: absent at the source) or a [`Loaded`] that carries its
    /// own entry options; its error may be any error type, handed back through
    /// [`Error::source_as`]. It runs only on a miss or a background refresh.
    pub async fn get_or_load<F, Fut, T, E>(&self, key: &Key, load: F) -> Result<Option<V>>
    where
        F: FnOnce(Key) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        T: Into<Loaded<V>> + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
    {
        let options = &self.runtime.options;
        self.read(key, options, move || from_closure(load)).await
    }

    /// [`get_or_load`](Self::get_or_load) with entry options for this call (TTL, stale period,
    /// tags, timeouts, fail-safe, refresh). Invalid options are a `Config` error.
    pub async fn get_or_load_with<F, Fut, T, E>(
        &self,
        key: &Key,
        options: &EntryOptions,
        load: F,
    ) -> Result<Option<V>>
    where
        F: FnOnce(Key) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        T: Into<Loaded<V>> + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
    {
        options.validate()?;
        self.read(key, options, move || from_closure(load)).await
    }

    /// [`get_or_load`](Self::get_or_load) with a reusable [`Loader`].
    pub async fn get_or_load_from<L>(&self, key: &Key, loader: &Arc<L>) -> Result<Option<V>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        self.read(key, &self.runtime.options, || {
            from_loader(Arc::clone(loader))
        })
        .await
    }

    async fn read<L: crate::loaded::LoadFn<V>>(
        &self,
        key: &Key,
        options: &EntryOptions,
        make_load: impl FnOnce() -> L,
    ) -> Result<Option<V>> {
        let runtime = &self.runtime;
        let tiers = &runtime.tiers;
        let started = tiers.latency.start_read();
        // Only decides what to serve (fresh, stale, refresh due); what is stored reads `now()`.
        let now = runtime.now_for_reads();
        let previous = match tiers.l1_entry_at(key, now) {
            Some(entry) if entry.meta.is_fresh(now) => {
                tiers.counters.bump_l1_hits();
                runtime.on_hit(key, &entry, options, now, make_load);
                tiers.latency.l1_hit(started);
                return Ok(entry.value);
            }
            found => {
                if tiers.l1.is_some() {
                    tiers.counters.bump_l1_misses();
                }
                found
            }
        };
        let started = tiers.latency.l1_miss(started, tiers.l1.is_some());
        // Not boxed: an allocation per miss costs more than a larger future.
        runtime
            .miss(key, options, previous, (now, started), make_load)
            .await
    }

    /// The values of `keys`, in order: L1, then one L2 MGET for the L1 misses, then one
    /// `load_many` for the rest — each key coalesced with concurrent loads of it, under the same
    /// timeouts, fail-safe and refresh as [`get_or_load`](Self::get_or_load). The first key that
    /// failed fails the call.
    pub async fn get_many<L>(&self, keys: &[Key], loader: &Arc<L>) -> Result<Vec<Option<V>>>
    where
        L: Loader<V> + ?Sized + 'static,
    {
        self.runtime
            .get_many_each(keys, &self.runtime.options, loader)
            .await
            .into_iter()
            .collect()
    }

    /// Loads `keys` into both tiers (what is cached and fresh is kept), [`DEFAULT_WARM_BATCH`]
    /// keys per `load_many`, [`DEFAULT_WARM_CONCURRENCY`] batches at a time, and reports per key.
    pub async fn warm<L>(&self, keys: &[Key], loader: &Arc<L>) -> WarmReport
    where
        L: Loader<V> + ?Sized + 'static,
    {
        let mut items = Vec::with_capacity(keys.len());
        for wave in keys.chunks(DEFAULT_WARM_BATCH * DEFAULT_WARM_CONCURRENCY) {
            let mut batches = tokio::task::JoinSet::new();
            for (index, batch) in wave.chunks(DEFAULT_WARM_BATCH).enumerate() {
                let (runtime, loader, batch) = (
                    Arc::clone(&self.runtime),
                    Arc::clone(loader),
                    batch.to_vec(),
                );
                batches.spawn(async move {
                    let results = runtime
                        .get_many_each(&batch, &runtime.options, &loader)
                        .await;
                    (index, batch, results)
                });
            }
            let mut done = Vec::new();
            while let Some(joined) = batches.join_next().await {
                match joined {
                    Ok(batch) => done.push(batch),
                    Err(error) => tracing::warn!(%error, "a warm-up batch panicked"),
                }
            }
            done.sort_by_key(|(index, _, _)| *index);
            for (_, batch, results) in done {
                for (key, result) in batch.into_iter().zip(results) {
                    let outcome = match result {
                        Ok(Some(_)) => WarmOutcome::Loaded,
                        Ok(None) => WarmOutcome::Absent,
                        Err(error) => WarmOutcome::Failed(error),
                    };
                    items.push((key, outcome));
                }
            }
        }
        // A panicked batch leaves its keys out; report them as failed rather than lose them.
        if items.len() < keys.len() {
            let reported: std::collections::HashSet<Key> =
                items.iter().map(|(k, _)| k.clone()).collect();
            for key in keys.iter().filter(|k| !reported.contains(*k)) {
                items.push((
                    key.clone(),
                    WarmOutcome::Failed(Error::loader("the warm-up batch panicked")),
                ));
            }
        }
        WarmReport { items }
    }

    /// The cached value of `key` if fresh (L1, then L2), without loading; `None` on a miss, a
    /// stale entry or a cached absence.
    pub async fn get(&self, key: &Key) -> Result<Option<V>> {
        let tiers = &self.runtime.tiers;
        let now = self.runtime.now_for_reads();
        // A peek, not a read: it is not counted among hits and misses (L2's own counters count
        // its L2 call).
        if let Some(entry) = tiers.l1_entry_at(key, now).filter(|e| e.meta.is_fresh(now)) {
            return Ok(entry.value);
        }
        let ticket = tiers.versions.begin(key);
        let found = tiers.l2_entry(key).await;
        let now = self.runtime.now();
        match found {
            Some(entry) if entry.meta.is_fresh(now) => {
                tiers.refill_last(ticket, &entry, now);
                Ok(entry.value)
            }
            _ => Ok(None),
        }
    }

    /// Stores `value` under `key` in both tiers with the cache's options; returns once L2 has it.
    /// Loads of `key` that started earlier will not overwrite it.
    pub async fn set(&self, key: &Key, value: V) -> Result<()> {
        self.set_with(key, value, &self.runtime.options).await
    }

    /// [`set`](Self::set) with entry options for this value.
    pub async fn set_with(&self, key: &Key, value: V, options: &EntryOptions) -> Result<()> {
        let entry = options.entry(Some(value), self.runtime.now(), Duration::ZERO)?;
        self.write_entry(key, Some(entry)).await.map(|_| ())
    }

    /// Removes `key` from both tiers; returns once L2 has it (`true` when a tier held it). Loads
    /// that started earlier will not put it back. If L2 could not be reached the error is
    /// returned, and the delete is retried in the background until it lands.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        self.write_entry(key, None).await
    }

    /// Removes `keys` (concurrently, each ordered with the other writes of its key); returns how
    /// many a tier held, or the first L2 error (those deletes are retried in the background).
    pub async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        let mut deletes = tokio::task::JoinSet::new();
        for key in keys {
            let (cache, key) = (self.clone(), key.clone());
            deletes.spawn(async move { cache.delete(&key).await });
        }
        let mut removed = 0;
        let mut first_error = None;
        while let Some(joined) = deletes.join_next().await {
            match joined {
                Ok(Ok(was)) => removed += u64::from(was),
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(error) => {
                    first_error.get_or_insert(
                        Error::unavailable("a delete task failed").with_source(error),
                    );
                }
            }
        }
        first_error.map_or(Ok(removed), Err)
    }

    /// Removes every key of `namespace` from both tiers (a SCAN + UNLINK on Redis); loads of its
    /// keys that began before or during the clear will not store. Returns how many keys a tier
    /// held, or the L2 error.
    pub async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        let flights = &self.runtime.flights;
        let at = self.runtime.now();
        // Loads of other instances that began before may store in L2 after the clear's scan:
        // entries made before `at` are dead to every instance that knows of it.
        self.runtime.tiers.epochs.namespace(namespace, at);
        flights.forget_where(|key| namespace.contains(key));
        let result = self.runtime.tiers.clear(namespace).await;
        flights.forget_where(|key| namespace.contains(key));
        self.publish(Invalidation::Namespace {
            namespace: namespace.clone(),
            at,
        })
        .await;
        self.runtime.pass(at).await;
        result
    }

    /// Invalidates every entry carrying `tag` (set with [`EntryOptions::with_tags`]), in L1, in L2
    /// and in the other instances' L1 (through the invalidation transport). Once it returns, no
    /// tier serves an entry with the tag made before the call, and no load that began before it
    /// stores one. Returns how many L2 entries the tag's index named (0 without one).
    ///
    /// Lazy and eager at once: the tag's invalidation time is kept (each instance checks entries
    /// against it on read, which works on Redis Cluster with no cross-slot script), and L2's tag
    /// index, when it keeps one (Redis does), removes the tagged keys now.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        let runtime = &self.runtime;
        let tiers = &runtime.tiers;
        let at = runtime.now();
        let item = Invalidation::Tag {
            tag: tag.into(),
            at,
        };
        runtime.invalidate_here(&item);
        tiers.counters.bump_tags_invalidated();
        let result = match &tiers.l2 {
            Some(l2) => {
                tiers
                    .breaker
                    .call(&tiers.counters, l2.invalidate_tag(tag, at, tiers.window))
                    .await
            }
            None => Ok(0),
        };
        self.publish(item).await;
        runtime.pass(at).await;
        result.map_err(|error| error.context(format!("invalidating tag {tag} in L2")))
    }

    /// Waits until every pending L2 write has landed and every invalidation was published (at most
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`]); an `Unavailable` error says how many keys still had writes
    /// pending (logged too). Call it before the process exits.
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_within(DEFAULT_SHUTDOWN_TIMEOUT).await
    }

    /// [`shutdown`](Self::shutdown) with its own bound (`Duration::MAX`: none).
    pub async fn shutdown_within(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let pending = self.runtime.tiers.drain(timeout).await;
        let unpublished = match &self.runtime.coherence {
            Some(coherence) => {
                coherence
                    .drain(timeout.saturating_sub(started.elapsed()))
                    .await
            }
            None => 0,
        };
        if unpublished > 0 {
            tracing::warn!(unpublished, cache = %self.name, "shutdown with invalidations not yet published");
        }
        if pending == 0 && unpublished == 0 {
            return Ok(());
        }
        if pending == 0 {
            return Err(Error::unavailable(format!(
                "{unpublished} invalidations were still unpublished after {timeout:?}"
            )));
        }
        tracing::warn!(pending, waited = ?started.elapsed(), cache = %self.name, "shutdown with L2 writes still pending");
        Err(Error::unavailable(format!(
            "{pending} keys still had L2 writes pending after {timeout:?}"
        )))
    }

    /// Claims `key` for a write-through: take it before writing the source, then write the cache
    /// with [`set_after`](Self::set_after). Loads of the key that begin after the claim and read
    /// the source before it changed will not store.
    pub fn begin_write(&self, key: &Key) -> WriteIntent {
        WriteIntent(self.runtime.tiers.versions.begin(key))
    }

    /// The cache half of a write-through: stores `value` if no other write of the key began since
    /// `intent` was taken, else removes the key (the two writes raced at the source in an order
    /// the cache cannot know, so the next read loads the source's). `true` when it stored.
    pub async fn set_after(&self, intent: WriteIntent, value: Option<V>) -> Result<bool> {
        let entry = match value {
            Some(value) => {
                self.runtime
                    .options
                    .entry(Some(value), self.runtime.now(), Duration::ZERO)?
            }
            None => match &self.runtime.negative {
                Some(negative) => negative.entry(None, self.runtime.now(), Duration::ZERO)?,
                None => return self.write_after(intent, None).await,
            },
        };
        self.write_after(intent, Some(entry)).await
    }

    async fn write_after(
        &self,
        intent: WriteIntent,
        entry: Option<crate::tiers::Stored<V>>,
    ) -> Result<bool> {
        let key = intent.0.key().clone();
        self.runtime.flights.forget(&key);
        let result = self.runtime.tiers.write_after(&intent.0, entry).await;
        self.runtime.flights.forget(&key);
        self.publish(Invalidation::Key(key)).await;
        result
    }

    /// The cache as a [`Backend<V>`](layercache_core::Backend) (its L1 and L2 as one tier).
    pub fn as_backend(&self) -> crate::backend::TieredBackend<V> {
        crate::backend::TieredBackend(self.clone())
    }

    /// The entry of `key` that a tier holds (fresh or stale): L1, then L2 (refilling L1).
    pub(crate) async fn entry(&self, key: &Key) -> Option<crate::tiers::Stored<V>> {
        let tiers = &self.runtime.tiers;
        if let Some(entry) = tiers.l1_entry(key) {
            return Some(entry);
        }
        let ticket = tiers.versions.begin(key);
        let entry = tiers.l2_entry(key).await?;
        tiers.refill_last(ticket, &entry, self.runtime.now());
        Some(entry)
    }

    pub(crate) async fn write_entry(
        &self,
        key: &Key,
        entry: Option<crate::tiers::Stored<V>>,
    ) -> Result<bool> {
        // Callers arriving after the write must not join a load that began before it (or while it
        // landed): detach the key's flight at both ends; it runs on, but cannot store.
        self.runtime.flights.forget(key);
        let result = self.runtime.tiers.write(key, entry).await;
        self.runtime.flights.forget(key);
        self.publish(Invalidation::Key(key.clone())).await;
        result
    }

    /// The default entry options.
    pub fn options(&self) -> &EntryOptions {
        &self.runtime.options
    }

    /// The L2 circuit's state.
    pub fn circuit(&self) -> CircuitState {
        self.runtime.tiers.breaker.current()
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bookkeeping of work in flight: loads, keys in the version table, keys with L2 writes
    /// pending. All zero when the cache is idle.
    pub fn in_flight(&self) -> (usize, usize, usize) {
        let tiers = &self.runtime.tiers;
        (
            self.runtime.flights.stats().in_flight as usize,
            tiers.versions.tracked(),
            tiers.pending_writes(),
        )
    }

    /// The counters so far.
    pub fn stats(&self) -> TieredStats {
        let tiers = &self.runtime.tiers;
        let c = &tiers.counters;
        let l1 = tiers.l1.as_ref().map(layercache_moka::MokaBackend::stats);
        let decode_failures = match &*self.l2_stats {
            L2Stats::None => 0,
            #[cfg(feature = "redis")]
            L2Stats::Redis(redis) => redis.stats().decode_failures,
        };
        TieredStats {
            // L1 hits are counted once, as `l1_hits`: one atomic on the hit path.
            hits: c.hits() + c.l1_hits(),
            misses: c.misses(),
            coalesced: c.coalesced(),
            stale_served: c.stale_served(),
            l1_hits: c.l1_hits(),
            l1_misses: c.l1_misses(),
            l2_hits: c.l2_hits(),
            l2_misses: c.l2_misses(),
            l2_errors: c.l2_errors(),
            l2_skipped: c.l2_skipped(),
            l2_writes: c.l2_writes(),
            l2_write_failures: c.l2_write_failures(),
            l2_pending_writes: tiers.pending_writes() as u64,
            l2_pending_dropped: c.pending_dropped(),
            l2_decode_failures: decode_failures,
            circuit: tiers.breaker.current(),
            circuit_opened: tiers.breaker.times_opened(),
            loads: c.loads(),
            load_errors: c.load_errors(),
            hard_timeouts: c.hard_timeouts(),
            soft_timeouts: c.soft_timeouts(),
            refreshes: c.refreshes(),
            stores_skipped: c.stores_skipped(),
            lock_waits_served: c.lock_waits_served(),
            lock_timeouts: c.lock_timeouts(),
            lock_errors: c.lock_errors(),
            l2_stores_refused: c.l2_stores_refused(),
            invalidations_sent: c.invalidations_sent(),
            invalidations_received: c.invalidations_received(),
            invalidation_publish_failures: c.invalidation_publish_failures(),
            l1_flushes: c.l1_flushes(),
            tags_invalidated: c.tags_invalidated(),
            values_too_large: c.values_too_large(),
            evictions: l1.map_or(0, |s| s.evictions),
            l1_entries: l1.map_or(0, |s| s.entries),
        }
    }

    /// Publishes [`stats`](Self::stats) through the `metrics` facade, labelled with the cache's
    /// name: counters `layercache_<field>_total` and gauges for the pending L2 writes, the
    /// circuit (0 closed, 1 half-open, 2 open) and L1's size. Call it periodically.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        crate::stats::publish(&self.name, &self.stats());
    }
}
