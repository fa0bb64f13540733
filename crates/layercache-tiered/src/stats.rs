//! A snapshot of a tiered cache's counters.

use crate::circuit::CircuitState;

/// A point-in-time view of a [`TieredCache`](crate::TieredCache)'s counters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct TieredStats {
    /// Reads answered by L1.
    pub l1_hits: u64,
    /// Reads L1 could not answer.
    pub l1_misses: u64,
    /// Reads answered by L2 (after an L1 miss).
    pub l2_hits: u64,
    /// Reads L2 could not answer.
    pub l2_misses: u64,
    /// L2 calls that failed or timed out.
    pub l2_errors: u64,
    /// L2 calls skipped because the circuit was open.
    pub l2_skipped: u64,
    /// L2 writes sent.
    pub l2_writes: u64,
    /// L2 writes that failed (then queued for retry).
    pub l2_write_failures: u64,
    /// L2 writes waiting to be sent or retried now.
    pub l2_pending_writes: u64,
    /// Queued L2 writes dropped because the queue was full.
    pub l2_pending_dropped: u64,
    /// Values in L2 that did not decode (read as misses).
    pub l2_decode_failures: u64,
    /// The L2 circuit's state now.
    pub circuit: CircuitState,
    /// How many times the L2 circuit opened.
    pub circuit_opened: u64,
    /// Loader calls (single loads, batches and refreshes).
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Stale values served (fail-safe, soft timeout, lock timeout).
    pub stale_served: u64,
    /// Callers that joined a load in progress instead of loading.
    pub coalesced: u64,
    /// Background refreshes started (eager and XFetch).
    pub refreshes: u64,
    /// L1 entries evicted for capacity.
    pub evictions: u64,
    /// L1 entries now.
    pub l1_entries: u64,
}

impl TieredStats {
    /// L1 hits over L1 reads.
    pub fn l1_hit_ratio(&self) -> f64 {
        ratio(self.l1_hits, self.l1_hits + self.l1_misses)
    }

    /// L2 hits over L2 reads.
    pub fn l2_hit_ratio(&self) -> f64 {
        ratio(self.l2_hits, self.l2_hits + self.l2_misses)
    }

    /// Reads answered by either tier over all reads.
    pub fn hit_ratio(&self) -> f64 {
        let reads = if self.l1_hits + self.l1_misses > 0 {
            self.l1_hits + self.l1_misses
        } else {
            self.l2_hits + self.l2_misses
        };
        ratio(self.l1_hits + self.l2_hits, reads)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
