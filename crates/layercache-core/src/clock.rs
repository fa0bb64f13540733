use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::entry::Timestamp;

/// A source of wall-clock time, injectable so TTL and early-expiry behaviour can be tested
/// deterministically.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// The current time for a decision that stores nothing (is an entry still fresh?), which a
    /// clock may answer faster and up to [`READ_CLOCK_ERROR`] off. Never use it for a time that
    /// is stored or compared across processes (an entry's creation, a tombstone). Defaults to
    /// [`now`](Self::now).
    ///
    /// ```
    /// use layercache_core::{Clock, READ_CLOCK_ERROR, SystemClock};
    ///
    /// let error = READ_CLOCK_ERROR.as_millis() as u64;
    /// let before = SystemClock.now().as_millis();
    /// let read = SystemClock.now_for_reads().as_millis(); // is this entry still fresh?
    /// let after = SystemClock.now().as_millis();
    /// assert!(before - error <= read && read <= after + error);
    /// ```
    fn now_for_reads(&self) -> Timestamp {
        self.now()
    }
}

/// The most [`Clock::now_for_reads`] may be off from [`Clock::now`] (1 ms: a reading's own
/// rounding to the millisecond).
pub const READ_CLOCK_ERROR: Duration = Duration::from_millis(1);

/// A clock shared between a cache's parts.
pub type SharedClock = Arc<dyn Clock>;

/// A shared clock is a clock, so builders that take `impl Clock` accept a [`SharedClock`].
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }

    fn now_for_reads(&self) -> Timestamp {
        (**self).now_for_reads()
    }
}

/// The system's wall clock, read precisely: every call reads `SystemTime::now()` (about 35–40 ns).
/// No thread, no shared state.
///
/// For a hot path that reads the clock on every operation, [`CoarseClock`] trades up to one
/// [`COARSE_CLOCK_TICK`] of lag for an atomic load (about 1 ns), at the cost of one background
/// thread while a handle is alive.
///
/// ```
/// use layercache_core::{Clock, SystemClock};
///
/// let earlier = SystemClock.now();
/// assert!(SystemClock.now() >= earlier);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// The former name of the precise clock: the very same type as [`SystemClock`] (a re-export, so
/// both `PreciseClock` and `PreciseClock.now()` keep compiling).
pub use SystemClock as PreciseClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(precise_millis())
    }

    /// The system clock as of its last reading on this thread (at most [`READ_ANCHOR`] ago),
    /// plus the time the CPU's timestamp counter has counted since (`quanta`; where the counter
    /// is not reliable, quanta reads the monotonic clock instead): about 15 ns where
    /// `SystemTime::now()` takes 35–45 ns, which is a fifth of an L1 hit. Off by the counter's
    /// calibration error over [`READ_ANCHOR`] (microseconds) plus the millisecond's rounding.
    fn now_for_reads(&self) -> Timestamp {
        Timestamp::from_millis(interpolated_millis())
    }
}

/// Milliseconds since the Unix epoch, read from `SystemTime` (0 before the epoch).
fn precise_millis() -> u64 {
    precise_nanos() / 1_000_000
}

/// Nanoseconds since the Unix epoch, read from `SystemTime` (0 before the epoch).
fn precise_nanos() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

/// How long [`SystemClock::now_for_reads`] interpolates from one reading of the system clock
/// before it reads it again (per thread).
pub const READ_ANCHOR: Duration = Duration::from_millis(10);

/// The counter, calibrated once per process.
fn counter() -> &'static quanta::Clock {
    static COUNTER: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    COUNTER.get_or_init(quanta::Clock::new)
}

/// See [`SystemClock::now_for_reads`].
fn interpolated_millis() -> u64 {
    // The counter's reading and the system clock's (ns since the epoch) at the last anchoring.
    thread_local! {
        static ANCHOR: std::cell::Cell<Option<(u64, u64)>> = const { std::cell::Cell::new(None) };
    }
    let counter = counter();
    let raw = counter.raw();
    ANCHOR.with(|anchor| {
        if let Some((at, wall)) = anchor.get() {
            let since = counter.delta_as_nanos(at, raw);
            // A counter that went back (another core's) reads 0: anchor again.
            if since > 0 && since < READ_ANCHOR.as_nanos() as u64 {
                return wall.saturating_add(since) / 1_000_000;
            }
        }
        let wall = precise_nanos();
        anchor.set(Some((raw, wall)));
        wall / 1_000_000
    })
}

/// The interval at which [`CoarseClock`]'s shared reading is refreshed.
pub const COARSE_CLOCK_TICK: Duration = Duration::from_millis(1);

/// The former name of [`COARSE_CLOCK_TICK`] (same value).
pub const SYSTEM_CLOCK_TICK: Duration = COARSE_CLOCK_TICK;

/// The name of [`CoarseClock`]'s background thread.
const TICKER_THREAD_NAME: &str = "layercache-clock";

/// The current wall-clock time in ms while a ticker thread runs, refreshed every
/// [`COARSE_CLOCK_TICK`]; 0 when no thread runs (then [`CoarseClock::now`] reads `SystemTime`).
static COARSE_NOW: AtomicU64 = AtomicU64::new(0);

/// The shared ticker's lifecycle. Every change happens under [`TICKER`]'s lock, so a handle being
/// created and the thread deciding to stop are ordered: either the thread sees the new handle and
/// keeps ticking, or it has already given up ticking and the new handle starts a new thread.
#[derive(Debug)]
struct Ticker {
    /// Live [`CoarseClock`] handles (clones included).
    handles: usize,
    /// Whether a thread ticks and will go on ticking while `handles > 0`. False before the first
    /// handle, once the thread has decided to stop, or when the thread could not be spawned.
    ticking: bool,
    /// The latest thread spawned; once `ticking` is false it has stopped or is just returning, and
    /// the next start joins it first, so two ticker threads are never alive at once.
    thread: Option<JoinHandle<()>>,
}

static TICKER: Mutex<Ticker> = Mutex::new(Ticker {
    handles: 0,
    ticking: false,
    thread: None,
});

/// The ticker's state. Nothing panics while holding the lock, but a poisoned lock is still usable:
/// the state is consistent after every statement.
fn ticker() -> MutexGuard<'static, Ticker> {
    TICKER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Test-only accounting of live ticker threads, to check they never overlap.
#[cfg(test)]
static TICKERS_ALIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[cfg(test)]
static TICKERS_OVERLAPPED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The ticker thread: refreshes [`COARSE_NOW`] every tick until no handle is left.
fn tick() {
    #[cfg(test)]
    if TICKERS_ALIVE.fetch_add(1, Ordering::SeqCst) != 0 {
        TICKERS_OVERLAPPED.store(true, Ordering::SeqCst);
    }
    loop {
        std::thread::sleep(COARSE_CLOCK_TICK);
        let mut state = ticker();
        if state.handles == 0 {
            state.ticking = false;
            COARSE_NOW.store(0, Ordering::Relaxed);
            break;
        }
        COARSE_NOW.store(precise_millis(), Ordering::Relaxed);
    }
    #[cfg(test)]
    TICKERS_ALIVE.fetch_sub(1, Ordering::SeqCst);
}

/// Registers a new handle and makes sure a thread ticks (or, if none can be spawned, that
/// [`COARSE_NOW`] is 0 so readers fall back to `SystemTime`).
fn acquire() {
    let mut state = ticker();
    state.handles += 1;
    if state.ticking {
        return;
    }
    if let Some(stopped) = state.thread.take() {
        // It has given up ticking under this lock and does nothing after releasing it: this
        // returns at once, and no two ticker threads are ever alive together.
        let _ = stopped.join();
    }
    COARSE_NOW.store(precise_millis(), Ordering::Relaxed);
    match std::thread::Builder::new()
        .name(TICKER_THREAD_NAME.to_owned())
        .spawn(tick)
    {
        Ok(thread) => {
            state.ticking = true;
            state.thread = Some(thread);
        }
        Err(_) => COARSE_NOW.store(0, Ordering::Relaxed),
    }
}

/// The system's wall clock, as a hot path reads it: an atomic load (about 1 ns) of a reading that
/// one shared background thread, `layercache-clock`, refreshes every [`COARSE_CLOCK_TICK`].
/// [`Timestamp`]s have millisecond resolution, so nothing is lost but up to one tick of lag (more
/// if the machine is so busy that the thread is descheduled).
///
/// The thread lives exactly as long as the handles: [`CoarseClock::new`] starts it if it is not
/// running, clones share it, and once the last handle is dropped it stops within a tick or so. A
/// handle created later starts a new one. At most one such thread is alive in the process.
/// Creating, cloning and dropping a handle take a global lock; reading it takes none.
///
/// If the thread cannot be spawned, [`now`](Clock::now) reads `SystemTime` on every call (as
/// [`SystemClock`] does); the next handle created or cloned tries to spawn it again.
///
/// ```
/// use std::sync::Arc;
/// use layercache_core::{Clock, CoarseClock, SharedClock, SystemClock};
///
/// let clock = CoarseClock::new();
/// assert!(CoarseClock::is_running());
///
/// let shared: SharedClock = Arc::new(clock.clone());
/// // At most one tick (or a descheduled thread's lag) behind the precise clock, never ahead.
/// assert!(shared.now() <= SystemClock.now());
///
/// // The thread stops a few ticks after the last handle is dropped.
/// drop(shared);
/// drop(clock);
/// ```
#[derive(Debug)]
pub struct CoarseClock {
    /// Handles are only made by `new` (or `clone`), which count them.
    _counted: (),
}

impl CoarseClock {
    /// A handle on the shared coarse clock, starting its thread if it is not running.
    pub fn new() -> Self {
        acquire();
        CoarseClock { _counted: () }
    }

    /// Whether the `layercache-clock` thread is alive: true while a handle exists (unless the
    /// thread could not be spawned), false once the thread has stopped, a few ticks after the
    /// last handle was dropped.
    pub fn is_running() -> bool {
        ticker()
            .thread
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    }
}

impl Default for CoarseClock {
    /// Same as [`CoarseClock::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for CoarseClock {
    /// Another handle on the same shared reading (the thread lives while any handle does).
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl Drop for CoarseClock {
    fn drop(&mut self) {
        let mut state = ticker();
        state.handles = state.handles.saturating_sub(1);
    }
}

impl Clock for CoarseClock {
    fn now(&self) -> Timestamp {
        match COARSE_NOW.load(Ordering::Relaxed) {
            0 => SystemClock.now(),
            coarse => Timestamp::from_millis(coarse),
        }
    }
}

/// A clock that moves only when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use layercache_core::{Clock, ManualClock, Timestamp};
///
/// let clock = ManualClock::new(Timestamp::from_millis(1_000));
/// let view = clock.clone();
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(view.now(), Timestamp::from_millis(2_000));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            millis: Arc::new(AtomicU64::new(start.as_millis())),
        }
    }

    /// A manual clock starting at the system's current time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .millis
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(by))
            });
    }

    /// Sets the clock to `to` (backwards too, to test clock skew).
    pub fn set(&self, to: Timestamp) {
        self.millis.store(to.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes the tests that create [`CoarseClock`] handles: they share one ticker, and the
    /// lifecycle tests need to be the only ones holding handles.
    static HANDLES: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        HANDLES.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Polls (generously: the machine may be busy) until the ticker thread has stopped.
    fn stops_eventually() -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while CoarseClock::is_running() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// The read clock, interpolated from the CPU's counter, stays between two precise readings
    /// taken around it (give or take its error), across several anchorings, on several threads.
    #[test]
    fn the_read_clock_follows_the_precise_one() {
        let error = READ_CLOCK_ERROR.as_millis() as u64;
        let threads: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    let until = std::time::Instant::now() + READ_ANCHOR * 5;
                    let mut readings = 0_u64;
                    while std::time::Instant::now() < until || readings < 1_000 {
                        let before = SystemClock.now().as_millis();
                        let read = SystemClock.now_for_reads().as_millis();
                        let after = SystemClock.now().as_millis();
                        assert!(
                            before.saturating_sub(error) <= read && read <= after + error,
                            "read {read} outside [{before}, {after}] ± {error} ms"
                        );
                        readings += 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // Other clocks answer reads with their own time.
        let manual = ManualClock::new(Timestamp::from_millis(42));
        assert_eq!(manual.now_for_reads(), Timestamp::from_millis(42));
    }

    #[test]
    fn the_coarse_clock_follows_the_precise_one() {
        let _serial = serial();
        let clock = CoarseClock::new();
        let first = clock.now();
        for _ in 0..1_000 {
            let (coarse, precise) = (clock.now(), SystemClock.now());
            // One tick of lag, plus slack for a descheduled ticker thread on a busy machine.
            assert!(
                precise.saturating_since(coarse) < Duration::from_millis(250),
                "{coarse:?} {precise:?}"
            );
            assert!(coarse.saturating_since(precise) <= Duration::from_millis(1));
        }
        assert!(clock.now() >= first);
    }

    #[test]
    fn the_precise_clock_is_the_system_clock() {
        let precise: PreciseClock = SystemClock;
        let before = SystemClock.now();
        assert!(precise.now() >= before);
        assert_eq!(SYSTEM_CLOCK_TICK, COARSE_CLOCK_TICK);
    }

    #[test]
    fn the_ticker_lives_while_a_handle_does() {
        let _serial = serial();
        let clock = CoarseClock::new();
        assert!(CoarseClock::is_running());
        let copy = clock.clone();
        drop(clock);
        // The thread never stops while a handle is alive, however long it waits.
        std::thread::sleep(20 * COARSE_CLOCK_TICK);
        assert!(CoarseClock::is_running());
        assert!(copy.now().as_millis() > 0);

        drop(copy);
        assert!(stops_eventually(), "the ticker outlived its last handle");
        assert_eq!(COARSE_NOW.load(Ordering::Relaxed), 0);

        let again = CoarseClock::default();
        assert!(CoarseClock::is_running());
        let precise = SystemClock.now();
        assert!(precise.saturating_since(again.now()) < Duration::from_millis(250));
        drop(again);
        assert!(
            stops_eventually(),
            "the restarted ticker outlived its last handle"
        );
        assert!(!TICKERS_OVERLAPPED.load(Ordering::SeqCst));
    }

    #[test]
    fn racing_handles_never_run_two_tickers_nor_none() {
        let _serial = serial();
        std::thread::scope(|scope| {
            for worker in 0..4_u32 {
                scope.spawn(move || {
                    for round in 0..200_u32 {
                        let clock = CoarseClock::new();
                        assert!(CoarseClock::is_running());
                        let copy = clock.clone();
                        drop(clock);
                        assert!(copy.now().as_millis() > 0);
                        assert!(CoarseClock::is_running());
                        drop(copy);
                        if (round + worker) % 8 == 0 {
                            // Give the thread a chance to see no handle and stop, so the next
                            // `new` races with its exit.
                            std::thread::sleep(COARSE_CLOCK_TICK);
                        }
                    }
                });
            }
        });
        assert!(
            !TICKERS_OVERLAPPED.load(Ordering::SeqCst),
            "two ticker threads were alive at once"
        );
        assert!(stops_eventually(), "the ticker outlived its last handle");
        assert_eq!(ticker().handles, 0);
    }
}
