//! The in-process limiter that decides while Redis cannot: a fixed window per key, in a bounded
//! table. It knows only this instance's requests, so `n` instances admit up to `n × limit` while
//! Redis is down.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A key's window: when it started and how many requests it admitted or refused.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u64,
}

/// What the local limiter decided, in the terms of a Redis answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalDecision {
    pub(crate) allowed: bool,
    pub(crate) remaining: u64,
    pub(crate) reset: Duration,
}

/// A per-key fixed window over at most `max_keys` keys. When the table is full of live windows,
/// it starts over (memory stays bounded; a flood of distinct keys costs some accuracy, never a
/// growing table).
#[derive(Debug)]
pub(crate) struct LocalLimiter {
    limit: u64,
    window: Duration,
    max_keys: usize,
    windows: Mutex<HashMap<String, Window>>,
}

impl LocalLimiter {
    pub(crate) fn new(limit: u64, window: Duration, max_keys: usize) -> Self {
        LocalLimiter {
            limit,
            window,
            max_keys,
            windows: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn check(&self, key: &str, now: Instant) -> LocalDecision {
        // A poisoned table still holds valid counts (every update is one assignment).
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(key) && windows.len() >= self.max_keys {
            windows.retain(|_, w| now.saturating_duration_since(w.start) < self.window);
            if windows.len() >= self.max_keys {
                windows.clear();
            }
        }
        let slot = windows.entry(key.to_owned()).or_insert(Window {
            start: now,
            count: 0,
        });
        if now.saturating_duration_since(slot.start) >= self.window {
            *slot = Window {
                start: now,
                count: 0,
            };
        }
        slot.count = slot.count.saturating_add(1);
        let reset = self
            .window
            .saturating_sub(now.saturating_duration_since(slot.start));
        LocalDecision {
            allowed: slot.count <= self.limit,
            remaining: self.limit.saturating_sub(slot.count),
            reset,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_limit_per_window_and_starts_over() {
        let limiter = LocalLimiter::new(3, Duration::from_secs(10), 100);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| limiter.check("a", t0).allowed).count();
        assert_eq!(allowed, 3);
        assert!(limiter.check("b", t0).allowed, "keys are independent");
        let later = t0 + Duration::from_secs(10);
        let d = limiter.check("a", later);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn stays_bounded() {
        let limiter = LocalLimiter::new(1, Duration::from_secs(10), 8);
        let t0 = Instant::now();
        for i in 0..100 {
            limiter.check(&format!("k{i}"), t0);
            assert!(limiter.len() <= 8);
        }
    }
}
