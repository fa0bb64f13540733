//! The in-memory queue: one slot per key (later writes replace earlier ones in place), in the order
//! of each key's oldest pending write, bounded by the number of keys.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use layercache_core::{Error, Key, Result};
use tokio::time::Instant;

use super::batch::{self, Item};
use super::{AsyncCheck, Op, Queue, QueueFull, Shared, WhenFull, add, lock};

struct Slot<V> {
    op: Op<V>,
    /// The sequence number of the oldest write of this key still pending here.
    first_seq: u64,
    /// When that write was accepted.
    since: Instant,
}

struct State<V> {
    slots: HashMap<Key, Slot<V>>,
    /// Keys in the order of their slot's `first_seq`.
    order: VecDeque<Key>,
    /// The sequence number the next accepted write gets.
    next_seq: u64,
    /// The batch being written: its oldest write's sequence number, acceptance time and size.
    inflight: Option<(u64, Instant, usize)>,
    /// Writes numbered below this are written without waiting for a full batch (a flush).
    flush_below: u64,
}

/// See the module docs.
pub(super) struct MemoryQueue<V> {
    state: Mutex<State<V>>,
}

enum Next<V> {
    Batch(Vec<Item<V, ()>>),
    WaitUntil(Instant),
    Idle,
    Exit,
}

impl<V> MemoryQueue<V>
where
    V: Send + Sync + 'static,
{
    pub(super) fn new() -> Self {
        MemoryQueue {
            state: Mutex::new(State {
                slots: HashMap::new(),
                order: VecDeque::new(),
                next_seq: 0,
                inflight: None,
                flush_below: 0,
            }),
        }
    }

    /// Queues `op` for `key`, waiting for space or refusing as configured. `accepted` is set once
    /// the write is in the queue. Wakes the worker when it has something new to do: a first write
    /// to time, or a full batch.
    pub(super) async fn accept(
        &self,
        shared: &Shared<V>,
        key: &Key,
        op: Op<V>,
        accepted: &mut bool,
    ) -> Result<()> {
        let capacity = shared.settings.capacity;
        let mut op = Some(op);
        let deadline = match shared.settings.when_full {
            WhenFull::Wait { max: Some(max) } => Instant::now().checked_add(max),
            _ => None,
        };
        loop {
            let space = shared.progress.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut state = lock(&self.state);
                let State {
                    slots,
                    order,
                    next_seq,
                    ..
                } = &mut *state;
                let seq = *next_seq;
                if let Some(slot) = slots.get_mut(key) {
                    if let Some(op) = op.take() {
                        slot.op = op;
                    }
                    *next_seq += 1;
                    add(&shared.counters.coalesced, 1);
                    *accepted = true;
                    return Ok(());
                }
                if slots.len() < capacity {
                    if let Some(op) = op.take() {
                        slots.insert(
                            key.clone(),
                            Slot {
                                op,
                                first_seq: seq,
                                since: Instant::now(),
                            },
                        );
                        order.push_back(key.clone());
                        *next_seq += 1;
                        *accepted = true;
                        if slots.len() == 1 || slots.len() >= shared.settings.batch_size {
                            shared.wake.notify_one();
                        }
                    }
                    return Ok(());
                }
            }
            if shared.stopped.load(Ordering::SeqCst) {
                return Err(shared.stopped_error());
            }
            let full = QueueFull { capacity };
            match (shared.settings.when_full, deadline) {
                (WhenFull::Reject, _) => {
                    add(&shared.counters.rejected, 1);
                    return Err(Error::unavailable(full.to_string())
                        .with_source(full)
                        .set_temporary(true));
                }
                (_, Some(deadline)) => {
                    if tokio::time::timeout_at(deadline, space).await.is_err() {
                        add(&shared.counters.rejected, 1);
                        return Err(Error::timeout(full.to_string()).with_source(full));
                    }
                }
                (_, None) => space.await,
            }
        }
    }

    /// Waits until every write accepted before the call is done.
    pub(super) async fn flush(&self, shared: &Shared<V>) -> Result<()> {
        let target = {
            let mut state = lock(&self.state);
            state.flush_below = state.flush_below.max(state.next_seq);
            state.next_seq
        };
        shared.wake.notify_one();
        struct Done<'a, V> {
            queue: &'a MemoryQueue<V>,
            target: u64,
        }
        impl<V: Send + Sync> AsyncCheck for Done<'_, V> {
            async fn check(&mut self) -> Result<bool> {
                let state = lock(&self.queue.state);
                let oldest_queued = state
                    .order
                    .front()
                    .and_then(|k| state.slots.get(k))
                    .map(|s| s.first_seq);
                let oldest_inflight = state.inflight.map(|(seq, _, _)| seq);
                let oldest = match (oldest_queued, oldest_inflight) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Ok(oldest.is_none_or(|seq| seq >= self.target))
            }
        }
        shared
            .wait_for(
                None,
                Done {
                    queue: self,
                    target,
                },
            )
            .await
    }

    pub(super) fn depth_and_lag(&self) -> (u64, Duration) {
        let state = lock(&self.state);
        let inflight = state.inflight.map_or(0, |(_, _, n)| n);
        let since_inflight = state.inflight.map(|(_, since, _)| since);
        let since_queued = state
            .order
            .front()
            .and_then(|k| state.slots.get(k))
            .map(|s| s.since);
        let oldest = match (since_inflight, since_queued) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (
            (state.slots.len() + inflight) as u64,
            oldest.map_or(Duration::ZERO, |t| t.elapsed()),
        )
    }

    fn next(&self, shared: &Shared<V>) -> Next<V> {
        let s = &shared.settings;
        let closing = shared.closing.load(Ordering::SeqCst);
        let mut state = lock(&self.state);
        let Some(front) = state.order.front().and_then(|k| state.slots.get(k)) else {
            return if closing { Next::Exit } else { Next::Idle };
        };
        let due = front.since + s.max_delay;
        let ready = closing
            || state.slots.len() >= s.batch_size
            || front.first_seq < state.flush_below
            || Instant::now() >= due;
        if !ready {
            return Next::WaitUntil(due);
        }
        let (first_seq, since) = (front.first_seq, front.since);
        let n = s.batch_size.min(state.order.len());
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let Some(key) = state.order.pop_front() else {
                break;
            };
            if let Some(slot) = state.slots.remove(&key) {
                items.push(Item {
                    key,
                    op: slot.op,
                    tag: (),
                });
            }
        }
        state.inflight = Some((first_seq, since, items.len()));
        Next::Batch(items)
    }

    pub(super) async fn run(&self, shared: &Arc<Shared<V>>) {
        loop {
            let wake = shared.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            match self.next(shared) {
                Next::Batch(items) => {
                    // Space was made.
                    shared.progress.notify_waiters();
                    let outcome = batch::write(shared, items).await;
                    lock(&self.state).inflight = None;
                    if shared.settings.evict_on_dead_letter && !outcome.failed.is_empty() {
                        // In a task: a put waiting for space holds its key's lock, and waits for
                        // this worker.
                        let keys: Vec<Key> = outcome.failed.into_iter().map(|(k, ())| k).collect();
                        tokio::spawn(evict(Arc::clone(shared), keys));
                    }
                    shared.progress.notify_waiters();
                }
                Next::WaitUntil(due) => {
                    let _ = tokio::time::timeout_at(due, wake).await;
                }
                Next::Idle => wake.await,
                Next::Exit => return,
            }
        }
    }
}

/// Removes dead-lettered keys from the cache, unless a newer write of the key is queued.
async fn evict<V: Send + Sync + 'static>(shared: Arc<Shared<V>>, keys: Vec<Key>) {
    let Queue::Memory(queue) = &shared.queue else {
        return;
    };
    for key in keys {
        let _stripe = shared.stripe(&key).lock_owned().await;
        if lock(&queue.state).slots.contains_key(&key) {
            continue;
        }
        if let Err(error) = shared.cache.delete(&key).await {
            tracing::warn!(%key, %error, "write-behind: cannot evict a dead-lettered key");
        }
    }
}
