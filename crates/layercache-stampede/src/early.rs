//! Probabilistic early expiry (XFetch).

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use layercache_core::{EntryMeta, Error, Result, Timestamp};

/// The default XFetch `beta` (1.0, as in the paper; larger refreshes earlier).
pub const DEFAULT_BETA: f64 = 1.0;

/// Uniform random numbers for early expiry, injectable so tests are deterministic.
pub trait RandomSource: Send + Sync + Debug + 'static {
    /// A number uniformly distributed in `(0, 1]`.
    fn uniform(&self) -> f64;
}

/// Thread-local random numbers (fastrand): the default, with no lock on the hot path.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRandom;

impl RandomSource for ThreadRandom {
    fn uniform(&self) -> f64 {
        1.0 - fastrand::f64()
    }
}

/// A seeded sequence, for tests.
#[derive(Debug)]
pub struct SeededRandom(Mutex<fastrand::Rng>);

impl SeededRandom {
    /// A sequence starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRandom(Mutex::new(fastrand::Rng::with_seed(seed)))
    }
}

impl RandomSource for SeededRandom {
    fn uniform(&self) -> f64 {
        let mut rng = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        1.0 - rng.f64()
    }
}

/// XFetch probabilistic early expiration (Vattani, Chierichetti, Lowenstein, VLDB 2015).
///
/// On a read of a fresh entry, refresh early when `now - delta * beta * ln(rand) >= fresh_until`,
/// where `delta` is the entry's measured load cost and `rand` is uniform in `(0, 1]`. At a time
/// `g` before expiry this happens with probability `exp(-g / (delta * beta))`: almost never while
/// expiry is far, more and more often as it nears, and sooner for entries that are slow to load.
/// Under steady traffic one reader refreshes the entry before it expires, so no reader waits on a
/// miss. Entries with no measured cost are never refreshed early.
#[derive(Clone, Debug)]
pub struct EarlyExpiry {
    beta: f64,
    random: Arc<dyn RandomSource>,
}

impl Default for EarlyExpiry {
    fn default() -> Self {
        EarlyExpiry {
            beta: DEFAULT_BETA,
            random: Arc::new(ThreadRandom),
        }
    }
}

/// Beyond this many `delta * beta` before expiry the refresh probability (`exp(-40)`) is taken as
/// zero, so the hot path skips the random draw.
const HORIZON: f64 = 40.0;

impl EarlyExpiry {
    /// Early expiry with `beta`, which must be finite and greater than zero.
    pub fn new(beta: f64) -> Result<Self> {
        if !(beta.is_finite() && beta > 0.0) {
            return Err(Error::config(format!(
                "XFetch beta must be finite and > 0, got {beta}"
            )));
        }
        Ok(EarlyExpiry {
            beta,
            ..Self::default()
        })
    }

    /// Uses `random` as the source of randomness.
    #[must_use]
    pub fn with_random(mut self, random: impl RandomSource) -> Self {
        self.random = Arc::new(random);
        self
    }

    /// The beta in force.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The probability that [`should_refresh`](Self::should_refresh) says yes for `meta` at `now`.
    pub fn probability(&self, meta: &EntryMeta, now: Timestamp) -> f64 {
        match self.scaled_gap(meta, now) {
            Some(gap) => (-gap).exp(),
            None => 0.0,
        }
    }

    /// Time to expiry in units of `delta * beta`, or `None` when no refresh can happen.
    fn scaled_gap(&self, meta: &EntryMeta, now: Timestamp) -> Option<f64> {
        if !meta.is_fresh(now) || meta.load_cost.is_zero() {
            return None;
        }
        let gap =
            meta.time_to_refresh(now).as_secs_f64() / (meta.load_cost.as_secs_f64() * self.beta);
        (gap <= HORIZON).then_some(gap)
    }

    /// Whether a read at `now` of an entry with `meta` should refresh it early.
    pub fn should_refresh(&self, meta: &EntryMeta, now: Timestamp) -> bool {
        match self.scaled_gap(meta, now) {
            // -ln(rand) >= gap  <=>  now - delta * beta * ln(rand) >= fresh_until
            Some(gap) => -self.random.uniform().ln() >= gap,
            None => false,
        }
    }
}
