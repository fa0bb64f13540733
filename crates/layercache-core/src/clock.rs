use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::entry::Timestamp;

/// A source of wall-clock time, injectable so TTL and early-expiry behaviour can be tested
/// deterministically.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// A clock shared between a cache's parts.
pub type SharedClock = Arc<dyn Clock>;

/// A shared clock is a clock, so builders that take `impl Clock` accept a [`SharedClock`].
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// The system's wall clock, read precisely (`SystemTime::now`, about 35–40 ns).
#[derive(Clone, Copy, Debug, Default)]
pub struct PreciseClock;

impl Clock for PreciseClock {
    fn now(&self) -> Timestamp {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp::from_millis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The interval at which [`SystemClock`]'s shared reading is refreshed.
pub const SYSTEM_CLOCK_TICK: Duration = Duration::from_millis(1);

/// The current wall-clock time in ms, refreshed every [`SYSTEM_CLOCK_TICK`] by one thread.
static COARSE_NOW: AtomicU64 = AtomicU64::new(0);
static TICKER: std::sync::Once = std::sync::Once::new();

/// The system's wall clock, as the hot path reads it: an atomic load (about 1 ns) of a reading
/// that one background thread (`layercache-clock`, started on first use) refreshes every
/// millisecond. [`Timestamp`]s have millisecond resolution, so nothing is lost but up to one
/// tick of lag. Use [`PreciseClock`] to read `SystemTime` on every call instead (no thread).
///
/// If the thread cannot be started, every call reads `SystemTime`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let coarse = COARSE_NOW.load(Ordering::Relaxed);
        if coarse != 0 {
            return Timestamp::from_millis(coarse);
        }
        TICKER.call_once(|| {
            COARSE_NOW.store(PreciseClock.now().as_millis(), Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name("layercache-clock".into())
                .spawn(|| {
                    loop {
                        std::thread::sleep(SYSTEM_CLOCK_TICK);
                        COARSE_NOW.store(PreciseClock.now().as_millis(), Ordering::Relaxed);
                    }
                });
            if spawned.is_err() {
                COARSE_NOW.store(0, Ordering::Relaxed);
            }
        });
        PreciseClock.now()
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

    #[test]
    fn the_shared_system_clock_follows_the_precise_one() {
        let first = SystemClock.now();
        for _ in 0..1_000 {
            let (coarse, precise) = (SystemClock.now(), PreciseClock.now());
            // One tick of lag, plus slack for a descheduled ticker thread on a busy machine.
            assert!(
                precise.saturating_since(coarse) < Duration::from_millis(250),
                "{coarse:?} {precise:?}"
            );
            assert!(coarse.saturating_since(precise) <= Duration::from_millis(1));
        }
        assert!(SystemClock.now() >= first);
    }
}
