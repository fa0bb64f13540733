//! A linearizability-style history checker for caches in front of a versioned source of truth.
//!
//! A concurrent test records every operation it performs as an [`Op`]: the key, the [`OpKind`],
//! and `start`/`end` ticks taken from one shared monotonic counter ([`History::tick`]), so the
//! real-time order of operations is exact across threads and tasks. [`History::check`] then looks
//! for reads that returned something older than an operation which had *already completed* when
//! the read started.
//!
//! # The model
//!
//! Each key's source holds a version number that only ever grows: the source assigns numbers under
//! its own lock, so a larger number is a later source state. Values in the cache carry that number.
//!
//! - [`OpKind::Write`]`{ version }` put `version` into the source and then the cache: once it has
//!   completed, no read of the key may return anything older than `version`.
//! - [`OpKind::Invalidate`]`{ floor }` deleted the key from the cache (a delete, or one record per
//!   key for a clear). `floor` is the source's version read at the invalidation's start: once it
//!   has completed, no read may return a version below `floor`.
//! - [`OpKind::Read`]`{ seen }` is the version the cache returned, `None` if it returned nothing.
//!
//! Call the bound an operation imposes its *floor* ([`Op::floor`]: a write's version, an
//! invalidation's floor). The rule:
//!
//! > A read `R` of key `k` violates the history if some write or invalidation `O` of `k` with
//! > `O.end < R.start` has a floor greater than `R`'s seen version.
//!
//! A read that overlaps an operation (`O.end >= R.start`) may see the state before or after it,
//! so it is never judged against that operation.
//!
//! **Absent reads.** `None` counts as version 0, the state of a key that was never written: it is
//! a violation only if some operation with a floor greater than 0 completed before the read
//! started. That fits read-through caches (the source always holds a value once the key has been
//! written, so a read that comes back empty lost one). If the cache may legitimately return
//! nothing for a written key — a plain `get` without a loader after an eviction or a delete —
//! don't record those reads.
//!
//! Only this staleness rule is checked; the checker does not verify that a seen version was ever
//! written.
//!
//! The check sorts each key's writes and invalidations by end tick, takes a prefix maximum of
//! their floors and binary-searches it for each read: `O(N log N)`; 100,000 operations check in
//! about 0.15 s even in an unoptimised test build.
//!
//! # Example
//!
//! ```
//! use layercache_testkit::history::{History, Op};
//!
//! let history = History::new();
//!
//! // A write of version 1 to key 7 runs and completes...
//! let start = history.tick();
//! let end = history.tick();
//! history.record(Op::write(7, start, end, 1));
//!
//! // ...so a read that starts afterwards must not return the older version 0 (nothing).
//! let start = history.tick();
//! let end = history.tick();
//! history.record(Op::read(7, start, end, None));
//!
//! let report = history.check();
//! assert_eq!(report.operations, 2);
//! assert_eq!(report.reads, 1);
//! assert_eq!(report.violations.len(), 1);
//! assert_eq!(report.violations[0].floor, 1);
//! assert!(!report.is_clean());
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How many independent buffers [`History::record`] spreads its records over, to keep
/// concurrent recorders from contending on one lock.
const SHARDS: usize = 16;

/// How many violations [`CheckReport`]'s `Display` (and so [`CheckReport::assert_clean`]) lists.
const SHOWN_VIOLATIONS: usize = 20;

/// What an [`Op`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// A read of the key through the cache.
    Read {
        /// The version the cache returned; `None` if it returned nothing (counted as version 0).
        seen: Option<u64>,
    },
    /// A write that put `version` into the source and then the cache. Once it has completed,
    /// no read of the key may return an older version.
    Write {
        /// The version the source assigned to this write.
        version: u64,
    },
    /// A delete of the key from the cache (a clear of all keys is recorded as one per key).
    /// Once it has completed, no read may return a version below `floor`.
    Invalidate {
        /// The source's version of the key read at the invalidation's start.
        floor: u64,
    },
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::Read { seen: Some(v) } => write!(f, "read(seen v{v})"),
            OpKind::Read { seen: None } => write!(f, "read(seen nothing)"),
            OpKind::Write { version } => write!(f, "write(v{version})"),
            OpKind::Invalidate { floor } => write!(f, "invalidate(floor v{floor})"),
        }
    }
}

/// One recorded operation: which key, what it did, and when it ran.
///
/// `start` and `end` are ticks of the history's shared counter ([`History::tick`]): take `start`
/// just before issuing the operation and `end` just after it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    /// The key operated on.
    pub key: u32,
    /// The tick taken before the operation began.
    pub start: u64,
    /// The tick taken after the operation completed.
    pub end: u64,
    /// What the operation did.
    pub kind: OpKind,
}

impl Op {
    /// A read of `key` that returned `seen` (`None`: nothing).
    pub fn read(key: u32, start: u64, end: u64, seen: Option<u64>) -> Self {
        Op {
            key,
            start,
            end,
            kind: OpKind::Read { seen },
        }
    }

    /// A write of `key` that put `version` into the source and then the cache.
    pub fn write(key: u32, start: u64, end: u64, version: u64) -> Self {
        Op {
            key,
            start,
            end,
            kind: OpKind::Write { version },
        }
    }

    /// An invalidation (delete) of `key`; `floor` is the source's version at its start.
    pub fn invalidate(key: u32, start: u64, end: u64, floor: u64) -> Self {
        Op {
            key,
            start,
            end,
            kind: OpKind::Invalidate { floor },
        }
    }

    /// Whether this is a read.
    pub fn is_read(&self) -> bool {
        matches!(self.kind, OpKind::Read { .. })
    }

    /// The lowest version a read may return once this operation has completed: a write's
    /// version, an invalidation's floor; `None` for a read.
    pub fn floor(&self) -> Option<u64> {
        match self.kind {
            OpKind::Read { .. } => None,
            OpKind::Write { version } => Some(version),
            OpKind::Invalidate { floor } => Some(floor),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} {} [{}..{}]",
            self.key, self.kind, self.start, self.end
        )
    }
}

/// A read that returned a version older than an operation completed before it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: u32,
    /// The offending read (its `start`/`end` ticks and what it saw).
    pub read: Op,
    /// The version the read returned (`None`: nothing, counted as 0).
    pub seen: Option<u64>,
    /// The write or invalidation it violated: of the operations completed before the read
    /// started, the one with the highest floor (the earliest to end among equals).
    pub op: Op,
    /// That operation's floor: the read should have seen at least this version.
    pub floor: u64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {}: read [{}..{}] saw {} but {} [{}..{}] completed before it started (floor v{})",
            self.key,
            self.read.start,
            self.read.end,
            match self.seen {
                Some(v) => format!("v{v}"),
                None => "nothing".to_owned(),
            },
            self.op.kind,
            self.op.start,
            self.op.end,
            self.floor,
        )
    }
}

/// The outcome of [`History::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// How many operations were checked.
    pub operations: usize,
    /// How many of them were reads.
    pub reads: usize,
    /// Every read that broke the rule, ordered by key and then read start.
    pub violations: Vec<Violation>,
    /// How long the check itself took.
    pub elapsed: Duration,
}

impl CheckReport {
    /// Whether no read broke the rule.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics, listing the first violations, unless the history is clean.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(self.is_clean(), "{self}");
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} operations ({} reads) checked in {:?}: {} violation(s)",
            self.operations,
            self.reads,
            self.elapsed,
            self.violations.len()
        )?;
        for violation in self.violations.iter().take(SHOWN_VIOLATIONS) {
            write!(f, "\n  {violation}")?;
        }
        if self.violations.len() > SHOWN_VIOLATIONS {
            write!(
                f,
                "\n  ... and {} more",
                self.violations.len() - SHOWN_VIOLATIONS
            )?;
        }
        Ok(())
    }
}

/// A concurrent recorder of [`Op`]s and their checker.
///
/// Share it (for example in an `Arc`) between the threads or tasks of a test: each takes ticks
/// with [`tick`](History::tick) around every operation and [`record`](History::record)s it. Then
/// [`check`](History::check) the whole history.
#[derive(Debug)]
pub struct History {
    clock: AtomicU64,
    /// Set for a [timed](History::timed) history: ticks are nanoseconds since this instant.
    origin: Option<Instant>,
    shards: Box<[Mutex<Vec<Op>>]>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts at 1.
    pub fn new() -> Self {
        History {
            clock: AtomicU64::new(1),
            origin: None,
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// An empty history whose ticks are nanoseconds since it was made (still distinct and
    /// increasing), so that [`check_with_lag`](Self::check_with_lag) can allow a delay: for
    /// caches kept coherent across instances by messages that take time to arrive.
    pub fn timed() -> Self {
        History {
            origin: Some(Instant::now()),
            ..Self::new()
        }
    }

    /// The next tick of the shared clock. Every call returns a distinct, larger number, and a
    /// tick taken after another call returned is larger than that call's tick, across threads.
    pub fn tick(&self) -> u64 {
        let Some(origin) = self.origin else {
            return self.clock.fetch_add(1, Ordering::SeqCst);
        };
        let now = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let next = |last: u64| now.max(last + 1);
        // `fetch_update` answers the value it replaced; the tick is what it stored.
        match self
            .clock
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(next(last)))
        {
            Ok(last) | Err(last) => next(last),
        }
    }

    /// Records an operation. Thread-safe and cheap: records are spread over several buffers by
    /// the calling thread.
    ///
    /// # Panics
    ///
    /// If `op.start > op.end`.
    #[track_caller]
    pub fn record(&self, op: Op) {
        assert!(op.start <= op.end, "operation ends before it starts: {op}");
        self.shard().push(op);
    }

    /// How many operations have been recorded.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every recorded operation, ordered by start tick.
    pub fn ops(&self) -> Vec<Op> {
        let mut ops = self.collect();
        ops.sort_unstable_by_key(|op| (op.start, op.end));
        ops
    }

    /// Checks the recorded history against the rule in the [module docs](self): a read must not
    /// return a version below the floor of any write or invalidation of its key that completed
    /// (`end < read.start`) before it started. Operations still being recorded by other threads
    /// are not seen.
    pub fn check(&self) -> CheckReport {
        self.check_with_lag(Duration::ZERO)
    }

    /// [`check`](Self::check), judging a read only against the writes and invalidations that
    /// completed at least `lag` before it started (`end + lag < read.start`): the rule for
    /// several instances whose invalidations reach each other within `lag`. Needs a
    /// [timed](Self::timed) history (on a counting one, `lag` counts ticks, as nanoseconds).
    pub fn check_with_lag(&self, lag: Duration) -> CheckReport {
        let lag = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
        let started = Instant::now();
        let ops = self.collect();

        /// A key's operations: its writes/invalidations (by index into `ops`) and reads.
        #[derive(Default)]
        struct PerKey {
            bounds: Vec<usize>,
            reads: Vec<usize>,
        }

        let mut keys: HashMap<u32, PerKey> = HashMap::new();
        let mut reads = 0;
        for (index, op) in ops.iter().enumerate() {
            let entry = keys.entry(op.key).or_default();
            if op.is_read() {
                reads += 1;
                entry.reads.push(index);
            } else {
                entry.bounds.push(index);
            }
        }

        let mut violations = Vec::new();
        // Reused per key: the bounds' end ticks, and the index (into `ops`) of the highest floor
        // among the bounds up to and including each position.
        let mut ends: Vec<u64> = Vec::new();
        let mut strongest: Vec<usize> = Vec::new();
        for per_key in keys.values_mut() {
            if per_key.bounds.is_empty() || per_key.reads.is_empty() {
                continue;
            }
            per_key
                .bounds
                .sort_unstable_by_key(|&i| (ops[i].end, ops[i].start));
            ends.clear();
            strongest.clear();
            let mut best: Option<(u64, usize)> = None;
            for &i in &per_key.bounds {
                let floor = ops[i].floor().unwrap_or(0);
                if best.is_none_or(|(max, _)| floor > max) {
                    best = Some((floor, i));
                }
                ends.push(ops[i].end);
                strongest.push(best.map_or(i, |(_, at)| at));
            }
            for &r in &per_key.reads {
                let read = ops[r];
                let completed = ends.partition_point(|&end| end.saturating_add(lag) < read.start);
                let Some(&at) = completed
                    .checked_sub(1)
                    .and_then(|last| strongest.get(last))
                else {
                    continue;
                };
                let op = ops[at];
                let floor = op.floor().unwrap_or(0);
                let seen = match read.kind {
                    OpKind::Read { seen } => seen,
                    _ => None,
                };
                if floor > seen.unwrap_or(0) {
                    violations.push(Violation {
                        key: read.key,
                        read,
                        seen,
                        op,
                        floor,
                    });
                }
            }
        }
        violations.sort_unstable_by_key(|v| (v.key, v.read.start, v.read.end));

        CheckReport {
            operations: ops.len(),
            reads,
            violations,
            elapsed: started.elapsed(),
        }
    }

    /// Every recorded operation, in no particular order.
    fn collect(&self) -> Vec<Op> {
        let mut ops = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            ops.extend_from_slice(&lock(shard));
        }
        ops
    }

    /// The calling thread's buffer.
    fn shard(&self) -> MutexGuard<'_, Vec<Op>> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
        }
        let index = SHARD.with(|shard| {
            shard.get().unwrap_or_else(|| {
                let index = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
                shard.set(Some(index));
                index
            })
        });
        lock(&self.shards[index % self.shards.len()])
    }
}

/// Locks a buffer, ignoring poisoning (a panicking recorder leaves a valid `Vec`).
fn lock(shard: &Mutex<Vec<Op>>) -> MutexGuard<'_, Vec<Op>> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
