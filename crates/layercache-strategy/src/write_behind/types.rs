//! The public types around a write: what to do when the queue is full, the error cause of a
//! refused write, and a dead letter.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use layercache_core::{Error, Key, PayloadCodec, WriteJournal};

use super::DEFAULT_FULL_WAIT;
#[cfg(doc)]
use super::WriteBehind;

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

pub(super) type DeadLetterHook<V> = Arc<dyn Fn(DeadLetter<'_, V>) + Send + Sync>;
pub(super) type Journal<V> = (Arc<dyn WriteJournal>, Arc<dyn PayloadCodec<V>>);
