//! The tiers of one cache and the only ways into them: every store and every write goes through
//! the per-key version table ([`Versions`]), so invalidation always wins.
//!
//! - Reads: [`Tiers::l1_entry`] (no future) and [`Tiers::l2_entry`] (through the circuit breaker;
//!   failures are counted and read as misses).
//! - Stores of what a load read or produced: [`Tiers::refill`] (an L2 hit into L1) and
//!   [`Tiers::store`] (a loaded value: L1 now, L2 through the key's lane), both under a [`Ticket`]
//!   taken before the read, so they are dropped when a write, delete or clear of the key began since.
//! - Writes: [`Tiers::write`] (set or delete), [`Tiers::write_after`] (write-through's conditional
//!   write) and [`Tiers::clear`]; each returns once L2 has it (or reports why not).

use std::sync::Arc;
use std::time::Duration;

use layercache_core::{
    Backend, Entry, Error, Key, Namespace, Result, SharedClock, Ticket, Timestamp, Versions,
    WriteTicket,
};
use layercache_moka::MokaBackend;
use tokio::sync::oneshot;

use crate::circuit::CircuitBreaker;
use crate::coherence::Epochs;
use crate::lanes::{L2Op, Lanes, Leftover, Queued};
use crate::latency::{L2Outcome, Latency};
use crate::stats::Counters;

/// What the tiers hold: `None` is a cached absence (negative caching).
pub(crate) type Stored<V> = Entry<Option<V>>;

/// How long a clear waits for the L2 writes of its namespace already under way.
const CLEAR_SETTLE: Duration = Duration::from_secs(5);

pub(crate) struct Tiers<V> {
    pub(crate) l1: Option<MokaBackend<Option<V>>>,
    pub(crate) l2: Option<Arc<dyn Backend<Option<V>>>>,
    lanes: Option<Arc<Lanes<V>>>,
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) versions: Arc<Versions>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) clock: SharedClock,
    /// When tags and namespaces were invalidated: L2 entries created at or before are dead.
    pub(crate) epochs: Epochs,
    /// How long a delete's tombstone in L2 refuses older loads' stores.
    pub(crate) window: Duration,
    /// The latency histograms (none until the builder registers them).
    pub(crate) latency: Latency,
}

impl<V> std::fmt::Debug for Tiers<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiers")
            .field("l1", &self.l1.is_some())
            .field("l2", &self.l2)
            .field("circuit", &self.breaker.current())
            .finish()
    }
}

/// An L2 store of a loaded value under way in the background; see [`Tiers::store_tracked`].
pub(crate) struct Landing(oneshot::Receiver<Result<bool>>);

impl Landing {
    /// Waits until the store is done (or failed: a failure is only logged — the value was
    /// served, and the lane retries or gives up within its bounds).
    pub(crate) async fn wait(self, key: &Key) {
        if let Err(error) = landed(self.0).await {
            tracing::debug!(%key, %error, "storing a loaded value in L2 failed; serving it anyway");
        }
    }
}

async fn landed(rx: oneshot::Receiver<Result<bool>>) -> Result<bool> {
    rx.await
        .unwrap_or_else(|_| Err(Error::unavailable("the L2 write was dropped unfinished")))
}

impl<V: Clone + Send + Sync + 'static> Tiers<V> {
    pub(crate) fn new(
        l1: Option<MokaBackend<Option<V>>>,
        l2: Option<Arc<dyn Backend<Option<V>>>>,
        breaker: CircuitBreaker,
        clock: SharedClock,
        retry_interval: Duration,
        retry_limit: usize,
        window: Duration,
    ) -> Result<Self> {
        if l1.is_none() && l2.is_none() {
            return Err(Error::config("a cache needs an L1, an L2, or both"));
        }
        let breaker = Arc::new(breaker);
        let counters = Arc::new(Counters::default());
        let lanes = l2.as_ref().map(|l2| {
            Arc::new(Lanes::new(
                Arc::clone(l2),
                Arc::clone(&breaker),
                Arc::clone(&counters),
                retry_interval,
                retry_limit,
                window,
            ))
        });
        Ok(Tiers {
            l1,
            l2,
            lanes,
            breaker,
            versions: Arc::new(Versions::new()),
            counters,
            clock,
            epochs: Epochs::default(),
            window,
            latency: Latency::default(),
        })
    }

    /// The L1 entry of `key` live at `now`, without a future (the hit path).
    pub(crate) fn l1_entry_at(&self, key: &Key, now: Timestamp) -> Option<Stored<V>> {
        self.l1.as_ref()?.lookup_at(key, now)
    }

    /// The L1 entry of `key` live now, without a future.
    pub(crate) fn l1_entry(&self, key: &Key) -> Option<Stored<V>> {
        self.l1_entry_at(key, self.clock.now())
    }

    /// The L2 entry of `key`; L2 failures (and an open circuit) read as a miss, counted.
    pub(crate) async fn l2_entry(&self, key: &Key) -> Option<Stored<V>> {
        let l2 = self.l2.as_ref()?;
        let started = self.latency.start();
        match self.breaker.call(&self.counters, l2.get(key)).await {
            Ok(found) => {
                let found = found.filter(|entry| !self.epochs.invalidate(key, &entry.meta));
                self.count_l2_read(found.is_some());
                let outcome = if found.is_some() {
                    L2Outcome::Hit
                } else {
                    L2Outcome::Miss
                };
                self.latency.l2(started, outcome);
                found
            }
            Err(error) => {
                self.latency.l2(started, L2Outcome::Error);
                tracing::debug!(%key, %error, "L2 read failed; reading as a miss");
                None
            }
        }
    }

    /// The L2 entries of `keys`, in order (one MGET on Redis); failures read as misses.
    pub(crate) async fn l2_entries(&self, keys: &[Key]) -> Vec<Option<Stored<V>>> {
        let misses = || keys.iter().map(|_| None).collect();
        let Some(l2) = self.l2.as_ref() else {
            return misses();
        };
        if keys.is_empty() {
            return Vec::new();
        }
        let read = async {
            let found = l2.get_many(keys).await?;
            if found.len() == keys.len() {
                Ok(found)
            } else {
                Err(Error::unavailable(format!(
                    "L2 answered {} entries for {} keys",
                    found.len(),
                    keys.len()
                )))
            }
        };
        match self.breaker.call(&self.counters, read).await {
            Ok(found) => {
                let found: Vec<_> = found
                    .into_iter()
                    .zip(keys)
                    .map(|(e, key)| e.filter(|entry| !self.epochs.invalidate(key, &entry.meta)))
                    .collect();
                found.iter().for_each(|e| self.count_l2_read(e.is_some()));
                found
            }
            Err(error) => {
                tracing::debug!(%error, "L2 batch read failed; reading as misses");
                misses()
            }
        }
    }

    fn count_l2_read(&self, hit: bool) {
        if hit {
            self.counters.bump_l2_hits();
        } else {
            self.counters.bump_l2_misses();
        }
    }

    /// Copies an L2 hit into L1, unless a write of the key began since `ticket` was taken. `now`:
    /// when the caller last read the clock.
    pub(crate) fn refill(&self, ticket: &Ticket, entry: &Stored<V>, now: Timestamp) {
        let Some(l1) = &self.l1 else { return };
        if ticket
            .commit(|| l1.set_entry_at(ticket.key(), entry.clone(), now))
            .is_none()
        {
            self.counters.bump_stores_skipped();
        }
    }

    /// [`refill`](Self::refill) as the load's last use of `ticket` (one lock instead of two).
    pub(crate) fn refill_last(&self, ticket: Ticket, entry: &Stored<V>, now: Timestamp) {
        let Some(l1) = &self.l1 else { return };
        let key = ticket.key().clone();
        if ticket
            .commit_last(|| l1.set_entry_at(&key, entry.clone(), now))
            .is_none()
        {
            self.counters.bump_stores_skipped();
        }
    }

    /// Stores a loaded entry: L1 at once, L2 through the key's lane, unless a write of the key
    /// began since `ticket` was taken. With no L1, waits until L2 has it (L2 is the only copy).
    pub(crate) async fn store(&self, ticket: &Ticket, entry: Stored<V>) {
        let _ = self.store_tracked(ticket, entry, false).await;
    }

    /// [`store`](Self::store); with `track`, the L2 store that goes on in the background (there
    /// is an L1) is handed back as a [`Landing`] the caller can wait for elsewhere — the lock
    /// holder does, to free the lock only once other processes can read the value in L2.
    pub(crate) async fn store_tracked(
        &self,
        ticket: &Ticket,
        entry: Stored<V>,
        track: bool,
    ) -> Option<Landing> {
        let key = ticket.key();
        if self.epochs.invalidate(key, &entry.meta) {
            self.counters.bump_stores_skipped();
            return None;
        }
        if let Err(error) = self.check_size(&entry) {
            // Served to its caller, cached nowhere: L2 would refuse it, and an L1 copy would be
            // an entry no other instance can share.
            tracing::warn!(%key, %error, "a loaded value is not cached");
            return None;
        }
        let committed = ticket.commit(|| {
            if let Some(l1) = &self.l1 {
                l1.set_entry(key, entry.clone());
            }
            let Some(lanes) = &self.lanes else {
                return (None, Leftover::none());
            };
            let (done, landing) = if self.l1.is_none() || track {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(Landing(rx)))
            } else {
                (None, None)
            };
            let write = Queued::new(L2Op::Store(entry), done, None);
            (landing, lanes.enqueue(key, write))
        });
        let Some((landing, leftover)) = committed else {
            self.counters.bump_stores_skipped();
            return None;
        };
        leftover.complete();
        match landing {
            // No L1: the caller's value lives in L2 only, so the caller waits for it.
            Some(landing) if self.l1.is_none() => {
                landing.wait(key).await;
                None
            }
            landing => landing,
        }
    }

    /// Sets (`Some`) or deletes (`None`) `key` in every tier; returns once L2 has it. Loads of the
    /// key that began before, or while it was landing, do not store. `true` when a delete found
    /// the key in a tier.
    pub(crate) async fn write(&self, key: &Key, entry: Option<Stored<V>>) -> Result<bool> {
        if let Some(entry) = &entry {
            self.check_size(entry)?;
        }
        let (removed, landing, leftover, ticket) = self
            .versions
            .begin_write_with(key, |ticket| self.apply(key, entry, ticket));
        self.finish_write(removed, landing, leftover, ticket).await
    }

    /// Write-through's write: stores `entry` if no other write of the key began since `ticket`
    /// was taken (before the source write), else deletes the key (the two writes raced at the
    /// source, in an order the cache cannot know). `true` when it stored.
    pub(crate) async fn write_after(
        &self,
        ticket: &Ticket,
        entry: Option<Stored<V>>,
    ) -> Result<bool> {
        let key = ticket.key();
        if let Some(entry) = &entry {
            self.check_size(entry)?;
        }
        let (stored, (removed, landing, leftover, write)) =
            self.versions.begin_write_after(ticket, |current, write| {
                let entry = entry.filter(|_| current);
                (current && entry.is_some(), self.apply(key, entry, write))
            });
        self.finish_write(removed, landing, leftover, write).await?;
        Ok(stored)
    }

    /// Whether L2 would take `entry` (checked before any tier is written); an oversized value is
    /// counted.
    fn check_size(&self, entry: &Stored<V>) -> Result<()> {
        let Some(l2) = &self.l2 else { return Ok(()) };
        l2.check_size(entry).inspect_err(|error| {
            if error.kind() == layercache_core::ErrorKind::TooLarge {
                self.counters.bump_values_too_large();
            }
        })
    }

    /// Writes L1 and queues L2, under the key's lock in the version table.
    #[allow(
        clippy::type_complexity,
        reason = "a private tuple of what the lock hands out"
    )]
    fn apply(
        &self,
        key: &Key,
        entry: Option<Stored<V>>,
        ticket: WriteTicket,
    ) -> (
        bool,
        Option<oneshot::Receiver<Result<bool>>>,
        Leftover<V>,
        Option<WriteTicket>,
    ) {
        let removed = match (&self.l1, &entry) {
            (Some(l1), Some(entry)) => {
                l1.set_entry(key, entry.clone());
                false
            }
            (Some(l1), None) => l1.remove_entry(key),
            (None, _) => false,
        };
        let Some(lanes) = &self.lanes else {
            return (removed, None, Leftover::none(), Some(ticket));
        };
        let (tx, rx) = oneshot::channel();
        let op = match entry {
            Some(entry) => L2Op::Set(entry),
            None => L2Op::Delete(self.clock.now()),
        };
        let write = Queued::new(op, Some(tx), Some(ticket));
        (removed, Some(rx), lanes.enqueue(key, write), None)
    }

    async fn finish_write(
        &self,
        removed: bool,
        landing: Option<oneshot::Receiver<Result<bool>>>,
        leftover: Leftover<V>,
        ticket: Option<WriteTicket>,
    ) -> Result<bool> {
        leftover.complete();
        if let Some(ticket) = ticket {
            ticket.finish(|| ());
        }
        match landing {
            Some(landing) => Ok(landed(landing).await? || removed),
            None => Ok(removed),
        }
    }

    /// Removes every key of `namespace` from every tier; loads of its keys that began before, or
    /// while the clear ran, do not store. Returns how many keys were removed.
    pub(crate) async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        let mut removed = 0;
        let ticket = self.versions.begin_clear(namespace, || {
            if let Some(l1) = &self.l1 {
                removed = l1.remove_namespace(namespace);
            }
        });
        let mut result = Ok(());
        if let (Some(l2), Some(lanes)) = (&self.l2, &self.lanes) {
            // L2 writes of the namespace queued before the clear must land before it.
            lanes.settle(namespace, CLEAR_SETTLE).await;
            match l2.clear(namespace).await {
                Ok(n) => removed = removed.max(n),
                Err(error) => {
                    self.counters.bump_l2_write_failures();
                    result = Err(error.context(format!("clearing {} in L2", namespace.scope())));
                }
            }
        }
        ticket.finish(|| ());
        result.map(|()| removed)
    }

    /// Keys with L2 writes in flight, waiting or being retried.
    pub(crate) fn pending_writes(&self) -> usize {
        self.lanes.as_ref().map_or(0, |lanes| lanes.active())
    }

    /// Waits until every L2 write landed, at most `timeout`; returns how many keys still wait.
    pub(crate) async fn drain(&self, timeout: Duration) -> usize {
        match &self.lanes {
            Some(lanes) => lanes.drain(timeout).await,
            None => 0,
        }
    }
}
