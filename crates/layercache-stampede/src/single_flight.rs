//! Per-key coalescing of concurrent work in one process.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use layercache_core::{Error, Key, Result};
use tokio::sync::Notify;

/// The default bound on how long a caller waits for a flight (10 s).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

/// Shards of the flights map (a power of two): concurrent misses of different keys rarely share
/// a lock.
const MAP_SHARDS: usize = 64;

type Hasher = foldhash::fast::RandomState;
type Work<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

/// The outcome of one flight, for the callers that joined it; made when the first one joins.
struct Cell<T> {
    outcome: OnceLock<Result<T>>,
    landed: Notify,
}

impl<T> Cell<T> {
    fn new() -> Arc<Self> {
        Arc::new(Cell {
            outcome: OnceLock::new(),
            landed: Notify::new(),
        })
    }

    fn land(&self, result: Result<T>) {
        // Set once: a landing delivers exactly one outcome.
        let _ = self.outcome.set(result);
        self.landed.notify_waiters();
    }
}

struct Flight<T> {
    id: u64,
    /// `None` until a caller joins: a flight nobody joins allocates nothing for its outcome.
    cell: Option<Arc<Cell<T>>>,
}

impl<T> Flight<T> {
    fn join(&mut self) -> Arc<Cell<T>> {
        Arc::clone(self.cell.get_or_insert_with(Cell::new))
    }
}

/// A caller's place in a flight; see [`SingleFlight::join_or_lead`].
pub struct Waiter<T>(Arc<Cell<T>>);

impl<T> fmt::Debug for Waiter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Waiter")
    }
}

/// How a caller takes part in the flight of a key; see [`SingleFlight::join_or_lead`].
pub enum Joined<T: Send + Sync + 'static> {
    /// No flight was running: this caller leads one. Await the [`Leading`] to run the work.
    Led(Leading<T>),
    /// A flight was running: wait for its outcome with [`SingleFlight::wait`].
    Joined(Waiter<T>),
}

impl<T: Send + Sync + 'static> fmt::Debug for Joined<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Joined::Led(_) => f.write_str("Led"),
            Joined::Joined(_) => f.write_str("Joined"),
        }
    }
}

type Flights<T> = HashMap<Key, Flight<T>, Hasher>;

/// One shard of the flights: those in progress by key, and those a write detached (by id) that
/// still have callers waiting.
///
/// The shard counts its own flights and joins (under its lock, already held): counters shared by
/// every core would cost each miss a contended cache line.
struct Shard<T> {
    flights: Flights<T>,
    detached: Vec<(u64, Arc<Cell<T>>)>,
    /// Flights started in this shard; also the sequence of their ids.
    led: u64,
    /// Callers that joined a flight of this shard.
    coalesced: u64,
}

impl<T> Default for Shard<T> {
    fn default() -> Self {
        Shard {
            flights: HashMap::default(),
            detached: Vec::new(),
            led: 0,
            coalesced: 0,
        }
    }
}

impl<T> Shard<T> {
    /// Detaches the flight of `key`, keeping its waiters' cell until it lands.
    fn detach(&mut self, key: &Key) {
        if let Some(Flight {
            id,
            cell: Some(cell),
        }) = self.flights.remove(key)
        {
            self.detached.push((id, cell));
        }
    }

    /// Forgets flight `id` of `key`, as it lands; the cell of its waiters, if any joined.
    fn take_landed(&mut self, key: &Key, id: u64) -> Option<Arc<Cell<T>>> {
        if self.flights.get(key).is_some_and(|f| f.id == id) {
            return self.flights.remove(key).and_then(|f| f.cell);
        }
        let at = self.detached.iter().position(|(i, _)| *i == id)?;
        Some(self.detached.swap_remove(at).1)
    }
}

struct Shared<T> {
    flights: Box<[CachePadded<Mutex<Shard<T>>>]>,
}

impl<T> Shared<T> {
    /// The shard of the flights map that holds `key`.
    fn flights(&self, key: &Key) -> MutexGuard<'_, Shard<T>> {
        lock(&self.flights[(key.hash_value() as usize) & (MAP_SHARDS - 1)])
    }

    /// The counters, summed over the shards.
    fn stats(&self) -> SingleFlightStats {
        let mut stats = SingleFlightStats::default();
        for shard in &self.flights {
            let shard = lock(shard);
            stats.led += shard.led;
            stats.coalesced += shard.coalesced;
            stats.in_flight += shard.flights.len() as u64;
        }
        stats
    }
}

fn lock<M>(mutex: &Mutex<M>) -> MutexGuard<'_, M> {
    // A panic while a map is locked cannot leave it inconsistent (each critical section is one
    // insert, lookup or remove), so a poisoned lock is used as it is.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counters of a [`SingleFlight`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SingleFlightStats {
    /// Flights started (each ran its work once).
    pub led: u64,
    /// Callers that joined a flight already in progress instead of starting one.
    pub coalesced: u64,
    /// Flights in progress now.
    pub in_flight: u64,
}

/// Coalesces concurrent work on the same key: the first caller (the leader) starts the work, the
/// callers that arrive while it runs (followers) wait for its outcome, and everyone gets a clone
/// of the same result — value or error.
///
/// The leader runs the work itself, in its caller's task: no task is spawned unless the work must
/// outlive its caller. So:
/// - **cancellation-safe**: when the leader's caller drops its future (an aborted HTTP request,
///   a timeout) before the work finished, the rest of the work is handed to a new tokio task: it
///   still completes and the followers get its outcome;
/// - **panic-safe**: a panicking work becomes an error for the leader and every waiter (never a
///   hang), and the key is free again at once, so the next call starts new work.
///
/// Each caller waits at most `max_wait` (default [`DEFAULT_MAX_WAIT`]; `Duration::MAX` waits
/// without bound) and then gets a `Timeout` error; the work itself goes on and its outcome still
/// reaches the callers still waiting. A flight is forgotten the moment it lands, so the group
/// holds nothing but the flights in progress.
///
/// ```
/// use layercache_core::Key;
/// use layercache_stampede::SingleFlight;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let flights = SingleFlight::<u64>::new();
/// let key = Key::new("answer")?;
/// let (a, b) = tokio::join!(
///     flights.run(&key, async {
///         tokio::task::yield_now().await; // the source takes a while
///         Ok(42)
///     }),
///     flights.run(&key, async { Ok(7) }), // joins the first flight: its work never runs
/// );
/// assert_eq!((a?, b?), (42, 42));
/// assert_eq!(flights.stats().led, 1);
/// # Ok::<(), layercache_core::Error>(())
/// # }).unwrap();
/// ```
pub struct SingleFlight<T> {
    shared: Arc<Shared<T>>,
    max_wait: Duration,
}

impl<T> Clone for SingleFlight<T> {
    fn clone(&self) -> Self {
        SingleFlight {
            shared: Arc::clone(&self.shared),
            max_wait: self.max_wait,
        }
    }
}

impl<T> fmt::Debug for SingleFlight<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleFlight")
            .field("flights", &self.shared.stats().in_flight)
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

impl<T: Clone + Send + Sync + 'static> Default for SingleFlight<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// A single-flight group with the default bound on waiting.
    pub fn new() -> Self {
        SingleFlight {
            shared: Arc::new(Shared {
                flights: (0..MAP_SHARDS)
                    .map(|_| CachePadded::new(Mutex::new(Shard::default())))
                    .collect(),
            }),
            max_wait: DEFAULT_MAX_WAIT,
        }
    }

    /// Sets how long a caller waits for a flight before it gets a `Timeout` error.
    #[must_use]
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The counters so far.
    pub fn stats(&self) -> SingleFlightStats {
        self.shared.stats()
    }

    /// Whether work for `key` is in progress.
    pub fn is_in_flight(&self, key: &Key) -> bool {
        self.shared.flights(key).flights.contains_key(key)
    }

    /// Runs one batched `work` for the keys of `keys` that have no flight yet, and joins the flights
    /// already running for the others; returns each key's outcome, in order. `work` receives the
    /// keys it leads (in first-seen order, without duplicates) and must return one outcome per key
    /// (a wrong count fails them all). Every led key is a flight of its own for other callers, who
    /// can join it while the batch runs.
    pub async fn run_many<F, Fut>(&self, keys: &[Key], work: F) -> Vec<Result<T>>
    where
        F: FnOnce(Vec<Key>) -> Fut,
        Fut: Future<Output = Vec<Result<T>>> + Send + 'static,
    {
        let mut receivers = Vec::with_capacity(keys.len());
        let mut led: Vec<Key> = Vec::new();
        let mut led_set: HashSet<&Key> = HashSet::new();
        let mut landings = Vec::new();
        {
            for key in keys {
                let mut shard = self.shared.flights(key);
                if let Some(flight) = shard.flights.get_mut(key) {
                    receivers.push(flight.join());
                    if !led_set.contains(key) {
                        shard.coalesced += 1;
                    }
                    continue;
                }
                // The batch's caller waits for the keys it leads like any joined caller.
                let cell = Cell::new();
                let landing = self.insert_flight(&mut shard, key, Some(Arc::clone(&cell)));
                drop(shard);
                landings.push(landing);
                led.push(key.clone());
                led_set.insert(key);
                receivers.push(cell);
            }
        }
        if !led.is_empty() {
            let batch = work(led);
            tokio::spawn(async move {
                let mut landings = landings;
                let outcomes = batch.await;
                if outcomes.len() == landings.len() {
                    for (landing, outcome) in landings.iter_mut().zip(outcomes) {
                        landing.land(outcome);
                    }
                } else {
                    let error = Error::loader(format!(
                        "a batch load of {} keys returned {} outcomes",
                        landings.len(),
                        outcomes.len()
                    ));
                    for landing in &mut landings {
                        landing.land(Err(error.clone()));
                    }
                }
            });
        }
        let mut out = Vec::with_capacity(keys.len());
        for (key, receiver) in keys.iter().zip(receivers) {
            out.push(self.wait(key, Waiter(receiver)).await);
        }
        out
    }

    /// Detaches the flight of `key`, if any: it runs on and its callers get its outcome, but new
    /// callers start a new flight. Used when a write makes the running flight's value outdated.
    pub fn forget(&self, key: &Key) {
        self.shared.flights(key).detach(key);
    }

    /// [`forget`](Self::forget) every flight whose key matches `matches` (a namespace clear).
    pub fn forget_where(&self, matches: impl Fn(&Key) -> bool) {
        for shard in &self.shared.flights {
            let mut shard = lock(shard);
            let detached: Vec<Key> = shard
                .flights
                .keys()
                .filter(|key| matches(key))
                .cloned()
                .collect();
            for key in &detached {
                shard.detach(key);
            }
        }
    }

    /// Runs `work` for `key`, or joins the flight already running for it, and returns the outcome.
    /// `work` is dropped unstarted when a flight is joined.
    pub async fn run<F>(&self, key: &Key, work: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.run_lazy(key, || work).await.1
    }

    /// Like [`run`](Self::run), but the work is made only when this caller leads (so a joining
    /// caller allocates nothing), and the answer says whether it led (`true`) or joined.
    pub async fn run_lazy<F, M>(&self, key: &Key, make_work: M) -> (bool, Result<T>)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        match self.join_or_lead(key, make_work) {
            // The leader waits no longer than a follower would: past `max_wait` the rest of the
            // work goes on in a task of its own.
            Joined::Led(leading) => (
                true,
                self.within_max_wait(key, leading).await.unwrap_or_else(Err),
            ),
            Joined::Joined(waiter) => (false, self.wait(key, waiter).await),
        }
    }

    /// Joins the flight of `key`, or leads a new one that runs `make_work()` when the returned
    /// [`Leading`] is awaited — in the caller's task, with no task spawned unless the caller
    /// drops it before the work finished.
    ///
    /// ```
    /// use layercache_core::Key;
    /// use layercache_stampede::{Joined, SingleFlight};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let flights = SingleFlight::<u64>::new();
    /// let key = Key::new("k")?;
    /// let Joined::Led(leading) = flights.join_or_lead(&key, || async { Ok(1) }) else {
    ///     panic!("no flight was running");
    /// };
    /// // A second caller joins the flight: its work is never made.
    /// let Joined::Joined(waiter) = flights.join_or_lead(&key, || async { Ok(2) }) else {
    ///     panic!("the first flight is running");
    /// };
    /// assert_eq!(leading.await?, 1);
    /// assert_eq!(flights.wait(&key, waiter).await?, 1);
    /// # Ok::<(), layercache_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn join_or_lead<F, M>(&self, key: &Key, make_work: M) -> Joined<T>
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let mut shard = self.shared.flights(key);
        if let Some(flight) = shard.flights.get_mut(key) {
            let waiter = Waiter(flight.join());
            shard.coalesced += 1;
            return Joined::Joined(waiter);
        }
        let work: Work<T> = Box::pin(make_work());
        let landing = self.insert_flight(&mut shard, key, None);
        Joined::Led(Leading {
            work: Some(work),
            landing: Some(landing),
        })
    }

    /// Starts `make_work()` for `key` in the background unless a flight for it is already
    /// running; `true` when it started. For background refreshes: one per key at a time.
    pub fn spawn_if_idle<F, M>(&self, key: &Key, make_work: M) -> bool
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let shard = self.shared.flights(key);
        if shard.flights.contains_key(key) {
            return false;
        }
        let work = make_work();
        self.start(shard, key, work);
        true
    }

    /// Registers a flight of `key` and starts `work` for it, releasing `flights` before the
    /// spawn: a runtime that is shutting down drops the task inside `spawn`, and the landing's
    /// `Drop` then takes the map's lock to deliver the error.
    fn start<F>(&self, mut shard: MutexGuard<'_, Shard<T>>, key: &Key, work: F)
    where
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let landing = self.insert_flight(&mut shard, key, None);
        drop(shard);
        tokio::spawn(async move {
            let mut landing = landing;
            let result = work.await;
            landing.land(result);
        });
    }

    /// Registers a new flight of `key` (with the outcome's `cell` when a caller waits from the
    /// start): the landing that will deliver its outcome.
    fn insert_flight(
        &self,
        shard: &mut Shard<T>,
        key: &Key,
        cell: Option<Arc<Cell<T>>>,
    ) -> Landing<T> {
        // Unique within the shard, which is all an id is compared within (a key's flights are
        // always in its shard).
        let id = shard.led;
        shard.led += 1;
        shard.flights.insert(key.clone(), Flight { id, cell });
        Landing {
            shared: Arc::clone(&self.shared),
            key: key.clone(),
            id,
            landed: false,
        }
    }

    /// Waits for the outcome of a flight joined or started with
    /// [`join_or_lead`](Self::join_or_lead), at most the group's `max_wait`.
    pub async fn wait(&self, key: &Key, waiter: Waiter<T>) -> Result<T> {
        let cell = waiter.0;
        let landed = async {
            loop {
                let notified = cell.landed.notified();
                let mut notified = std::pin::pin!(notified);
                // Registered before the outcome is checked: a landing in between still wakes us.
                notified.as_mut().enable();
                if let Some(result) = cell.outcome.get() {
                    return result.clone();
                }
                notified.await;
            }
        };
        self.within_max_wait(key, landed).await?
    }

    /// Runs `future` for at most the group's `max_wait`; a `Timeout` error after that.
    async fn within_max_wait<F: Future>(&self, key: &Key, future: F) -> Result<F::Output> {
        match tokio::time::Instant::now().checked_add(self.max_wait) {
            Some(deadline) if self.max_wait != Duration::MAX => {
                tokio::time::timeout_at(deadline, future)
                    .await
                    .map_err(|_| {
                        Error::timeout(format!(
                            "waited {:?} for the flight loading {key}",
                            self.max_wait
                        ))
                    })
            }
            _ => Ok(future.await),
        }
    }
}

/// Delivers a flight's outcome and frees its key, exactly once: when the work finishes, or — if the
/// work panicked or its task was dropped — when this is dropped.
struct Landing<T: Send + Sync + 'static> {
    shared: Arc<Shared<T>>,
    key: Key,
    id: u64,
    landed: bool,
}

impl<T: Send + Sync + 'static> Landing<T> {
    /// Forgets the flight as it lands (exactly once): the map holds only flights in progress, so
    /// a landed value is never kept alive here. Once it is out of the map nobody can join it, so
    /// its outcome is set after the lock is released. The cell of its waiters, if any joined.
    fn forget(&mut self) -> Option<Arc<Cell<T>>> {
        if self.landed {
            return None;
        }
        self.landed = true;
        self.shared
            .flights(&self.key)
            .take_landed(&self.key, self.id)
    }

    /// Lands `result` for the followers, cloning it only if one joined; hands it back.
    fn land_shared(&mut self, result: Result<T>) -> Result<T>
    where
        T: Clone,
    {
        if let Some(cell) = self.forget() {
            cell.land(result.clone());
        }
        result
    }

    /// Lands `result`. Nobody waiting is fine: the work's side effects (filling the cache) are
    /// what matter.
    fn land(&mut self, result: Result<T>) {
        if let Some(cell) = self.forget() {
            cell.land(result);
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Landing<T> {
    fn drop(&mut self) {
        if !self.landed {
            self.land(Err(Error::loader(format!(
                "the load of {} panicked or was cancelled",
                self.key
            ))));
        }
    }
}

/// A flight this caller leads: awaiting it runs the work in the caller's task and lands the
/// outcome for the callers that joined. Dropped before the work finished, it hands the rest of
/// the work to a new tokio task (or, outside a runtime or while panicking, lands an error).
pub struct Leading<T: Send + Sync + 'static> {
    work: Option<Work<T>>,
    landing: Option<Landing<T>>,
}

impl<T: Send + Sync + 'static> fmt::Debug for Leading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leading")
            .field("finished", &self.work.is_none())
            .finish()
    }
}

impl<T: Clone + Send + Sync + 'static> Future for Leading<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = &mut *self;
        let Some(work) = this.work.as_mut() else {
            return Poll::Ready(Err(Error::loader("a flight was polled after it landed")));
        };
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => result,
            Err(_panic) => Err(Error::loader(format!(
                "the load of {} panicked",
                this.landing.as_ref().map_or("?", |l| l.key.as_str())
            ))),
        };
        this.work = None;
        Poll::Ready(match this.landing.take() {
            Some(mut landing) => landing.land_shared(result),
            None => result,
        })
    }
}

impl<T: Send + Sync + 'static> Drop for Leading<T> {
    fn drop(&mut self) {
        let (Some(work), Some(mut landing)) = (self.work.take(), self.landing.take()) else {
            return;
        };
        if std::thread::panicking() {
            return; // the landing's drop delivers an error
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let result = work.await;
                landing.land(result);
            });
        }
    }
}
