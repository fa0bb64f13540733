//! The cache's counters and their snapshot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use crate::circuit::CircuitState;

/// Shards of the counters (a power of two): a thread bumps its own shard, so two cores counting
/// hits do not fight over one cache line.
const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) & (SHARDS - 1);
}

fn my_shard() -> usize {
    SHARD.try_with(|shard| *shard).unwrap_or(0)
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident => $bump:ident,)*) => {
        /// One shard of the counters.
        #[derive(Debug, Default)]
        struct Shard {
            $($name: AtomicU64,)*
        }

        /// The live counters of one cache, shared by its parts.
        #[derive(Debug)]
        pub(crate) struct Counters {
            // Each shard on cache lines of its own.
            shards: Box<[CachePadded<Shard>]>,
        }

        impl Default for Counters {
            fn default() -> Self {
                Counters {
                    shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
                }
            }
        }

        impl Counters {
            fn shard(&self) -> &Shard {
                // `my_shard` is below `SHARDS`, the shards' count.
                &self.shards[my_shard()]
            }

            $(
                pub(crate) fn $bump(&self) {
                    self.shard().$name.fetch_add(1, Ordering::Relaxed);
                }

                pub(crate) fn $name(&self) -> u64 {
                    self.shards
                        .iter()
                        .map(|shard| shard.$name.load(Ordering::Relaxed))
                        .fold(0, u64::wrapping_add)
                }
            )*
        }
    };
}

counters! {
    hits => bump_hits,
    misses => bump_misses,
    coalesced => bump_coalesced,
    stale_served => bump_stale_served,
    l1_hits => bump_l1_hits,
    l1_misses => bump_l1_misses,
    l2_hits => bump_l2_hits,
    l2_misses => bump_l2_misses,
    l2_errors => bump_l2_errors,
    l2_skipped => bump_l2_skipped,
    l2_writes => bump_l2_writes,
    l2_write_failures => bump_l2_write_failures,
    pending_dropped => bump_pending_dropped,
    loads => bump_loads,
    load_errors => bump_load_errors,
    hard_timeouts => bump_hard_timeouts,
    soft_timeouts => bump_soft_timeouts,
    refreshes => bump_refreshes,
    stores_skipped => bump_stores_skipped,
    lock_waits_served => bump_lock_waits_served,
    lock_timeouts => bump_lock_timeouts,
    lock_errors => bump_lock_errors,
    l2_stores_refused => bump_l2_stores_refused,
    invalidations_sent => bump_invalidations_sent,
    invalidations_received => bump_invalidations_received,
    invalidation_publish_failures => bump_invalidation_publish_failures,
    l1_flushes => bump_l1_flushes,
    tags_invalidated => bump_tags_invalidated,
    values_too_large => bump_values_too_large,
}

/// A point-in-time view of a [`TieredCache`](crate::TieredCache)'s counters.
///
/// Every read (`get_or_load`, each key of `get_many`) ends as exactly one of: a **hit** (a fresh
/// value from L1 or L2), a **miss** (this caller's load ran the loader or the lock wait found
/// another process's value), **coalesced** (it waited for a load another caller of this process
/// had started), or **stale served** (a stale value, by fail-safe, soft timeout or
/// stale-while-revalidate). [`hit_ratio`](Self::hit_ratio) is hits over all reads.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct TieredStats {
    /// Reads answered by a fresh value in L1 or L2.
    pub hits: u64,
    /// Reads that started a load.
    pub misses: u64,
    /// Reads that waited for a load another caller had started.
    pub coalesced: u64,
    /// Reads answered by a stale value (fail-safe, soft timeout, stale-while-revalidate, lock wait).
    pub stale_served: u64,
    /// Reads answered by a fresh value in L1 (part of `hits`).
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
    /// L2 writes that landed.
    pub l2_writes: u64,
    /// L2 writes that failed.
    pub l2_write_failures: u64,
    /// Keys with L2 writes in flight, waiting or being retried now.
    pub l2_pending_writes: u64,
    /// L2 deletes given up because too many were waiting for retry.
    pub l2_pending_dropped: u64,
    /// Values in L2 that did not decode (read as misses).
    pub l2_decode_failures: u64,
    /// The L2 circuit's state now.
    pub circuit: CircuitState,
    /// How many times the L2 circuit opened.
    pub circuit_opened: u64,
    /// Loader calls (single loads, batches and refreshes).
    pub loads: u64,
    /// Loader calls that failed (errors, panics and hard timeouts).
    pub load_errors: u64,
    /// Loads stopped by the hard timeout.
    pub hard_timeouts: u64,
    /// Reads that stopped waiting at the soft timeout.
    pub soft_timeouts: u64,
    /// Background refreshes started (eager, XFetch and stale-while-revalidate).
    pub refreshes: u64,
    /// Loaded values not stored because a write, delete or clear of their key won.
    pub stores_skipped: u64,
    /// Waits for another process's load (distributed lock) that found its value.
    pub lock_waits_served: u64,
    /// Waits for another process's load that reached the lock's `max_wait`.
    pub lock_timeouts: u64,
    /// Lock store calls that failed (the load went on without the lock).
    pub lock_errors: u64,
    /// Loaded values L2 refused because it held a newer entry, or an invalidation made after the
    /// load began (in this process or another).
    pub l2_stores_refused: u64,
    /// Invalidations this cache published to the other instances (keys, namespaces, tags).
    pub invalidations_sent: u64,
    /// Invalidations received from the other instances (or the server, with client tracking).
    pub invalidations_received: u64,
    /// Invalidation batches that could not be published (the transport failed; the other
    /// instances' L1 keeps the old value up to its TTL cap).
    pub invalidation_publish_failures: u64,
    /// Times L1 was flushed because the transport disconnected, reconnected or said so.
    pub l1_flushes: u64,
    /// Tags invalidated by this cache.
    pub tags_invalidated: u64,
    /// Values over L2's maximum value size: sets refused with a `TooLarge` error, and loaded
    /// values returned to their caller without being cached.
    pub values_too_large: u64,
    /// L1 entries evicted for capacity; counted only with
    /// [`l1_count_evictions`](crate::TieredCacheBuilder::l1_count_evictions) (0 otherwise).
    pub evictions: u64,
    /// L1 entries now.
    pub l1_entries: u64,
}

impl TieredStats {
    /// Reads counted: hits, misses, coalesced and stale served.
    pub fn reads(&self) -> u64 {
        self.hits + self.misses + self.coalesced + self.stale_served
    }

    /// Hits over all reads (0 when nothing was read).
    pub fn hit_ratio(&self) -> f64 {
        ratio(self.hits, self.reads())
    }

    /// L1 hits over L1 reads.
    pub fn l1_hit_ratio(&self) -> f64 {
        ratio(self.l1_hits, self.l1_hits + self.l1_misses)
    }

    /// L2 hits over L2 reads.
    pub fn l2_hit_ratio(&self) -> f64 {
        ratio(self.l2_hits, self.l2_hits + self.l2_misses)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Publishes `s` through the `metrics` facade, labelled `cache = name`.
#[cfg(feature = "metrics")]
pub(crate) fn publish(name: &str, s: &TieredStats) {
    let counters = [
        ("layercache_hits_total", s.hits),
        ("layercache_misses_total", s.misses),
        ("layercache_coalesced_total", s.coalesced),
        ("layercache_stale_served_total", s.stale_served),
        ("layercache_l1_hits_total", s.l1_hits),
        ("layercache_l1_misses_total", s.l1_misses),
        ("layercache_l2_hits_total", s.l2_hits),
        ("layercache_l2_misses_total", s.l2_misses),
        ("layercache_l2_errors_total", s.l2_errors),
        ("layercache_l2_skipped_total", s.l2_skipped),
        ("layercache_l2_writes_total", s.l2_writes),
        ("layercache_l2_write_failures_total", s.l2_write_failures),
        ("layercache_l2_pending_dropped_total", s.l2_pending_dropped),
        ("layercache_l2_decode_failures_total", s.l2_decode_failures),
        ("layercache_circuit_opened_total", s.circuit_opened),
        ("layercache_loads_total", s.loads),
        ("layercache_load_errors_total", s.load_errors),
        ("layercache_hard_timeouts_total", s.hard_timeouts),
        ("layercache_soft_timeouts_total", s.soft_timeouts),
        ("layercache_refreshes_total", s.refreshes),
        ("layercache_stores_skipped_total", s.stores_skipped),
        ("layercache_lock_waits_served_total", s.lock_waits_served),
        ("layercache_lock_timeouts_total", s.lock_timeouts),
        ("layercache_lock_errors_total", s.lock_errors),
        ("layercache_evictions_total", s.evictions),
        ("layercache_l2_stores_refused_total", s.l2_stores_refused),
        ("layercache_invalidations_sent_total", s.invalidations_sent),
        (
            "layercache_invalidations_received_total",
            s.invalidations_received,
        ),
        (
            "layercache_invalidation_publish_failures_total",
            s.invalidation_publish_failures,
        ),
        ("layercache_l1_flushes_total", s.l1_flushes),
        ("layercache_tags_invalidated_total", s.tags_invalidated),
        ("layercache_values_too_large_total", s.values_too_large),
    ];
    for (metric, value) in counters {
        metrics::counter!(metric, "cache" => name.to_owned()).absolute(value);
    }
    let circuit = match s.circuit {
        CircuitState::Closed => 0.0,
        CircuitState::HalfOpen => 1.0,
        CircuitState::Open => 2.0,
    };
    metrics::gauge!("layercache_l2_circuit_state", "cache" => name.to_owned()).set(circuit);
    metrics::gauge!("layercache_l2_pending_writes", "cache" => name.to_owned())
        .set(s.l2_pending_writes as f64);
    metrics::gauge!("layercache_l1_entries", "cache" => name.to_owned()).set(s.l1_entries as f64);
}
