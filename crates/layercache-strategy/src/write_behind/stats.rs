//! The counters of a write-behind and their public snapshot, [`WriteBehindStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(doc)]
use layercache_core::Writer;

#[cfg(doc)]
use super::WriteBehind;

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
pub(super) struct Counters {
    pub(super) accepted: AtomicU64,
    pub(super) coalesced: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) batched: AtomicU64,
    pub(super) max_batch: AtomicU64,
    pub(super) written: AtomicU64,
    pub(super) source_calls: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) dead_letters: AtomicU64,
    pub(super) cache_errors: AtomicU64,
    pub(super) claimed: AtomicU64,
    pub(super) journal_errors: AtomicU64,
    pub(super) undecodable: AtomicU64,
}

pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
