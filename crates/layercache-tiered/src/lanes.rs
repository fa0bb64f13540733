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

use layercache_core::{Backend, Entry, Error, Key, Result, WriteTicket};
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
    pub(crate) done: Option<oneshot::Sender<Result<()>>>,
    pub(crate) ticket: Option<WriteTicket>,
}

impl<V> Queued<V> {
    /// Completes the write without sending it: a newer write of the key replaced it.
    fn supersede(self) {
        if let Some(done) = self.done {
            let _ = done.send(Ok(()));
        }
        if let Some(ticket) = self.ticket {
            ticket.finish(|| ());
        }
    }
}

struct Lane<V> {
    waiting: Option<Queued<V>>,
}

pub(crate) struct Lanes<V> {
    shards: Box<[Mutex<HashMap<Key, Lane<V>>>]>,
    hasher: RandomState,
    l2: Arc<dyn Backend<Option<V>>>,
    breaker: Arc<CircuitBreaker>,
    counters: Arc<Counters>,
    retry_interval: Duration,
    retry_limit: usize,
    retrying: AtomicUsize,
    active: AtomicUsize,
    idle: Notify,
}

impl<V> fmt::Debug for Lanes<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lanes")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
            idle: Notify::new(),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Lane<V>>> {
        let index = (self.hasher.hash_one(key.as_str()) as usize) % self.shards.len();
        &self.shards[index]
    }

    /// Keys with L2 writes in flight or waiting.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Queues `write` behind the key's write in flight, if any. Call it under the key's lock in
    /// the version table, so lanes keep the order in which writes began.
    pub(crate) fn enqueue(self: &Arc<Self>, key: &Key, write: Queued<V>) {
        let mut shard = locked(self.shard(key));
        if let Some(lane) = shard.get_mut(key) {
            if let Some(older) = lane.waiting.replace(write) {
                older.supersede();
            }
            return;
        }
        shard.insert(
            key.clone(),
            Lane {
                waiting: Some(write),
            },
        );
        drop(shard);
        self.active.fetch_add(1, Ordering::AcqRel);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(Arc::clone(self).drive(key.clone()));
            }
            Err(_) => {
                // No runtime (a write from outside tokio): nothing can send it. Fail it visibly.
                let lane = locked(self.shard(key)).remove(key);
                self.lane_done();
                if let Some(write) = lane.and_then(|l| l.waiting) {
                    if let Some(done) = write.done {
                        let _ = done.send(Err(Error::config(
                            "an L2 write needs a tokio runtime; none is running",
                        )));
                    }
                }
            }
        }
    }

    fn lane_done(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until every lane is empty or `timeout` passed; returns the keys still pending.
    pub(crate) async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let idle = self.idle.notified();
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
            let next = {
                let mut shard = locked(self.shard(&key));
                let waiting = shard.get_mut(&key).and_then(|lane| lane.waiting.take());
                match (waiting, retry.take()) {
                    (Some(newer), Some(older)) => {
                        // A newer write replaces the delete being retried.
                        self.retrying.fetch_sub(1, Ordering::AcqRel);
                        older.supersede();
                        Some(newer)
                    }
                    (Some(newer), None) => Some(newer),
                    (None, Some(older)) => Some(older),
                    (None, None) => {
                        shard.remove(&key);
                        None
                    }
                }
            };
            let Some(write) = next else { break };
            let was_retry = write.done.is_none() && matches!(write.op, L2Op::Delete);
            retry = self.send(&key, write).await;
            if retry.is_some() && !was_retry {
                if self.retrying.fetch_add(1, Ordering::AcqRel) >= self.retry_limit {
                    self.retrying.fetch_sub(1, Ordering::AcqRel);
                    self.counters.bump_pending_dropped();
                    tracing::warn!(%key, "too many L2 deletes waiting for retry; dropped one (the key expires with its TTL)");
                    retry.take().map(Queued::supersede);
                }
            } else if retry.is_none() && was_retry {
                self.retrying.fetch_sub(1, Ordering::AcqRel);
            }
            if retry.is_some() {
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
                L2Op::Set(entry) => self.l2.set(key, entry).await,
                L2Op::Delete => self.l2.delete(key).await.map(|_| ()),
            };
            match &sent {
                Ok(()) => self.breaker.success(),
                Err(_) => {
                    self.breaker.failure();
                    self.counters.bump_l2_errors();
                }
            }
            sent
        };
        match result {
            Ok(()) => {
                self.counters.bump_l2_writes();
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
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
