//! A circuit breaker for the shared tier: stop calling a failing L2 for a cool-down, then probe.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{Error, Result};
use tokio::time::Instant;

use crate::stats::Counters;

/// The default number of consecutive L2 failures that open the circuit.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// The default time the circuit stays open before a probe (500 ms).
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_millis(500);

/// The state of the L2 circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// L2 is called normally.
    Closed,
    /// L2 is skipped until the cool-down ends.
    Open,
    /// One probe call is let through; its outcome closes or reopens the circuit.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; another is let through if it has not reported by `probe_until` (its caller
    /// may have been cancelled).
    HalfOpen {
        probe_until: Instant,
    },
}

/// `now + by`, saturating (`Duration::MAX` means "until further notice", not a panic).
fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    state: Mutex<State>,
    /// Whether `state` is `Closed { failures: 0 }`: the common case, answered without the lock.
    healthy: AtomicBool,
    threshold: u32,
    cool_down: Duration,
    opened: AtomicU64,
}

impl CircuitBreaker {
    /// One L2 call through the breaker: skipped (and counted) while the circuit is open, its
    /// outcome reported to the breaker, its failure counted. Every L2 read and write goes here.
    pub(crate) async fn call<T>(
        &self,
        counters: &Counters,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        if !self.allow() {
            counters.bump_l2_skipped();
            return Err(Error::unavailable("the L2 circuit is open"));
        }
        let result = call.await;
        match &result {
            Ok(_) => self.success(),
            Err(_) => {
                self.failure();
                counters.bump_l2_errors();
            }
        }
        result
    }

    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        CircuitBreaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
            threshold: threshold.max(1),
            cool_down,
            opened: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a call may go to L2 now. In half-open state, one caller gets through (the probe).
    pub(crate) fn allow(&self) -> bool {
        if self.healthy.load(Ordering::Acquire) {
            return true;
        }
        let mut state = self.state();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } | State::HalfOpen { probe_until: until } if now >= until => {
                *state = State::HalfOpen {
                    probe_until: later(now, self.cool_down),
                };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    pub(crate) fn success(&self) {
        if self.healthy.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state();
        *state = State::Closed { failures: 0 };
        self.healthy.store(true, Ordering::Release);
    }

    pub(crate) fn failure(&self) {
        let mut state = self.state();
        self.healthy.store(false, Ordering::Release);
        let open = match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => true,
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: later(Instant::now(), self.cool_down),
            };
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(cool_down = ?self.cool_down, "L2 circuit opened");
        }
    }

    pub(crate) fn current(&self) -> CircuitState {
        match *self.state() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    pub(crate) fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes_after_cool_down() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(1));
        for _ in 0..2 {
            assert!(breaker.allow());
            breaker.failure();
        }
        assert_eq!(breaker.current(), CircuitState::Closed);
        breaker.failure();
        assert_eq!(breaker.current(), CircuitState::Open);
        assert!(!breaker.allow());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.allow(), "the probe goes through");
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.failure();
        assert_eq!(breaker.current(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.allow());
        breaker.success();
        assert_eq!(breaker.current(), CircuitState::Closed);
        assert!(breaker.allow());
        assert_eq!(breaker.times_opened(), 2);
    }
}
