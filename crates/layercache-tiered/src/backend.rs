//! `TieredBackend`: L1 in front of L2, as one `Backend`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use layercache_core::{Backend, Entry, Error, Key, Namespace, Result, async_trait};
use tracing::Instrument;

use crate::circuit::{CircuitBreaker, CircuitState};

/// The default bound on L2 writes waiting to be sent or retried.
pub const DEFAULT_PENDING_WRITES: usize = 10_000;
/// The default pause before failed L2 writes are retried (200 ms).
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// The most L2 writes sent in one pipeline by the background writer.
const WRITE_BATCH: usize = 256;

enum Op<V> {
    Set(Entry<V>),
    Delete,
}

/// L2 writes waiting to be sent: one per key (a newer write replaces an older one), in order.
struct Pending<V> {
    order: VecDeque<Key>,
    ops: HashMap<Key, Op<V>>,
}

impl<V> Pending<V> {
    fn new() -> Self {
        Pending {
            order: VecDeque::new(),
            ops: HashMap::new(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct TierCounters {
    pub(crate) l1_hits: AtomicU64,
    pub(crate) l1_misses: AtomicU64,
    pub(crate) l2_hits: AtomicU64,
    pub(crate) l2_misses: AtomicU64,
    pub(crate) l2_errors: AtomicU64,
    pub(crate) l2_skipped: AtomicU64,
    pub(crate) l2_writes: AtomicU64,
    pub(crate) l2_write_failures: AtomicU64,
    pub(crate) pending_dropped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Inner<V> {
    l1: Option<Arc<dyn Backend<V>>>,
    l2: Option<Arc<dyn Backend<V>>>,
    breaker: CircuitBreaker,
    pending: Mutex<Pending<V>>,
    pending_limit: usize,
    retry_interval: Duration,
    /// Held while L2 writes are sent, so a synchronous delete cannot be overtaken by an older
    /// background write of the same key.
    l2_writes: tokio::sync::Mutex<()>,
    writer_running: AtomicBool,
    counters: TierCounters,
}

/// L1 (in process) in front of L2 (shared) as one [`Backend`]; either may be absent.
///
/// - `get`: L1, then L2; an L2 hit fills L1 (whose own TTL cap then bounds the copy).
/// - `set` (the path of loaded values): L1 now, L2 in the background — a caller never waits for L2
///   to store what it loaded. [`set_now`](Self::set_now) writes both before returning.
/// - `delete`: both, L2 synchronously, so an invalidation is visible to other processes when it
///   returns.
/// - A circuit breaker stops calling a failing L2 for a cool-down and probes it back; L2 failures
///   are counted and absorbed (a read falls back to a miss, the caller to the loader); L2 writes
///   that failed are retried in the background, at most [`DEFAULT_PENDING_WRITES`] of them
///   (oldest dropped first, counted).
pub struct TieredBackend<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for TieredBackend<V> {
    fn clone(&self) -> Self {
        TieredBackend {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> fmt::Debug for TieredBackend<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredBackend")
            .field("l1", &self.inner.l1)
            .field("l2", &self.inner.l2)
            .field("circuit", &self.inner.breaker.current())
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> TieredBackend<V> {
    /// A tiered backend; at least one tier is needed.
    pub(crate) fn new(
        l1: Option<Arc<dyn Backend<V>>>,
        l2: Option<Arc<dyn Backend<V>>>,
        breaker: CircuitBreaker,
        pending_limit: usize,
        retry_interval: Duration,
    ) -> Result<Self> {
        if l1.is_none() && l2.is_none() {
            return Err(Error::config("a tiered cache needs an L1, an L2, or both"));
        }
        Ok(TieredBackend {
            inner: Arc::new(Inner {
                l1,
                l2,
                breaker,
                pending: Mutex::new(Pending::new()),
                pending_limit: pending_limit.max(1),
                retry_interval,
                l2_writes: tokio::sync::Mutex::new(()),
                writer_running: AtomicBool::new(false),
                counters: TierCounters::default(),
            }),
        })
    }

    pub(crate) fn counters(&self) -> &TierCounters {
        &self.inner.counters
    }

    /// The L2 circuit's state.
    pub fn circuit(&self) -> CircuitState {
        self.inner.breaker.current()
    }

    /// How many times the L2 circuit opened.
    pub fn circuit_opened(&self) -> u64 {
        self.inner.breaker.times_opened()
    }

    /// L2 writes waiting to be sent or retried.
    pub fn pending_writes(&self) -> usize {
        self.inner.pending_len()
    }

    /// Writes `entry` to L1 and L2 before returning. An L2 failure is queued for retry and
    /// returned.
    pub async fn set_now(&self, key: &Key, entry: Entry<V>) -> Result<()> {
        let inner = &self.inner;
        if let Some(l1) = &inner.l1 {
            l1.set(key, entry.clone()).await?;
        }
        let Some(l2) = &inner.l2 else { return Ok(()) };
        let _order = inner.l2_writes.lock().await;
        inner.take_pending(key);
        let result = inner.l2_call("set", l2.set(key, entry.clone())).await;
        if let Err(error) = &result {
            bump(&inner.counters.l2_write_failures);
            inner.enqueue(key.clone(), Op::Set(entry));
            inner.start_writer();
            return Err(error.clone());
        }
        bump(&inner.counters.l2_writes);
        Ok(())
    }

    /// Sends every queued L2 write now (when the circuit allows); for tests and shutdown.
    pub async fn flush_pending(&self) -> Result<()> {
        Inner::drain(&self.inner).await
    }
}

impl<V: Clone + Send + Sync + 'static> Inner<V> {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending<V>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn pending_len(&self) -> usize {
        self.pending().ops.len()
    }

    fn take_pending(&self, key: &Key) {
        let mut pending = self.pending();
        if pending.ops.remove(key).is_some() {
            pending.order.retain(|k| k != key);
        }
    }

    fn enqueue(&self, key: Key, op: Op<V>) {
        let mut pending = self.pending();
        if pending.ops.insert(key.clone(), op).is_none() {
            pending.order.push_back(key);
        }
        while pending.ops.len() > self.pending_limit {
            let Some(oldest) = pending.order.pop_front() else {
                break;
            };
            if pending.ops.remove(&oldest).is_some() {
                bump(&self.counters.pending_dropped);
                tracing::warn!(key = %oldest, "L2 write queue full; dropped the oldest write");
            }
        }
    }

    /// One L2 call, through the circuit breaker and a tracing span.
    async fn l2_call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        if !self.breaker.allow() {
            bump(&self.counters.l2_skipped);
            return Err(Error::unavailable("L2 circuit is open"));
        }
        match call
            .instrument(tracing::debug_span!("layercache.l2", op))
            .await
        {
            Ok(value) => {
                self.breaker.success();
                Ok(value)
            }
            Err(error) => {
                self.breaker.failure();
                bump(&self.counters.l2_errors);
                tracing::debug!(op, %error, "L2 call failed");
                Err(error)
            }
        }
    }

    fn start_writer(self: &Arc<Self>) {
        if self.writer_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.writer_running.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(Self::writer(weak));
    }

    /// Sends queued L2 writes until the queue is empty, retrying after failures.
    async fn writer(weak: Weak<Self>) {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let drained = Inner::drain(&inner).await;
            if inner.pending_len() == 0 {
                inner.writer_running.store(false, Ordering::Release);
                // A write queued between the check and the store found the flag still set and
                // started no writer; look once more so it is not stranded.
                if inner.pending_len() == 0 || inner.writer_running.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
            if drained.is_err() {
                // After a failure, rest the whole interval: new writes just join the queue.
                tokio::time::sleep(inner.retry_interval).await;
            }
        }
    }

    /// Sends queued writes in pipelines of up to `WRITE_BATCH`; stops at the first failure.
    async fn drain(self: &Arc<Self>) -> Result<()> {
        let Some(l2) = &self.l2 else { return Ok(()) };
        loop {
            if self.breaker.current() == CircuitState::Open && !self.breaker.cool_down_over() {
                return Err(Error::unavailable("L2 circuit is open"));
            }
            let _order = self.l2_writes.lock().await;
            let (sets, deletes) = {
                let mut pending = self.pending();
                let mut sets = Vec::new();
                let mut deletes = Vec::new();
                while sets.len() + deletes.len() < WRITE_BATCH {
                    let Some(key) = pending.order.pop_front() else {
                        break;
                    };
                    match pending.ops.remove(&key) {
                        Some(Op::Set(entry)) => sets.push((key, entry)),
                        Some(Op::Delete) => deletes.push(key),
                        None => {}
                    }
                }
                (sets, deletes)
            };
            if sets.is_empty() && deletes.is_empty() {
                return Ok(());
            }
            let count = (sets.len() + deletes.len()) as u64;
            let backup: Vec<(Key, Entry<V>)> = sets.clone();
            let mut result = Ok(());
            if !sets.is_empty() {
                result = self.l2_call("set_many", l2.set_many(sets)).await;
            }
            if result.is_ok() && !deletes.is_empty() {
                result = self
                    .l2_call("delete_many", l2.delete_many(&deletes))
                    .await
                    .map(|_| ());
            }
            if let Err(error) = result {
                self.counters
                    .l2_write_failures
                    .fetch_add(count, Ordering::Relaxed);
                // Put them back unless a newer write of the same key was queued meanwhile.
                let mut pending = self.pending();
                for (key, entry) in backup {
                    if !pending.ops.contains_key(&key) {
                        pending.ops.insert(key.clone(), Op::Set(entry));
                        pending.order.push_front(key);
                    }
                }
                for key in deletes {
                    if !pending.ops.contains_key(&key) {
                        pending.ops.insert(key.clone(), Op::Delete);
                        pending.order.push_front(key);
                    }
                }
                return Err(error);
            }
            self.counters.l2_writes.fetch_add(count, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl<V: Clone + Send + Sync + 'static> Backend<V> for TieredBackend<V> {
    async fn get(&self, key: &Key) -> Result<Option<Entry<V>>> {
        let inner = &self.inner;
        if let Some(l1) = &inner.l1 {
            if let Some(entry) = l1.get(key).await? {
                bump(&inner.counters.l1_hits);
                return Ok(Some(entry));
            }
            bump(&inner.counters.l1_misses);
        }
        let Some(l2) = &inner.l2 else { return Ok(None) };
        match inner.l2_call("get", l2.get(key)).await {
            Ok(Some(entry)) => {
                bump(&inner.counters.l2_hits);
                if let Some(l1) = &inner.l1 {
                    l1.set(key, entry.clone()).await?;
                }
                Ok(Some(entry))
            }
            Ok(None) => {
                bump(&inner.counters.l2_misses);
                Ok(None)
            }
            // With an L1, an L2 failure is absorbed: the caller falls back to the loader.
            Err(_) if inner.l1.is_some() => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn set(&self, key: &Key, entry: Entry<V>) -> Result<()> {
        let inner = &self.inner;
        match &inner.l1 {
            Some(l1) => l1.set(key, entry.clone()).await?,
            // With no L1, L2 is the only copy: write it before returning.
            None => return self.set_now(key, entry).await,
        }
        if inner.l2.is_some() {
            inner.enqueue(key.clone(), Op::Set(entry));
            inner.start_writer();
        }
        Ok(())
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        let inner = &self.inner;
        let mut removed = false;
        if let Some(l1) = &inner.l1 {
            removed |= l1.delete(key).await?;
        }
        if let Some(l2) = &inner.l2 {
            let _order = inner.l2_writes.lock().await;
            inner.take_pending(key);
            match inner.l2_call("delete", l2.delete(key)).await {
                Ok(was) => removed |= was,
                Err(error) => {
                    bump(&inner.counters.l2_write_failures);
                    inner.enqueue(key.clone(), Op::Delete);
                    inner.start_writer();
                    if inner.l1.is_none() {
                        return Err(error);
                    }
                }
            }
        }
        Ok(removed)
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry<V>>>> {
        let inner = &self.inner;
        let mut out: Vec<Option<Entry<V>>> = match &inner.l1 {
            Some(l1) => l1.get_many(keys).await?,
            None => keys.iter().map(|_| None).collect(),
        };
        if inner.l1.is_some() {
            for slot in &out {
                bump(if slot.is_some() {
                    &inner.counters.l1_hits
                } else {
                    &inner.counters.l1_misses
                });
            }
        }
        let Some(l2) = &inner.l2 else { return Ok(out) };
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let missing_keys: Vec<Key> = missing.iter().map(|&i| keys[i].clone()).collect();
        let found = match inner.l2_call("get_many", l2.get_many(&missing_keys)).await {
            Ok(found) => found,
            Err(_) if inner.l1.is_some() => return Ok(out),
            Err(error) => return Err(error),
        };
        let mut fill = Vec::new();
        for (&i, entry) in missing.iter().zip(found) {
            match entry {
                Some(entry) => {
                    bump(&inner.counters.l2_hits);
                    fill.push((keys[i].clone(), entry.clone()));
                    out[i] = Some(entry);
                }
                None => bump(&inner.counters.l2_misses),
            }
        }
        if let Some(l1) = &inner.l1
            && !fill.is_empty()
        {
            l1.set_many(fill).await?;
        }
        Ok(out)
    }

    async fn set_many(&self, items: Vec<(Key, Entry<V>)>) -> Result<()> {
        let inner = &self.inner;
        let Some(l1) = &inner.l1 else {
            for (key, entry) in items {
                self.set_now(&key, entry).await?;
            }
            return Ok(());
        };
        l1.set_many(items.clone()).await?;
        if inner.l2.is_some() {
            for (key, entry) in items {
                inner.enqueue(key, Op::Set(entry));
            }
            inner.start_writer();
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        let mut removed = 0;
        for key in keys {
            removed += u64::from(self.delete(key).await?);
        }
        Ok(removed)
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        let inner = &self.inner;
        let mut removed = 0;
        if let Some(l1) = &inner.l1 {
            removed = removed.max(l1.clear(namespace).await?);
        }
        if let Some(l2) = &inner.l2 {
            let _order = inner.l2_writes.lock().await;
            {
                let mut pending = inner.pending();
                pending.ops.retain(|key, _| !namespace.contains(key));
                let ops = &pending.ops;
                let order: VecDeque<Key> = pending
                    .order
                    .iter()
                    .filter(|k| ops.contains_key(*k))
                    .cloned()
                    .collect();
                pending.order = order;
            }
            removed = removed.max(inner.l2_call("clear", l2.clear(namespace)).await?);
        }
        Ok(removed)
    }

    fn name(&self) -> &'static str {
        "tiered"
    }
}
