//! L2 writes, ordered per key, batched and concurrent across keys.
//!
//! Each key with L2 work has a lane: at most one write in flight and one waiting (a newer write
//! replaces the waiting one, whose caller is answered when the newer one lands: until then L2 may
//! still hold what the replaced write was meant to overwrite). A lane's writes
//! leave in the order they were queued, which is the order their writes began in the version table
//! (they are queued under the key's lock there), so an older value can never overtake a newer
//! write or a delete.
//!
//! Lanes with a write ready wait in one queue; a few sender tasks (at most [`SENDERS`]) take up to
//! [`BATCH`] of them at a time and send their sets as one pipeline (`set_many`: one round trip on
//! Redis) and their deletes concurrently. So writes of different keys never wait for each other's
//! round trips, and a burst of writes costs a few pipelines, not one task and one round trip each.
//!
//! A write's [`WriteTicket`] travels with it and is finished when it has landed (or failed), in the
//! sender's task: a caller that drops its future never leaves loads of the key blocked. Failed
//! deletes are retried until they land (a delete that arrives late only costs a miss), at most
//! [`DEFAULT_PENDING_WRITES`](crate::DEFAULT_PENDING_WRITES) keys at a time; a failed set is never
//! replayed (a replay could overwrite a newer write of another process): when it was a caller's
//! write, its key is deleted from L2 instead, retried the same way.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use layercache_core::{Backend, Entry, Error, Key, Namespace, Result, Timestamp, WriteTicket};
use tokio::sync::{Notify, oneshot};

use crate::circuit::CircuitBreaker;
use crate::stats::Counters;

const SHARDS: usize = 32;
/// The most writes one sender takes at a time.
const BATCH: usize = 128;
/// The most sender tasks at once (so the most batches in flight).
const SENDERS: usize = 4;

/// What a lane sends to L2.
pub(crate) enum L2Op<V> {
    /// A write: stored whatever L2 holds.
    Set(Entry<Option<V>>),
    /// A loaded value: stored unless L2 holds something newer (`Backend::set_if_newer`), so a
    /// slow load cannot undo another process's write or invalidation.
    Store(Entry<Option<V>>),
    /// A delete made at this moment: a tombstone refuses older loads' stores for the window.
    Delete(Timestamp),
}

impl<V> L2Op<V> {
    fn is_delete(&self) -> bool {
        matches!(self, L2Op::Delete(_))
    }
}

/// When a delete was made: its own moment, or that of the write it stands in for.
fn deleted_at<V>(op: &L2Op<V>) -> Timestamp {
    match op {
        L2Op::Delete(at) => *at,
        L2Op::Set(entry) | L2Op::Store(entry) => entry.meta.created_at,
    }
}

/// A queued write: the op, who waits for it, the version-table ticket it finishes, and the older
/// writes of the key it replaced before they were sent.
pub(crate) struct Queued<V> {
    pub(crate) op: L2Op<V>,
    pub(crate) done: Option<oneshot::Sender<Result<bool>>>,
    pub(crate) ticket: Option<WriteTicket>,
    replaced: Vec<Queued<V>>,
}

impl<V> Queued<V> {
    pub(crate) fn new(
        op: L2Op<V>,
        done: Option<oneshot::Sender<Result<bool>>>,
        ticket: Option<WriteTicket>,
    ) -> Self {
        Queued {
            op,
            done,
            ticket,
            replaced: Vec::new(),
        }
    }

    /// Takes the place of `older`, a write of the same key not sent yet. The older write's caller
    /// is answered when this one lands (not before: until then L2 may still hold what the older
    /// write was meant to replace).
    fn replace(&mut self, older: Queued<V>) {
        self.replaced.push(older);
    }

    /// Finishes the tickets, then answers the write's caller (and those of the writes it
    /// replaced): a caller whose write returned finds its key free in the version table. Call it
    /// with no lock held (finishing a ticket takes the key's lock in the version table).
    fn complete(mut self, result: Result<bool>) {
        self.finish();
        self.answer(result);
    }

    /// Finishes the write's ticket and those of the writes it replaced.
    fn finish(&mut self) {
        for older in &mut self.replaced {
            older.finish();
        }
        if let Some(ticket) = self.ticket.take() {
            ticket.finish(|| ());
        }
    }

    /// Answers the write's caller and those of the writes it replaced.
    fn answer(self, result: Result<bool>) {
        for older in self.replaced {
            older.answer(result.clone().map(|_| false));
        }
        if let Some(done) = self.done {
            let _ = done.send(result);
        }
    }
}

/// A sent write, completed.
enum Completed<V> {
    /// It landed: answer its callers once the lane is done with it.
    Landed(Queued<V>, bool),
    /// It failed (its callers are answered): the delete to retry, if any.
    Retry(Option<Queued<V>>),
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
            Some((write, None)) => write.complete(Ok(false)),
            Some((write, Some(error))) => write.complete(Err(error)),
            None => {}
        }
    }
}

struct Lane<V> {
    /// The next write of the key, not yet taken by a sender.
    waiting: Option<Queued<V>>,
    /// A failed delete waiting for its retry (a waiting write replaces it).
    retry: Option<Queued<V>>,
    /// The key is in the ready queue or its write is in flight: it is not queued again until
    /// that write completed, so a key has one write in flight at most.
    busy: bool,
}

type Shard<V> = Mutex<HashMap<Key, Lane<V>>>;

pub(crate) struct Lanes<V> {
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
    ready: Mutex<VecDeque<Key>>,
    senders: AtomicUsize,
    l2: Arc<dyn Backend<Option<V>>>,
    breaker: Arc<CircuitBreaker>,
    counters: Arc<Counters>,
    retry_interval: Duration,
    retry_limit: usize,
    /// How long a delete's tombstone refuses older loads' stores.
    window: Duration,
    retrying: AtomicUsize,
    active: AtomicUsize,
    /// Notified whenever a lane ends or starts waiting for a retry.
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
    // Every critical section is a few map or queue operations; a poisoned lock is used as it is.
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
        window: Duration,
    ) -> Self {
        Lanes {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            ready: Mutex::new(VecDeque::new()),
            senders: AtomicUsize::new(0),
            l2,
            breaker,
            counters,
            retry_interval,
            retry_limit: retry_limit.max(1),
            window,
            retrying: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn shard(&self, key: &Key) -> &Shard<V> {
        let index = (self.hasher.hash_one(key.as_str()) as usize) % self.shards.len();
        &self.shards[index]
    }

    /// Keys with L2 writes in flight, waiting or being retried.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Queues `write` behind the key's write in flight, if any. Call it under the key's lock in
    /// the version table, so lanes keep the order in which writes began; complete what it returns
    /// after that lock is released.
    pub(crate) fn enqueue(self: &Arc<Self>, key: &Key, write: Queued<V>) -> Leftover<V> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a write from outside tokio): nothing could send it.
            let error = Error::config("an L2 write needs a tokio runtime; none is running");
            return Leftover(Some((write, Some(error))));
        };
        let mut shard = locked(self.shard(key));
        match shard.get_mut(key) {
            Some(lane) => {
                let mut write = write;
                if let Some(older) = lane.waiting.take() {
                    write.replace(older);
                }
                lane.waiting = Some(write);
                if !lane.busy {
                    // Only a retry was pending: the new write goes out now, in its place.
                    lane.busy = true;
                    locked(&self.ready).push_back(key.clone());
                }
                drop(shard);
                self.wake(&runtime);
                Leftover::none()
            }
            None => {
                shard.insert(
                    key.clone(),
                    Lane {
                        waiting: Some(write),
                        retry: None,
                        busy: true,
                    },
                );
                self.active.fetch_add(1, Ordering::AcqRel);
                locked(&self.ready).push_back(key.clone());
                drop(shard);
                self.wake(&runtime);
                Leftover::none()
            }
        }
    }

    /// Starts a sender unless enough run.
    fn wake(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let mut senders = self.senders.load(Ordering::Acquire);
        loop {
            if senders >= SENDERS {
                return;
            }
            match self.senders.compare_exchange_weak(
                senders,
                senders + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => senders = now,
            }
        }
        runtime.spawn(Arc::clone(self).send_ready());
    }

    /// A sender: takes ready lanes in batches and sends them until none is ready.
    async fn send_ready(self: Arc<Self>) {
        loop {
            let keys: Vec<Key> = {
                let mut ready = locked(&self.ready);
                let n = ready.len().min(BATCH);
                ready.drain(..n).collect()
            };
            if keys.is_empty() {
                self.senders.fetch_sub(1, Ordering::AcqRel);
                // A key queued between the look and the decrement found enough senders and
                // started none; look once more so it is not stranded.
                if locked(&self.ready).is_empty() {
                    return;
                }
                if self.senders.fetch_add(1, Ordering::AcqRel) >= SENDERS {
                    self.senders.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                continue;
            }
            self.send_batch(keys).await;
        }
    }

    /// Sends the writes of `keys` (one each): sets as one pipeline, deletes concurrently.
    async fn send_batch(self: &Arc<Self>, keys: Vec<Key>) {
        let mut sets: Vec<(Key, Queued<V>)> = Vec::new();
        let mut deletes: Vec<(Key, Queued<V>)> = Vec::new();
        for key in keys {
            let write = {
                let mut shard = locked(self.shard(&key));
                let Some(lane) = shard.get_mut(&key) else {
                    continue;
                };
                let retry = lane.retry.take();
                if retry.is_some() {
                    self.retrying.fetch_sub(1, Ordering::AcqRel);
                }
                match (lane.waiting.take(), retry) {
                    (Some(mut newer), Some(older)) => {
                        newer.replace(older);
                        Some(newer)
                    }
                    (Some(write), None) | (None, Some(write)) => Some(write),
                    (None, None) => None,
                }
            };
            match write {
                Some(write) if write.op.is_delete() => deletes.push((key, write)),
                Some(write) => sets.push((key, write)),
                None => self.lane_done(&key, None),
            }
        }
        let (set_results, delete_results) =
            tokio::join!(self.send_sets(&sets), self.send_deletes(&deletes));
        for ((key, write), result) in sets
            .into_iter()
            .chain(deletes)
            .zip(set_results.into_iter().chain(delete_results))
        {
            match self.complete(&key, write, result) {
                Completed::Landed(mut write, present) => {
                    // In this order: the version table, the lane, the caller. Once the lanes are
                    // drained every ticket is finished; once a caller is answered its write is
                    // neither pending nor holding its key.
                    write.finish();
                    self.lane_done(&key, None);
                    write.answer(Ok(present));
                }
                Completed::Retry(retry) => self.lane_done(&key, retry),
            }
        }
    }

    /// Sends writes (one pipeline) and loaded values (conditional stores) together.
    async fn send_sets(&self, sets: &[(Key, Queued<V>)]) -> Vec<Result<bool>> {
        if sets.is_empty() {
            return Vec::new();
        }
        let mut writes: Vec<(Key, Entry<Option<V>>)> = Vec::new();
        let mut stores: Vec<(Key, Entry<Option<V>>)> = Vec::new();
        for (key, write) in sets {
            match &write.op {
                L2Op::Set(entry) => writes.push((key.clone(), entry.clone())),
                L2Op::Store(entry) => stores.push((key.clone(), entry.clone())),
                L2Op::Delete(_) => {}
            }
        }
        let send_writes = async {
            if writes.is_empty() {
                return Ok(());
            }
            self.breaker
                .call(&self.counters, self.l2.set_many(writes))
                .await
        };
        let send_stores = async {
            if stores.is_empty() {
                return Ok(Vec::new());
            }
            self.breaker
                .call(&self.counters, self.l2.set_many_if_newer(stores))
                .await
        };
        let (written, stored) = tokio::join!(send_writes, send_stores);
        let mut stored = stored.map(Vec::into_iter);
        sets.iter()
            .map(|(_, write)| match &write.op {
                L2Op::Store(_) => match &mut stored {
                    Ok(answers) => {
                        if answers.next() == Some(false) {
                            self.counters.bump_l2_stores_refused();
                        }
                        Ok(false)
                    }
                    Err(error) => Err(error.clone()),
                },
                _ => written.clone().map(|()| false),
            })
            .collect()
    }

    async fn send_deletes(self: &Arc<Self>, deletes: &[(Key, Queued<V>)]) -> Vec<Result<bool>> {
        match deletes {
            [] => Vec::new(),
            [(key, write)] => vec![self.delete(key, &write.op).await],
            _ => {
                let mut tasks = tokio::task::JoinSet::new();
                for (index, (key, write)) in deletes.iter().enumerate() {
                    let (lanes, key) = (Arc::clone(self), key.clone());
                    let op = L2Op::Delete(deleted_at(&write.op));
                    tasks.spawn(async move { (index, lanes.delete(&key, &op).await) });
                }
                let mut out: Vec<Result<bool>> = deletes
                    .iter()
                    .map(|_| Err(Error::unavailable("an L2 delete task failed")))
                    .collect();
                while let Some(joined) = tasks.join_next().await {
                    if let Ok((index, result)) = joined {
                        out[index] = result;
                    }
                }
                out
            }
        }
    }

    async fn delete(&self, key: &Key, op: &L2Op<V>) -> Result<bool> {
        let at = deleted_at(op);
        self.breaker
            .call(&self.counters, self.l2.invalidate(key, at, self.window))
            .await
    }

    /// Completes one sent write: a landed write to answer (once the lane is done with it), or a
    /// failed one answered now, with the delete to retry, if any.
    fn complete(&self, key: &Key, write: Queued<V>, result: Result<bool>) -> Completed<V> {
        match result {
            Ok(present) => {
                self.counters.bump_l2_writes();
                Completed::Landed(write, present)
            }
            Err(error) => Completed::Retry(self.failed(key, write, error)),
        }
    }

    /// Answers the callers of a failed write; returns the delete to retry, if any.
    fn failed(&self, key: &Key, write: Queued<V>, error: Error) -> Option<Queued<V>> {
        self.counters.bump_l2_write_failures();
        tracing::debug!(%key, %error, "L2 write failed");
        let Queued {
            op,
            done,
            ticket,
            replaced,
        } = write;
        let callers_write = done.is_some() || !replaced.is_empty();
        for older in replaced {
            older.complete(Err(error.clone()));
        }
        if let Some(done) = done {
            let _ = done.send(Err(error));
        }
        if matches!(op, L2Op::Store(_)) && !callers_write {
            // A loaded value that did not reach L2: nothing is lost but a future L2 hit.
            if let Some(ticket) = ticket {
                ticket.finish(|| ());
            }
            return None;
        }
        // A delete, or a caller's set whose older L2 value must not survive: delete the key until
        // that lands. The write ticket stays held, so no load refills L1 from the L2 value
        // meanwhile.
        Some(Queued::new(L2Op::Delete(deleted_at(&op)), None, ticket))
    }

    /// The key's write completed: queue its next one, hold its retry, or end the lane.
    fn lane_done(self: &Arc<Self>, key: &Key, retry: Option<Queued<V>>) {
        let mut retry = retry;
        let mut dropped: Option<Queued<V>> = None;
        let mut ended = false;
        let mut schedule_retry = false;
        {
            let mut shard = locked(self.shard(key));
            let Some(lane) = shard.get_mut(key) else {
                return;
            };
            if let Some(newer) = &mut lane.waiting {
                // A newer write replaces the failed delete: it goes out now.
                if let Some(old) = retry.take() {
                    newer.replace(old);
                }
                locked(&self.ready).push_back(key.clone());
            } else if let Some(failed) = retry.take() {
                if self.retrying.fetch_add(1, Ordering::AcqRel) >= self.retry_limit {
                    self.retrying.fetch_sub(1, Ordering::AcqRel);
                    self.counters.bump_pending_dropped();
                    tracing::warn!(%key, "too many L2 deletes waiting for retry; gave one up (the key expires with its TTL)");
                    dropped = Some(failed);
                    shard.remove(key);
                    ended = true;
                } else {
                    lane.retry = Some(failed);
                    lane.busy = false;
                    schedule_retry = true;
                }
            } else {
                shard.remove(key);
                ended = true;
            }
        }
        if let Some(old) = dropped {
            old.complete(Ok(false));
        }
        if schedule_retry {
            self.changed.notify_waiters();
            let (lanes, key) = (Arc::clone(self), key.clone());
            tokio::spawn(async move {
                tokio::time::sleep(lanes.retry_interval).await;
                lanes.requeue(&key);
            });
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.wake(&runtime);
        }
        if ended {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.changed.notify_waiters();
        }
    }

    /// Queues a key whose failed delete waited its retry interval (unless a newer write did).
    fn requeue(self: &Arc<Self>, key: &Key) {
        let mut shard = locked(self.shard(key));
        let Some(lane) = shard.get_mut(key) else {
            return;
        };
        if lane.busy {
            return;
        }
        lane.busy = true;
        locked(&self.ready).push_back(key.clone());
        drop(shard);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.wake(&runtime);
        }
    }

    /// Waits until no lane of `namespace` has a write in flight or waiting (deletes waiting for a
    /// retry aside), at most `timeout`.
    pub(crate) async fn settle(&self, namespace: &Namespace, timeout: Duration) {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let changed = self.changed.notified();
            let busy = self.shards.iter().any(|shard| {
                locked(shard).iter().any(|(key, lane)| {
                    namespace.contains(key) && (lane.busy || lane.waiting.is_some())
                })
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

    /// Waits until every lane is empty or `timeout` passed; returns the keys still pending.
    pub(crate) async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let changed = self.changed.notified();
            if self.active() == 0 {
                return 0;
            }
            match deadline {
                None => changed.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return self.active();
                    }
                }
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
