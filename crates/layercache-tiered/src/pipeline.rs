//! The one loader pipeline: what a read does when L1 has no fresh value, as ordered layers.
//!
//! Outermost first (the order is behaviour):
//!
//! 1. **Hit** ([`Runtime::on_hit`]): a fresh value is served at once; if it is due for a refresh
//!    (eager refresh at a fraction of its TTL, or XFetch), one background refresh of the key
//!    starts (a flight of its own), and the caller still gets the current value.
//! 2. **Stale-while-revalidate**: a stale value is served at once while one refresh runs.
//! 3. **Single-flight**: of the callers that miss together, one leads; the rest wait for its
//!    outcome (a caller holding a stale value waits at most the soft timeout, then gets it).
//! 4. The leader's work ([`Runtime::lead`]), in the leading caller's task (handed to a task of
//!    its own only if that caller goes away first: cancellation-safe):
//!    a. take a [`Ticket`](layercache_core::Ticket) in the version table, read L2 (another
//!    process may have it), and, before loading, L1 again (a flight that landed after the caller
//!    looked may have stored there, its L2 write still on the way);
//!    b. **distributed lock** (optional): one process loads, the others poll L2 for its value;
//!    c. **hard timeout** around the loader, its duration measured (XFetch's delta);
//!    d. **fail-safe**: a failed or timed-out load serves the stale value, kept fresh for the
//!    throttle so the source rests;
//!    e. **store** through the ticket: dropped if a write, delete or clear of the key began since.
//!
//! The wrong order costs: a lock outside single-flight makes every caller of a process poll Redis;
//! a refresh outside single-flight starts one load per lucky reader; a store without the ticket
//! lets a slow load undo an invalidation.

use std::sync::Arc;
use std::time::Instant;

use layercache_core::{EntryMeta, EntryOptions, Error, Key, Result, Ticket, Timestamp};
use layercache_stampede::{DistributedLock, EarlyExpiry, Joined, OnLockTimeout, SingleFlight};

use crate::latency::GetOutcome;
use crate::loaded::LoadFn;
use crate::tiers::{Landing, Stored, Tiers};

/// Where a flight's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A fresh value a tier held (L1 after another flight landed, L2, another process's load).
    Cached,
    /// The loader.
    Loaded,
    /// A stale value (fail-safe, soft timeout, lock timeout).
    Stale,
}

/// What a flight hands its callers: the value and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct Served<V> {
    pub(crate) value: Option<V>,
    pub(crate) origin: Origin,
}

impl<V> Served<V> {
    pub(crate) fn cached(value: Option<V>) -> Self {
        Served {
            value,
            origin: Origin::Cached,
        }
    }

    pub(crate) fn loaded(value: Option<V>) -> Self {
        Served {
            value,
            origin: Origin::Loaded,
        }
    }

    pub(crate) fn stale(value: Option<V>) -> Self {
        Served {
            value,
            origin: Origin::Stale,
        }
    }

    /// What the read that got this ended with, for its latency histogram.
    pub(crate) fn outcome(&self, led: bool) -> GetOutcome {
        match (self.origin, led) {
            (Origin::Stale, _) => GetOutcome::Stale,
            (_, false) => GetOutcome::Coalesced,
            (Origin::Cached, true) => GetOutcome::Hit,
            (Origin::Loaded, true) => GetOutcome::Loaded,
        }
    }

    /// Counts the read that got this: a hit, a miss (it led the load), coalesced (it waited for
    /// another caller's flight) or stale served.
    pub(crate) fn count(&self, led: bool, counters: &crate::stats::Counters) {
        match (self.origin, led) {
            (Origin::Stale, _) => counters.bump_stale_served(),
            (_, false) => counters.bump_coalesced(),
            (Origin::Cached, true) => counters.bump_hits(),
            (Origin::Loaded, true) => counters.bump_misses(),
        }
    }
}

/// The one owner of a cache's state: its tiers (and their version table), its flights and guards,
/// its default options.
pub(crate) struct Runtime<V> {
    pub(crate) tiers: Tiers<V>,
    pub(crate) flights: SingleFlight<Served<V>>,
    pub(crate) lock: Option<DistributedLock>,
    pub(crate) early: Option<EarlyExpiry>,
    pub(crate) options: EntryOptions,
    pub(crate) negative: Option<EntryOptions>,
    /// The invalidation transport's side, when one is configured.
    pub(crate) coherence: Option<crate::coherence::Coherence>,
}

/// Runs `future` for at most `limit` (`Duration::MAX`: no bound).
pub(crate) async fn bounded<T>(
    limit: std::time::Duration,
    future: impl Future<Output = Result<T>>,
    what: impl FnOnce() -> String,
) -> Result<T> {
    match tokio::time::Instant::now().checked_add(limit) {
        Some(deadline) if limit != std::time::Duration::MAX => {
            match tokio::time::timeout_at(deadline, future).await {
                Ok(result) => result,
                Err(_) => Err(Error::timeout(format!("{} exceeded {limit:?}", what()))),
            }
        }
        _ => future.await,
    }
}

/// Frees a distributed lock; a failure leaves it to expire with its lease.
async fn release(guard: layercache_stampede::LockGuard, key: &Key) {
    if let Err(error) = guard.release().await {
        tracing::warn!(%key, %error, "could not release a lock; it expires with its lease");
    }
}

/// Whether `entry` was created after `than` (the creation of a value already seen), if any.
fn newer(entry: &Stored<impl Sized>, than: Option<Timestamp>) -> bool {
    than.is_none_or(|seen| entry.meta.created_at > seen)
}

impl<V: Clone + Send + Sync + 'static> Runtime<V> {
    pub(crate) fn now(&self) -> Timestamp {
        self.tiers.clock.now()
    }

    /// The time for a decision that stores nothing: whether an L1 entry is fresh, due for a
    /// refresh or still servable as stale ([`Clock::now_for_reads`](layercache_core::Clock::now_for_reads):
    /// the system clock answers it from the CPU's counter, in a third of the time).
    pub(crate) fn now_for_reads(&self) -> Timestamp {
        self.tiers.clock.now_for_reads()
    }

    /// Whether a fresh entry is due for a background refresh.
    fn refresh_due(&self, options: &EntryOptions, meta: &EntryMeta, now: Timestamp) -> bool {
        let eager = options.eager_refresh().is_some_and(|fraction| {
            let ttl = meta.fresh_until.saturating_since(meta.created_at);
            now >= meta.created_at + ttl.mul_f64(fraction)
        });
        eager
            || self
                .early
                .as_ref()
                .is_some_and(|early| early.should_refresh(meta, now))
    }

    /// The hit layer, for a fresh `entry` about to be served: starts a background refresh when one
    /// is due. `make_load` runs only when a refresh starts.
    pub(crate) fn on_hit<L: LoadFn<V>>(
        self: &Arc<Self>,
        key: &Key,
        entry: &Stored<V>,
        options: &EntryOptions,
        now: Timestamp,
        make_load: impl FnOnce() -> L,
    ) {
        if self.refresh_due(options, &entry.meta, now) && !self.flights.is_in_flight(key) {
            self.spawn_refresh(key, entry, options, make_load);
        }
    }

    /// Starts one background refresh of `key` unless a flight of it runs; the refresh wants a
    /// value newer than `seen` and serves nothing older.
    fn spawn_refresh<L: LoadFn<V>>(
        self: &Arc<Self>,
        key: &Key,
        seen: &Stored<V>,
        options: &EntryOptions,
        make_load: impl FnOnce() -> L,
    ) {
        let started = self.flights.spawn_if_idle(key, || {
            Arc::clone(self).lead(
                key.clone(),
                options.clone(),
                Some(seen.clone()),
                make_load(),
            )
        });
        if started {
            self.tiers.counters.bump_refreshes();
        }
    }

    /// Layers 2 and 3: a read that found no fresh value in L1 at `now` (`previous` is what it
    /// found); `started`: when the read began, for its latency histogram.
    pub(crate) async fn miss<L: LoadFn<V>>(
        self: &Arc<Self>,
        key: &Key,
        options: &EntryOptions,
        previous: Option<Stored<V>>,
        (now, started): (Timestamp, Option<Instant>),
        make_load: impl FnOnce() -> L,
    ) -> Result<Option<V>> {
        let counters = &self.tiers.counters;
        let latency = &self.tiers.latency;
        let stale = previous.filter(|p| !p.meta.is_expired(now));
        if let Some(stale) = &stale
            && options.stale_while_revalidate()
        {
            self.spawn_refresh(key, stale, options, make_load);
            counters.bump_stale_served();
            latency.get(started, GetOutcome::Stale);
            return Ok(stale.value.clone());
        }
        let joined = self.flights.join_or_lead(key, || {
            Arc::clone(self).lead(key.clone(), options.clone(), stale.clone(), make_load())
        });
        let led = matches!(joined, Joined::Led(_));
        let outcome = async {
            match joined {
                Joined::Led(leading) => leading.await,
                Joined::Joined(waiter) => self.flights.wait(key, waiter).await,
            }
        };
        let outcome = match (options.soft_timeout(), &stale) {
            // Only this caller stops waiting: the flight goes on (in a task of its own, if this
            // caller led it) and fills the cache.
            (Some(soft), Some(stale)) => match tokio::time::timeout(soft, outcome).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    counters.bump_soft_timeouts();
                    Ok(Served::stale(stale.value.clone()))
                }
            },
            _ => outcome.await,
        };
        let served = match outcome {
            Ok(served) => served,
            Err(error) => {
                latency.get(started, GetOutcome::Error);
                return Err(error);
            }
        };
        served.count(led, counters);
        latency.get(started, served.outcome(led));
        Ok(served.value)
    }

    /// Layer 4: the leader's work (a flight).
    pub(crate) async fn lead(
        self: Arc<Self>,
        key: Key,
        options: EntryOptions,
        mut previous: Option<Stored<V>>,
        load: impl LoadFn<V>,
    ) -> Result<Served<V>> {
        // The flight's future is boxed once per miss: what it holds across an await is kept
        // small (no second copy of `previous`, only the moment a seen value was created).
        let ticket = self.tiers.versions.begin(&key);
        let seen = previous.as_ref().map(|p| p.meta.created_at);
        if let Some(entry) = self.tiers.l2_entry(&key).await {
            let now = self.now();
            if entry.meta.is_fresh(now) && newer(&entry, seen) {
                self.tiers.refill_last(ticket, &entry, now);
                return Ok(Served::cached(entry.value));
            }
            if !entry.meta.is_expired(now)
                && newer(&entry, previous.as_ref().map(|p| p.meta.created_at))
            {
                previous = Some(entry);
            }
        }
        // A flight that landed after the caller missed L1 stored its value there, and its L2 write
        // may still be on the way: look again before asking the source. L1 is read a second time
        // only before a load, never on the way to an L2 hit.
        let now = self.now();
        if let Some(entry) = self.tiers.l1_entry_at(&key, now)
            && entry.meta.is_fresh(now)
            && newer(&entry, seen)
        {
            return Ok(Served::cached(entry.value));
        }
        // Boxed: a load is rare next to an L2 hit, and the flight's future stays small enough
        // for the allocator's fast path.
        match &self.lock {
            Some(lock) => Box::pin(self.locked_load(lock, &ticket, &options, previous, load)).await,
            None => {
                Box::pin(self.load(&ticket, &options, previous, load, false))
                    .await
                    .0
            }
        }
    }

    /// Layer 4b: one process loads, the others poll L2 for its value, at most the lock's wait.
    async fn locked_load(
        &self,
        lock: &DistributedLock,
        ticket: &Ticket,
        options: &EntryOptions,
        previous: Option<Stored<V>>,
        load: impl LoadFn<V>,
    ) -> Result<Served<V>> {
        let key = ticket.key();
        let counters = &self.tiers.counters;
        let max_wait = lock.options().max_wait;
        let deadline = tokio::time::Instant::now().checked_add(max_wait);
        let mut backoff = lock.backoff();
        let seen = previous.as_ref().map(|p| p.meta.created_at);
        let fresh_in_l2 = || async {
            let entry = self.tiers.l2_entry(key).await?;
            (entry.meta.is_fresh(self.now()) && newer(&entry, seen)).then_some(entry)
        };
        loop {
            match lock.try_lock(key).await {
                Ok(Some(guard)) => {
                    // The previous holder may have stored its value just before we took the lock.
                    let (served, landing) = match fresh_in_l2().await {
                        Some(entry) => {
                            self.tiers.refill(ticket, &entry, self.now());
                            (Ok(Served::cached(entry.value)), None)
                        }
                        None => self.load(ticket, options, previous, load, true).await,
                    };
                    match landing {
                        // The lock is freed once the value is in L2, where the processes waiting
                        // for it look: freed sooner, one of them would take it, miss L2 and load
                        // again. The caller does not wait for that.
                        Some(landing) => {
                            let key = key.clone();
                            tokio::spawn(async move {
                                landing.wait(&key).await;
                                release(guard, &key).await;
                            });
                        }
                        None => release(guard, key).await,
                    }
                    return served;
                }
                Ok(None) => {}
                Err(error) => {
                    counters.bump_lock_errors();
                    tracing::warn!(%key, %error, "the lock store failed");
                    let policy = lock.options().on_error;
                    return self
                        .without_lock(policy, error, ticket, options, previous, load)
                        .await;
                }
            }
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                counters.bump_lock_timeouts();
                let policy = lock.options().on_timeout;
                let error = Error::lock(format!(
                    "waited {max_wait:?} for another process to load {key}"
                ));
                return self
                    .without_lock(policy, error, ticket, options, previous, load)
                    .await;
            }
            let pause = backoff.next_pause();
            let pause = deadline.map_or(pause, |deadline| pause.min(deadline - now));
            tokio::time::sleep(pause).await;
            if let Some(entry) = fresh_in_l2().await {
                counters.bump_lock_waits_served();
                self.tiers.refill(ticket, &entry, self.now());
                return Ok(Served::cached(entry.value));
            }
        }
    }

    /// When the lock cannot help (its wait ran out, or its store failed with `error`): load
    /// anyway, serve the stale value, or fail, as `policy` says.
    async fn without_lock(
        &self,
        policy: OnLockTimeout,
        error: Error,
        ticket: &Ticket,
        options: &EntryOptions,
        previous: Option<Stored<V>>,
        load: impl LoadFn<V>,
    ) -> Result<Served<V>> {
        let servable = previous.as_ref().filter(|p| !p.meta.is_expired(self.now()));
        match (policy, servable) {
            (OnLockTimeout::ServeStale | OnLockTimeout::Fail, Some(servable)) => {
                Ok(Served::stale(servable.value.clone()))
            }
            (OnLockTimeout::Fail, None) => Err(error),
            _ => self.load(ticket, options, previous, load, false).await.0,
        }
    }

    /// Layers 4c–4e: the loader under the hard timeout, fail-safe, and the store. With `track`,
    /// the L2 store of a loaded value comes back as a [`Landing`] (see [`Tiers::store_tracked`]).
    async fn load(
        &self,
        ticket: &Ticket,
        options: &EntryOptions,
        previous: Option<Stored<V>>,
        load: impl LoadFn<V>,
        track: bool,
    ) -> (Result<Served<V>>, Option<Landing>) {
        let key = ticket.key();
        let counters = &self.tiers.counters;
        counters.bump_loads();
        let (began, started) = (self.now(), Instant::now());
        let loaded = bounded(options.hard_timeout(), load.load(key.clone()), || {
            format!("loading {key}")
        })
        .await;
        self.tiers.latency.load_result(started, &loaded);
        match loaded {
            Ok(loaded) => {
                let (value, own_options) = loaded.into_parts();
                let mut landing = None;
                if let Some(entry) = self.entry_for(
                    key,
                    value.clone(),
                    own_options.as_ref(),
                    options,
                    (began, started),
                ) {
                    landing = self.tiers.store_tracked(ticket, entry, track).await;
                }
                (Ok(Served::loaded(value)), landing)
            }
            Err(error) => {
                counters.bump_load_errors();
                if error.kind() == layercache_core::ErrorKind::Timeout {
                    counters.bump_hard_timeouts();
                }
                (self.fail_safe(ticket, options, previous, error).await, None)
            }
        }
    }

    /// Layer 4d: serve a stale value instead of a failed load, when fail-safe allows.
    async fn fail_safe(
        &self,
        ticket: &Ticket,
        options: &EntryOptions,
        previous: Option<Stored<V>>,
        error: Error,
    ) -> Result<Served<V>> {
        match self.fail_safe_entry(options, previous.as_ref()) {
            Some(entry) => {
                tracing::warn!(key = %ticket.key(), %error, "the load failed; serving the stale value (fail-safe)");
                let value = entry.value.clone();
                self.tiers.store(ticket, entry).await;
                Ok(Served::stale(value))
            }
            None => Err(error),
        }
    }

    /// The entry to store for a loaded value: the loader's own options, else the negative
    /// options for an absence (none: absences are not cached), else the call's. `None` when
    /// nothing is to be stored. `began`: when the load began (by the cache's clock and a
    /// monotonic one). The entry is created then — its value is the source's as of that moment —
    /// so an invalidation made after the load began is newer than the entry, in every tier and
    /// every process (ADR 0012).
    pub(crate) fn entry_for(
        &self,
        key: &Key,
        value: Option<V>,
        own: Option<&EntryOptions>,
        call: &EntryOptions,
        began: (Timestamp, Instant),
    ) -> Option<Stored<V>> {
        let (began, started) = began;
        let options = match (own, &value) {
            (Some(own), _) => own,
            (None, Some(_)) => call,
            (None, None) => self.negative.as_ref()?,
        };
        match options.entry(value, self.now(), started.elapsed()) {
            Ok(mut entry) => {
                entry.meta.created_at = entry.meta.created_at.min(began);
                Some(entry)
            }
            Err(error) => {
                tracing::warn!(%key, %error, "invalid options for a loaded value; served, not cached");
                None
            }
        }
    }

    /// Fail-safe's entry: `previous`, still servable, kept fresh for the throttle.
    pub(crate) fn fail_safe_entry(
        &self,
        options: &EntryOptions,
        previous: Option<&Stored<V>>,
    ) -> Option<Stored<V>> {
        let now = self.now();
        let throttle = options.fail_safe()?;
        let previous = previous.filter(|p| !p.meta.is_expired(now))?;
        let mut entry = previous.clone();
        entry.meta.fresh_until = (now + throttle).min(entry.meta.stale_until);
        Some(entry)
    }
}
