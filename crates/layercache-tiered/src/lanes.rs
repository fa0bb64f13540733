//! L2 writes, ordered per key and concurrent across keys.
//!
//! Each key with L2 work has a lane: at most one write in flight and one waiting (a newer write
//! replaces the waiting one, whose caller is told it landed: it was superseded). A lane's writes
//! leave in the order they were queued, which is the order their writes began in the version table
//! (they are queued under the key's lock there), so an older value can never overtake a newer
//! write or a delete. Lanes of different keys run concurrently, so a process writes to Redis many
//! commands at a time (the multiplexed connection pipelines them).
//!
//! A write's [`WriteTicket`] travels with it and is finished when it has landed (or failed), in
//! the lane's own task: a caller that drops its future never leaves loads of the key blocked.
//! Failed deletes are retried until they land (a delete that arrives late only costs a miss), at
//! most [`DEFAULT_PENDING_WRITES`](crate::DEFAULT_PENDING_WRITES) keys at a time; a failed set is
//! never replayed (a replay could overwrite a newer write of another process): when it was a
//! caller's write, its key is deleted from L2 instead, retried the same way.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use layercache_core::{Backend, Entry, Error, Key, Namespace, Result, WriteTicket};
use tokio::sync::{Notify, oneshot};

use crate::circuit::CircuitBreaker;
use crate::stats::Counters;

const SHARDS: usize = 32;

/// What a lane sends to L2.
pub(crate) enum L2Op<V> {
    Set(Entry<Option<V>>),
    Delete,
}

/// A queued write: the op, who waits for it, and the version-table ticket it finishes.
pub(crate) struct Queued<V> {
    pub(crate) op: L2Op<V>,
    pub(crate) done: Option<oneshot::Sender<Result<bool>>>,
    pub(crate) ticket: Option<WriteTicket>,
}

impl<V> Queued<V> {
    /// Completes the write without sending it: a newer write of the key replaced it. Call it
    /// with no lock held (finishing the ticket takes the key's lock in the version table).
    pub(crate) fn supersede(self) {
        if let Some(done) = self.done {
            let _ = done.send(Ok(false));
        }
        if let Some(ticket) = self.ticket {
            ticket.finish(|| ());
        }
    }

    fn fail(self, error: Error) {
        if let Some(done) = self.done {
            let _ = done.send(Err(error));
        }
        if let Some(ticket) = self.ticket {
            ticket.finish(|| ());
        }
    }
}

/// What [`Lanes::enqueue`] leaves for its caller to complete once it holds no lock.
#[must_use = "complete it outside the version table's lock"]
pub(crate) struct Leftover<V>(Option<(Queued<V>, Option<Error>)>);

impl<V> Leftover<V> {
    pub(crate) fn none() -> Self {
        Leftover(None)
    }

    pub(crate) fn complete(self) {
        match self.0 {
            Some((write, None)) => write.supersede(),
            Some((write, Some(error))) => write.fail(error),
            None => {}
        }
    }
}

struct Lane<V> {
    waiting: Option<Queued<V>>,
    /// The lane's only work is a failed delete waiting for its retry.
    retrying: bool,
}

type Shard<V> = Mutex<HashMap<Key, Lane<V>>>;

pub(crate) struct Lanes<V> {
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
    l2: Arc<dyn Backend<Option<V>>>,
    breaker: Arc<CircuitBreaker>,
    counters: Arc<Counters>,
    retry_interval: Duration,
    retry_limit: usize,
    retrying: AtomicUsize,
    active: AtomicUsize,
    /// Notified whenever a lane ends or a retry starts.
    changed: Notify,
}

impl<V> fmt::Debug for Lanes<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lanes")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<V: Clone + Send + Sync + 'static> Lanes<V> {
    pub(crate) fn new(
        l2: Arc<dyn Backend<Option<V>>>,
        breaker: Arc<CircuitBreaker>,
        counters: Arc<Counters>,
        retry_interval: Duration,
        retry_limit: usize,
    ) -> Self {
        Lanes {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            l2,
            breaker,
            counters,
            retry_interval,
            retry_limit: retry_limit.max(1),
            retrying: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn shard(&self, key: &Key) -> &Shard<V> {
        let index = (self.hasher.hash_one(key.as_str()) as usize) % self.shards.len();
        &self.shards[index]
    }

    /// Keys with L2 writes in flight or waiting.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Queues `write` behind the key's write in flight, if any. Call it under the key's lock in
    /// the version table, so lanes keep the order in which writes began; complete what it returns
    /// after that lock is released.
    pub(crate) fn enqueue(self: &Arc<Self>, key: &Key, write: Queued<V>) -> Leftover<V> {
        let mut shard = locked(self.shard(key));
        if let Some(lane) = shard.get_mut(key) {
            return Leftover(lane.waiting.replace(write).map(|older| (older, None)));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a write from outside tokio): nothing could send it.
            let error = Error::config("an L2 write needs a tokio runtime; none is running");
            return Leftover(Some((write, Some(error))));
        };
        shard.insert(
            key.clone(),
            Lane {
                waiting: Some(write),
                retrying: false,
            },
        );
        drop(shard);
        self.active.fetch_add(1, Ordering::AcqRel);
        runtime.spawn(Arc::clone(self).drive(key.clone()));
        Leftover::none()
    }

    /// Waits until no lane of `namespace` has a write in flight or waiting (deletes being retried
    /// aside), at most `timeout`.
    pub(crate) async fn settle(&self, namespace: &Namespace, timeout: Duration) {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let changed = self.changed.notified();
            let busy = self.shards.iter().any(|shard| {
                locked(shard)
                    .iter()
                    .any(|(key, lane)| namespace.contains(key) && !lane.retrying)
            });
            if !busy {
                return;
            }
            match deadline {
                None => changed.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn lane_done(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Waits until every lane is empty or `timeout` passed; returns the keys still pending.
    pub(crate) async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let idle = self.changed.notified();
            if self.active() == 0 {
                return 0;
            }
            match deadline {
                None => idle.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, idle).await.is_err() {
                        return self.active();
                    }
                }
            }
        }
    }

    /// The lane's task: sends the key's writes one after another until none waits.
    async fn drive(self: Arc<Self>, key: Key) {
        let mut retry: Option<Queued<V>> = None;
        loop {
            let (next, replaced) = {
                let mut shard = locked(self.shard(&key));
                let lane = shard.get_mut(&key);
                let waiting = lane.and_then(|lane| {
                    lane.retrying = false;
                    lane.waiting.take()
                });
                match (waiting, retry.take()) {
                    // A newer write replaces the delete being retried.
                    (Some(newer), Some(older)) => (Some(newer), Some(older)),
                    (Some(newer), None) => (Some(newer), None),
                    (None, Some(older)) => (Some(older), None),
                    (None, None) => {
                        shard.remove(&key);
                        (None, None)
                    }
                }
            };
            if let Some(older) = replaced {
                self.retrying.fetch_sub(1, Ordering::AcqRel);
                older.supersede();
            }
            let Some(write) = next else { break };
            let was_retry = write.done.is_none() && matches!(write.op, L2Op::Delete);
            retry = self.send(&key, write).await;
            match (&retry, was_retry) {
                (Some(_), false)
                    if self.retrying.fetch_add(1, Ordering::AcqRel) >= self.retry_limit =>
                {
                    self.retrying.fetch_sub(1, Ordering::AcqRel);
                    self.counters.bump_pending_dropped();
                    tracing::warn!(%key, "too many L2 deletes waiting for retry; dropped one (the key expires with its TTL)");
                    if let Some(dropped) = retry.take() {
                        dropped.supersede();
                    }
                }
                (None, true) => {
                    self.retrying.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
            if retry.is_some() {
                if let Some(lane) = locked(self.shard(&key)).get_mut(&key) {
                    lane.retrying = lane.waiting.is_none();
                }
                self.changed.notify_waiters();
                tokio::time::sleep(self.retry_interval).await;
            }
        }
        self.lane_done();
    }

    /// Sends one write; returns the delete to retry when it failed.
    async fn send(&self, key: &Key, write: Queued<V>) -> Option<Queued<V>> {
        let Queued { op, done, ticket } = write;
        let is_set = matches!(op, L2Op::Set(_));
        let result = if !self.breaker.allow() {
            self.counters.bump_l2_skipped();
            Err(Error::unavailable("the L2 circuit is open"))
        } else {
            let sent = match op {
                L2Op::Set(entry) => self.l2.set(key, entry).await.map(|()| false),
                L2Op::Delete => self.l2.delete(key).await,
            };
            match &sent {
                Ok(_) => self.breaker.success(),
                Err(_) => {
                    self.breaker.failure();
                    self.counters.bump_l2_errors();
                }
            }
            sent
        };
        match result {
            Ok(present) => {
                self.counters.bump_l2_writes();
                if let Some(done) = done {
                    let _ = done.send(Ok(present));
                }
                if let Some(ticket) = ticket {
                    ticket.finish(|| ());
                }
                None
            }
            Err(error) => {
                self.counters.bump_l2_write_failures();
                tracing::debug!(%key, %error, "L2 write failed");
                let callers_write = done.is_some();
                if let Some(done) = done {
                    let _ = done.send(Err(error));
                }
                if is_set && !callers_write {
                    // A loaded value that did not reach L2: nothing is lost but a future L2 hit.
                    if let Some(ticket) = ticket {
                        ticket.finish(|| ());
                    }
                    return None;
                }
                // A delete, or a caller's set whose older L2 value must not survive: delete the
                // key until that lands. The write ticket stays held, so no load refills L1 from
                // the L2 value meanwhile.
                Some(Queued {
                    op: L2Op::Delete,
                    done: None,
                    ticket,
                })
            }
        }
    }
}

impl<V> Drop for Lanes<V> {
    fn drop(&mut self) {
        let pending: usize = self.shards.iter().map(|s| locked(s).len()).sum();
        if pending > 0 {
            tracing::warn!(
                pending,
                "the cache was dropped with L2 writes still pending; they are lost (call shutdown first)"
            );
        }
    }
}
