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
mod builder;
mod durable;
mod memory;
mod stats;
mod types;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

#[cfg(doc)]
use layercache_core::WriteJournal;
use layercache_core::{Backend, Clock, EntryOptions, Error, Key, Result, SystemClock, Writer};
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::task::JoinHandle;

use self::builder::Settings;
use self::durable::Durable;
use self::memory::MemoryQueue;
use self::stats::{Counters, add};
use self::types::DeadLetterHook;

pub use self::builder::WriteBehindBuilder;
pub use self::stats::WriteBehindStats;
pub use self::types::{DeadLetter, QueueFull, WhenFull};

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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections never leave their data half-updated, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
