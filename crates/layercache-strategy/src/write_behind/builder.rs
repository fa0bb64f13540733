//! [`WriteBehindBuilder`] and the settings it collects.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use layercache_core::{
    Backend, Clock, EntryOptions, Error, JsonCodec, PayloadCodec, Result, SharedClock,
    WriteJournal, Writer,
};
use tokio::sync::Notify;

use super::durable::{self, Durable};
use super::memory::MemoryQueue;
use super::stats::Counters;
use super::types::{DeadLetter, DeadLetterHook, Journal};
#[cfg(doc)]
use super::{
    DEFAULT_BATCH_SIZE, DEFAULT_CAPACITY, DEFAULT_CLAIM_IDLE, DEFAULT_CLAIM_INTERVAL,
    DEFAULT_FULL_WAIT, DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_DELAY,
    DEFAULT_MAX_RETRIES, DEFAULT_READ_BLOCK, DEFAULT_WRITE_TIMEOUT,
};
use super::{Handle, Queue, STRIPES, Shared, StoppedOnDrop, WhenFull, WriteBehind, lock};

#[derive(Clone)]
pub(super) struct Settings {
    pub(super) options: EntryOptions,
    pub(super) clock: SharedClock,
    pub(super) capacity: usize,
    pub(super) when_full: WhenFull,
    pub(super) batch_size: usize,
    pub(super) max_delay: Duration,
    pub(super) max_retries: u32,
    pub(super) initial_backoff: Duration,
    pub(super) max_backoff: Duration,
    pub(super) write_timeout: Duration,
    pub(super) evict_on_dead_letter: bool,
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

/// Builds a [`WriteBehind`]; see [`WriteBehind::builder`].
pub struct WriteBehindBuilder<V> {
    pub(super) cache: Arc<dyn Backend<V>>,
    pub(super) writer: Arc<dyn Writer<V>>,
    pub(super) settings: Settings,
    pub(super) dead_letter: Option<DeadLetterHook<V>>,
    pub(super) journal: Option<Journal<V>>,
    pub(super) durable: durable::Settings,
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
