//! Write-behind: [`put`](WriteBehind::put) updates the cache now and the source of truth later, in
//! coalesced batches written by a background worker.
//!
//! Two queues:
//!
//! - **in memory** (the default): a bounded map of pending writes, one slot per key. Fast, but a
//!   crash loses what was not yet written.
//! - **durable** ([`WriteBehindBuilder::durable`]): every write is appended to a
//!   [`WriteJournal`] (a Redis Stream, `layercache_redis::RedisWriteJournal`) before `put`
//!   returns; a worker reads it as one consumer of a consumer group, writes the source, and
//!   acknowledges only then. A worker that dies leaves its entries pending; another worker (another
//!   process, or the same one restarted) takes them over once they have been idle for
//!   [`claim_idle`](WriteBehindBuilder::claim_idle). Delivery is at-least-once: a write may reach
//!   the source twice, never zero times once `put` has returned `Ok`.

mod batch;
mod durable;
mod memory;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use layercache_core::{
    Backend, Clock, EntryOptions, Error, JsonCodec, Key, PayloadCodec, Result, SharedClock,
    SystemClock, WriteJournal, Writer,
};
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::task::JoinHandle;

use self::durable::Durable;
use self::memory::MemoryQueue;

/// The default bound on pending writes (10,000): distinct keys in memory, journal entries in
/// durable mode.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// The default number of writes per batch (100).
pub const DEFAULT_BATCH_SIZE: usize = 100;
/// The default age at which a batch that is not full is written anyway (100 ms).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(100);
/// The default number of retries of a failed batch before its writes are dead-lettered (5).
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// The default pause before the first retry (50 ms); it doubles, with jitter, up to
/// [`DEFAULT_MAX_BACKOFF`].
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// The default longest pause between retries (5 s).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The default bound on one call to the [`Writer`] (30 s); a call that overruns is a failure.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default longest wait for space in a full queue with [`WhenFull::Wait`] (5 s).
pub const DEFAULT_FULL_WAIT: Duration = Duration::from_secs(5);
/// The default idle time after which a pending journal entry is taken over (30 s). It must exceed
/// the longest a batch can take, retries included, or live workers' entries are written twice.
pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);
/// The default interval between two looks for stale journal entries (5 s).
pub const DEFAULT_CLAIM_INTERVAL: Duration = Duration::from_secs(5);
/// The default longest blocking read of the journal (1 s): how long an idle worker sleeps in
/// `XREADGROUP` before it looks at its other duties.
pub const DEFAULT_READ_BLOCK: Duration = Duration::from_secs(1);

/// Stripes of the per-key write lock.
const STRIPES: usize = 256;

/// What [`WriteBehind::put`] and [`WriteBehind::delete`] do when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenFull {
    /// Wait for space, at most `max` (none: without bound); past it, a `Timeout` error carrying
    /// [`QueueFull`]. The default, with `max` = [`DEFAULT_FULL_WAIT`].
    Wait {
        /// The longest wait, or `None` to wait without bound.
        max: Option<Duration>,
    },
    /// Fail at once with an `Unavailable` error (temporary) carrying [`QueueFull`].
    Reject,
}

impl Default for WhenFull {
    fn default() -> Self {
        WhenFull::Wait {
            max: Some(DEFAULT_FULL_WAIT),
        }
    }
}

/// The cause attached to the error of a write refused because the queue was full.
///
/// ```
/// # use layercache_strategy::QueueFull;
/// # fn check(err: &layercache_core::Error) {
/// if QueueFull::matches(err) { /* shed load */ }
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull {
    /// The capacity in force.
    pub capacity: usize,
}

impl QueueFull {
    /// Whether `error` is a write refused because the queue was full.
    pub fn matches(error: &Error) -> bool {
        std::error::Error::source(error).is_some_and(|s| s.downcast_ref::<QueueFull>().is_some())
    }
}

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "write-behind queue is full ({} writes)", self.capacity)
    }
}

impl std::error::Error for QueueFull {}

/// A write that could not reach the source of truth, handed to the dead-letter hook.
#[derive(Debug)]
#[non_exhaustive]
pub struct DeadLetter<'a, V> {
    /// The key.
    pub key: &'a Key,
    /// The value of a put; `None` for a delete.
    pub value: Option<&'a V>,
    /// The last error.
    pub error: &'a Error,
    /// Source calls made for it (batch attempts, plus the final attempt on its own).
    pub attempts: u32,
}

type DeadLetterHook<V> = Arc<dyn Fn(DeadLetter<'_, V>) + Send + Sync>;
type Journal<V> = (Arc<dyn WriteJournal>, Arc<dyn PayloadCodec<V>>);

/// A point-in-time view of a [`WriteBehind`]'s counters.
///
/// The mean batch size is `batched / batches` ([`mean_batch`](Self::mean_batch)).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct WriteBehindStats {
    /// Writes waiting for the source: distinct keys queued or being written (in memory), or
    /// entries in the journal not yet acknowledged, as of the worker's last look (durable).
    pub queue_depth: u64,
    /// Age of the oldest write not yet done (zero when none).
    pub lag: Duration,
    /// Puts and deletes accepted.
    pub accepted: u64,
    /// Accepted writes superseded by a later write of the same key before they were written.
    pub coalesced: u64,
    /// Writes refused because the queue was full.
    pub rejected: u64,
    /// Batches written (each one `Writer::write_many` call for its puts, plus one
    /// `Writer::remove` per delete).
    pub batches: u64,
    /// Writes in all batches, after coalescing.
    pub batched: u64,
    /// The largest batch.
    pub max_batch: u64,
    /// Writes that reached the source.
    pub written: u64,
    /// Calls made to the [`Writer`], failed ones included.
    pub source_calls: u64,
    /// Batch attempts repeated after a failure.
    pub retries: u64,
    /// Source calls that failed (an error, a panic or a timeout).
    pub failures: u64,
    /// Writes handed to the dead-letter hook.
    pub dead_letters: u64,
    /// Cache updates of `put`/`delete` that failed (the write was still accepted).
    pub cache_errors: u64,
    /// Durable: journal entries taken over from stale consumers.
    pub claimed: u64,
    /// Durable: journal calls of the worker that failed.
    pub journal_errors: u64,
    /// Durable: journal entries whose payload did not decode (logged and dropped).
    pub undecodable: u64,
}

impl WriteBehindStats {
    /// The mean number of writes per batch.
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.batched as f64 / self.batches as f64
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    coalesced: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    batched: AtomicU64,
    max_batch: AtomicU64,
    written: AtomicU64,
    source_calls: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    dead_letters: AtomicU64,
    cache_errors: AtomicU64,
    claimed: AtomicU64,
    journal_errors: AtomicU64,
    undecodable: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections never leave their data half-updated, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone)]
struct Settings {
    options: EntryOptions,
    clock: SharedClock,
    capacity: usize,
    when_full: WhenFull,
    batch_size: usize,
    max_delay: Duration,
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    write_timeout: Duration,
    evict_on_dead_letter: bool,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("options", &self.options)
            .field("capacity", &self.capacity)
            .field("when_full", &self.when_full)
            .field("batch_size", &self.batch_size)
            .field("max_delay", &self.max_delay)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("write_timeout", &self.write_timeout)
            .finish()
    }
}

enum Queue<V> {
    Memory(MemoryQueue<V>),
    Durable(Durable<V>),
}

/// What the worker and every handle share.
struct Shared<V> {
    cache: Arc<dyn Backend<V>>,
    writer: Arc<dyn Writer<V>>,
    settings: Settings,
    dead_letter: Option<DeadLetterHook<V>>,
    queue: Queue<V>,
    counters: Counters,
    stripes: Box<[Arc<tokio::sync::Mutex<()>>]>,
    hasher: RandomState,
    /// Shutdown was asked: the worker drains and stops.
    closing: AtomicBool,
    /// The worker has stopped.
    stopped: AtomicBool,
    /// Wakes the worker: a write arrived, a flush or shutdown was asked.
    wake: Notify,
    /// The worker made progress: a batch was taken (space) or finished, or it stopped.
    progress: Notify,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<V> Shared<V> {
    fn stripe(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let i = (self.hasher.hash_one(key) as usize) % self.stripes.len();
        Arc::clone(&self.stripes[i])
    }

    fn stopped_error(&self) -> Error {
        Error::unavailable("the write-behind worker has stopped").set_temporary(false)
    }

    /// Waits until `done()` holds, waking on progress and, in durable mode, at least every `poll`.
    async fn wait_for(&self, poll: Option<Duration>, mut done: impl AsyncCheck) -> Result<()> {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done.check().await? {
                return Ok(());
            }
            if self.stopped.load(Ordering::SeqCst) {
                return Err(self.stopped_error());
            }
            match poll {
                Some(poll) => {
                    let _ = tokio::time::timeout(poll, notified).await;
                }
                None => notified.await,
            }
        }
    }
}

/// A condition `wait_for` checks, possibly with I/O.
trait AsyncCheck {
    fn check(&mut self) -> impl Future<Output = Result<bool>> + Send;
}

/// Marks the worker stopped and wakes every waiter when the worker ends, however it ends.
struct StoppedOnDrop<V>(Arc<Shared<V>>);

impl<V> Drop for StoppedOnDrop<V> {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.progress.notify_waiters();
    }
}

/// The last handle's drop asks the worker to drain and stop.
struct Handle<V>(Arc<Shared<V>>);

impl<V> Drop for Handle<V> {
    fn drop(&mut self) {
        self.0.closing.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

/// Removes the key from the cache if a `put`/`delete` is dropped after its write may have been
/// accepted but before the cache was updated, so the cache never keeps a value the source is
/// about to replace. The key's write lock is held until the removal is done.
struct CacheRepair<V: Send + Sync + 'static> {
    cache: Arc<dyn Backend<V>>,
    key: Key,
    stripe: Option<OwnedMutexGuard<()>>,
    armed: bool,
}

impl<V: Send + Sync + 'static> Drop for CacheRepair<V> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cache, key, stripe) = (
                Arc::clone(&self.cache),
                self.key.clone(),
                self.stripe.take(),
            );
            runtime.spawn(async move {
                let _stripe = stripe;
                if let Err(error) = cache.delete(&key).await {
                    tracing::warn!(%key, %error, "write-behind: cannot remove a key after a cancelled write");
                }
            });
        }
    }
}

/// Write-behind over a cache [`Backend`] and a source [`Writer`]: [`put`](Self::put) updates the
/// cache now and the source later, in coalesced batches written by a background worker.
///
/// Two queues:
///
/// - **in memory** (the default): a bounded map of pending writes, one slot per key. Fast, but a
///   crash loses what was not yet written.
/// - **durable** ([`WriteBehindBuilder::durable`]): every write is appended to a [`WriteJournal`]
///   (a Redis Stream, `layercache_redis::RedisWriteJournal`) before `put` returns; the worker reads
///   it as one consumer of a consumer group, writes the source, and acknowledges only then. A
///   worker that dies leaves its entries pending; another worker (another process, or this one
///   restarted) takes them over once idle for [`claim_idle`](WriteBehindBuilder::claim_idle).
///   Delivery is at-least-once: a write may reach the source twice, never zero times once `put`
///   has returned `Ok`.
///
/// In both:
///
/// - [`put`](Self::put) / [`delete`](Self::delete): accept the write (queue it, or append it to the
///   journal), then update the cache. Writes of one key are serialized (a striped per-key lock), so
///   the cache and the source see them in the same order. A failed cache update does not fail the
///   call: the write is accepted; the key is removed from the cache if possible, and counted.
/// - The worker writes batches of up to [`batch_size`](WriteBehindBuilder::batch_size) writes, or
///   fewer once the oldest is [`max_delay`](WriteBehindBuilder::max_delay) old; only the last write
///   of each key in a batch reaches the source (in memory, a key's writes are coalesced while they
///   wait). Puts go in one `Writer::write_many`, deletes through `Writer::remove`.
/// - A failed batch is retried with exponential backoff and jitter, up to
///   [`max_retries`](WriteBehindBuilder::max_retries) times (a permanent error skips the
///   retries); then each of its writes is tried once on its own, so one bad write does not sink
///   the others, and those that still fail go to the [dead-letter hook](WriteBehindBuilder::dead_letter).
///   A `Writer` that panics or overruns [`write_timeout`](WriteBehindBuilder::write_timeout) has
///   failed; the worker lives on.
/// - [`flush`](Self::flush) returns once every write accepted before it reached the source or the
///   dead-letter hook; [`shutdown`](Self::shutdown) flushes and stops the worker. Dropping the last
///   handle asks the worker to drain in the background.
///
/// **Order across processes (durable):** one worker writes in journal order. Several workers on
/// one stream (several processes) share its entries, so two writes of one key can reach the source
/// out of order; and a taken-over entry is written after newer ones another worker already wrote.
/// Where that matters, give each process its own stream, or make the `Writer` refuse older
/// versions.
pub struct WriteBehind<V: Send + Sync + 'static> {
    shared: Arc<Shared<V>>,
    _handle: Arc<Handle<V>>,
}

impl<V: Send + Sync + 'static> Clone for WriteBehind<V> {
    fn clone(&self) -> Self {
        WriteBehind {
            shared: Arc::clone(&self.shared),
            _handle: Arc::clone(&self._handle),
        }
    }
}

impl<V: Send + Sync + 'static> fmt::Debug for WriteBehind<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.shared.queue {
            Queue::Memory(_) => "memory",
            Queue::Durable(_) => "durable",
        };
        f.debug_struct("WriteBehind")
            .field("mode", &mode)
            .field("cache", &self.shared.cache)
            .field("settings", &self.shared.settings)
            .finish()
    }
}

/// What a queued write asks of the source.
enum Op<V> {
    Put(V),
    Delete,
}

impl<V> WriteBehind<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// A builder over the cache `cache` and the source `writer`, with the defaults above.
    pub fn builder(
        cache: Arc<dyn Backend<V>>,
        writer: Arc<dyn Writer<V>>,
    ) -> WriteBehindBuilder<V> {
        WriteBehindBuilder {
            cache,
            writer,
            settings: Settings {
                options: EntryOptions::default(),
                clock: Arc::new(SystemClock),
                capacity: DEFAULT_CAPACITY,
                when_full: WhenFull::default(),
                batch_size: DEFAULT_BATCH_SIZE,
                max_delay: DEFAULT_MAX_DELAY,
                max_retries: DEFAULT_MAX_RETRIES,
                initial_backoff: DEFAULT_INITIAL_BACKOFF,
                max_backoff: DEFAULT_MAX_BACKOFF,
                write_timeout: DEFAULT_WRITE_TIMEOUT,
                evict_on_dead_letter: true,
            },
            dead_letter: None,
            journal: None,
            durable: durable::Settings::default(),
        }
    }

    /// The cache this write-behind updates.
    pub fn cache(&self) -> &Arc<dyn Backend<V>> {
        &self.shared.cache
    }

    /// Whether writes are journaled (durable mode).
    pub fn is_durable(&self) -> bool {
        matches!(self.shared.queue, Queue::Durable(_))
    }

    /// Accepts a write of `value` under `key` for the source, then stores it in the cache.
    ///
    /// `Ok` means the write is accepted: queued (in memory), or durable in the journal. Errors:
    /// the queue is full ([`QueueFull`], see [`WhenFull`]); the journal could not be reached (the
    /// write was not accepted, the cache is untouched); the worker has stopped.
    pub async fn put(&self, key: &Key, value: V) -> Result<()> {
        let shared = &self.shared;
        let entry = shared.settings.options.entry(
            value.clone(),
            shared.settings.clock.now(),
            Duration::ZERO,
        )?;
        self.write(key, Op::Put(value), Some(entry)).await
    }

    /// Accepts a delete of `key` for the source, then removes it from the cache.
    ///
    /// Errors as [`put`](Self::put).
    pub async fn delete(&self, key: &Key) -> Result<()> {
        self.write(key, Op::Delete, None).await
    }

    async fn write(
        &self,
        key: &Key,
        op: Op<V>,
        entry: Option<layercache_core::Entry<V>>,
    ) -> Result<()> {
        let shared = &self.shared;
        if shared.stopped.load(Ordering::SeqCst) || shared.closing.load(Ordering::SeqCst) {
            return Err(shared.stopped_error());
        }
        let stripe = shared.stripe(key).lock_owned().await;
        let mut repair = CacheRepair {
            cache: Arc::clone(&shared.cache),
            key: key.clone(),
            stripe: Some(stripe),
            armed: false,
        };
        match &shared.queue {
            Queue::Memory(queue) => queue.accept(shared, key, op, &mut repair.armed).await?,
            Queue::Durable(durable) => durable.accept(shared, key, op, &mut repair.armed).await?,
        }
        add(&shared.counters.accepted, 1);
        let updated = match entry {
            Some(entry) => shared.cache.set(key, entry).await,
            None => shared.cache.delete(key).await.map(drop),
        };
        if let Err(error) = updated {
            add(&shared.counters.cache_errors, 1);
            tracing::warn!(%key, %error, "write-behind: cache update failed; the write is accepted");
            if let Err(error) = shared.cache.delete(key).await {
                tracing::warn!(%key, %error, "write-behind: cannot remove the key from the cache either");
            }
        }
        repair.armed = false;
        Ok(())
    }

    /// Returns once every write accepted before the call has reached the source or the dead-letter
    /// hook.
    ///
    /// In durable mode, "accepted" means every entry in the journal when the call began, whoever
    /// appended it; entries this worker dead-lettered and keeps pending
    /// ([`keep_failed`](WriteBehindBuilder::keep_failed)) do not hold it up. Fails if the worker
    /// has stopped, or (durable) if the journal cannot be reached.
    pub async fn flush(&self) -> Result<()> {
        match &self.shared.queue {
            Queue::Memory(queue) => queue.flush(&self.shared).await,
            Queue::Durable(durable) => durable.flush(&self.shared).await,
        }
    }

    /// Flushes, then stops the worker. Later writes fail; in durable mode, entries appended by
    /// other processes stay in the journal for their workers.
    pub async fn shutdown(&self) -> Result<()> {
        let flushed = if self.shared.stopped.load(Ordering::SeqCst) {
            Ok(())
        } else {
            self.flush().await
        };
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let worker = lock(&self.shared.worker).take();
        match worker {
            Some(worker) => {
                if let Err(error) = worker.await {
                    tracing::error!(%error, "write-behind worker ended abnormally");
                }
            }
            None => {
                struct Stopped<'a, V>(&'a Shared<V>);
                impl<V: Send + Sync + 'static> AsyncCheck for Stopped<'_, V> {
                    async fn check(&mut self) -> Result<bool> {
                        Ok(self.0.stopped.load(Ordering::SeqCst))
                    }
                }
                let _ = self.shared.wait_for(None, Stopped(&self.shared)).await;
            }
        }
        flushed
    }

    /// The counters so far, and the queue's depth and lag now.
    pub fn stats(&self) -> WriteBehindStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (queue_depth, lag) = match &self.shared.queue {
            Queue::Memory(queue) => queue.depth_and_lag(),
            Queue::Durable(durable) => durable.depth_and_lag(&self.shared),
        };
        WriteBehindStats {
            queue_depth,
            lag,
            accepted: load(&c.accepted),
            coalesced: load(&c.coalesced),
            rejected: load(&c.rejected),
            batches: load(&c.batches),
            batched: load(&c.batched),
            max_batch: load(&c.max_batch),
            written: load(&c.written),
            source_calls: load(&c.source_calls),
            retries: load(&c.retries),
            failures: load(&c.failures),
            dead_letters: load(&c.dead_letters),
            cache_errors: load(&c.cache_errors),
            claimed: load(&c.claimed),
            journal_errors: load(&c.journal_errors),
            undecodable: load(&c.undecodable),
        }
    }
}

/// Builds a [`WriteBehind`]; see [`WriteBehind::builder`].
pub struct WriteBehindBuilder<V> {
    cache: Arc<dyn Backend<V>>,
    writer: Arc<dyn Writer<V>>,
    settings: Settings,
    dead_letter: Option<DeadLetterHook<V>>,
    journal: Option<Journal<V>>,
    durable: durable::Settings,
}

impl<V> fmt::Debug for WriteBehindBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehindBuilder")
            .field("settings", &self.settings)
            .field("journal", &self.journal.as_ref().map(|(j, _)| j))
            .field("durable", &self.durable)
            .finish()
    }
}

impl<V> WriteBehindBuilder<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// The TTL policy of cached values (default [`EntryOptions::default`]). It should outlast the
    /// queue's lag, or a reader may miss the cache and load the old value from the source.
    #[must_use]
    pub fn options(mut self, options: EntryOptions) -> Self {
        self.settings.options = options;
        self
    }

    /// The clock of cached entries' meta (default the system clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.settings.clock = Arc::new(clock);
        self
    }

    /// The bound on pending writes (default [`DEFAULT_CAPACITY`]). In memory it counts distinct
    /// keys (a write to a key already queued takes no space); in durable mode, journal entries not
    /// yet acknowledged, as last seen by the worker plus those appended since.
    #[must_use]
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.settings.capacity = capacity;
        self
    }

    /// What a write does when the queue is full (default [`WhenFull::Wait`] for at most
    /// [`DEFAULT_FULL_WAIT`]).
    #[must_use]
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.settings.when_full = when_full;
        self
    }

    /// The most writes in one batch (default [`DEFAULT_BATCH_SIZE`]).
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.settings.batch_size = batch_size;
        self
    }

    /// The age at which a batch is written even if not full (default [`DEFAULT_MAX_DELAY`]).
    #[must_use]
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.settings.max_delay = max_delay;
        self
    }

    /// Retries of a failed batch before its writes are dead-lettered (default
    /// [`DEFAULT_MAX_RETRIES`]).
    #[must_use]
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.settings.max_retries = max_retries;
        self
    }

    /// The first and the longest pause between retries (defaults [`DEFAULT_INITIAL_BACKOFF`],
    /// [`DEFAULT_MAX_BACKOFF`]); the pause doubles each time, with up to 50 % taken off at random.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.initial_backoff = initial;
        self.settings.max_backoff = max;
        self
    }

    /// The bound on one call to the writer (default [`DEFAULT_WRITE_TIMEOUT`]).
    #[must_use]
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.settings.write_timeout = timeout;
        self
    }

    /// Called with each write that could not reach the source after its retries. It runs on the
    /// worker: keep it short. A panic in it is caught and logged. Without a hook, dead letters are
    /// logged at error level.
    #[must_use]
    pub fn dead_letter(mut self, hook: impl Fn(DeadLetter<'_, V>) + Send + Sync + 'static) -> Self {
        self.dead_letter = Some(Arc::new(hook));
        self
    }

    /// In memory: whether a dead-lettered key is removed from the cache (default `true`), so the
    /// cache does not keep a value the source never got; a key with a newer write queued since is
    /// left alone. Durable mode never evicts: its dead letters stay in the journal and are tried
    /// again (see [`keep_failed`](Self::keep_failed)), and a newer write of the key may be in
    /// another process's hands.
    #[must_use]
    pub fn evict_on_dead_letter(mut self, evict: bool) -> Self {
        self.settings.evict_on_dead_letter = evict;
        self
    }

    /// Durable mode: journal every write in `journal` before accepting it, values encoded as JSON.
    #[must_use]
    pub fn durable(self, journal: Arc<dyn WriteJournal>) -> Self
    where
        JsonCodec: PayloadCodec<V>,
    {
        self.durable_with_codec(journal, JsonCodec)
    }

    /// Durable mode with values encoded by `codec` (every `layercache_core::Codec` is a
    /// [`PayloadCodec`] for serde types).
    #[must_use]
    pub fn durable_with_codec(
        mut self,
        journal: Arc<dyn WriteJournal>,
        codec: impl PayloadCodec<V>,
    ) -> Self {
        self.journal = Some((journal, Arc::new(codec)));
        self
    }

    /// Durable: this worker's consumer name in the group (default `wb-<pid>-<random>`, new at
    /// each start). Reuse a name only for the same worker restarted.
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.durable.consumer = name.into();
        self
    }

    /// Durable: how long an entry must have been pending before this worker takes it over (default
    /// [`DEFAULT_CLAIM_IDLE`]). It must exceed the longest a batch can take, retries included.
    #[must_use]
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.durable.claim_idle = idle;
        self
    }

    /// Durable: how often the worker looks for stale entries (default [`DEFAULT_CLAIM_INTERVAL`];
    /// it also looks at start).
    #[must_use]
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.durable.claim_interval = interval;
        self
    }

    /// Durable: the longest blocking read of the journal (default [`DEFAULT_READ_BLOCK`]).
    #[must_use]
    pub fn read_block(mut self, block: Duration) -> Self {
        self.durable.read_block = block;
        self
    }

    /// Durable: whether dead-lettered entries stay pending in the journal (default `true`), to be
    /// taken over and tried again after [`claim_idle`](Self::claim_idle) — nothing accepted is
    /// dropped, and the hook may see a write more than once. With `false` they are acknowledged
    /// after the hook.
    #[must_use]
    pub fn keep_failed(mut self, keep: bool) -> Self {
        self.durable.keep_failed = keep;
        self
    }

    fn check(&self) -> Result<()> {
        let s = &self.settings;
        s.options.validate()?;
        if s.capacity == 0 || s.batch_size == 0 {
            return Err(Error::config(
                "write-behind capacity and batch size must be greater than zero",
            ));
        }
        if s.max_delay.is_zero() || s.write_timeout.is_zero() {
            return Err(Error::config(
                "write-behind max delay and write timeout must be greater than zero",
            ));
        }
        if s.initial_backoff > s.max_backoff {
            return Err(Error::config(
                "write-behind initial backoff must not exceed the max backoff",
            ));
        }
        if self.journal.is_some() {
            self.durable.check()?;
        }
        Ok(())
    }

    /// Checks the settings and starts the worker on the current tokio runtime (a `Config` error
    /// outside one).
    pub fn build(self) -> Result<WriteBehind<V>> {
        self.check()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config("WriteBehind::build must run inside a tokio runtime"))?;
        let queue = match self.journal {
            Some((journal, codec)) => Queue::Durable(Durable::new(durable::Config::new(
                journal,
                codec,
                self.durable,
            ))),
            None => Queue::Memory(MemoryQueue::new()),
        };
        let shared = Arc::new(Shared {
            cache: self.cache,
            writer: self.writer,
            settings: self.settings,
            dead_letter: self.dead_letter,
            queue,
            counters: Counters::default(),
            stripes: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            hasher: RandomState::new(),
            closing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            wake: Notify::new(),
            progress: Notify::new(),
            worker: Mutex::new(None),
        });
        let worker_shared = Arc::clone(&shared);
        let worker = runtime.spawn(async move {
            let stopped = StoppedOnDrop(Arc::clone(&worker_shared));
            match &worker_shared.queue {
                Queue::Memory(queue) => queue.run(&worker_shared).await,
                Queue::Durable(durable) => durable.run(&worker_shared).await,
            }
            drop(stopped);
        });
        *lock(&shared.worker) = Some(worker);
        Ok(WriteBehind {
            _handle: Arc::new(Handle(Arc::clone(&shared))),
            shared,
        })
    }
}
