use super::*;
use std::sync::Arc;

/// A small deterministic generator (xorshift64*), so the tests need no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn check(ops: &[Op]) -> CheckReport {
    let history = History::new();
    for &op in ops {
        history.record(op);
    }
    history.check()
}

#[test]
fn a_read_after_a_completed_write_must_not_see_an_older_version() {
    let report = check(&[
        Op::write(1, 1, 2, 5),
        Op::write(1, 3, 4, 6),
        Op::read(1, 5, 6, Some(5)),
    ]);
    assert_eq!(report.operations, 3);
    assert_eq!(report.reads, 1);
    assert_eq!(report.violations.len(), 1);
    let v = report.violations[0];
    assert_eq!(v.key, 1);
    assert_eq!(v.read, Op::read(1, 5, 6, Some(5)));
    assert_eq!(v.seen, Some(5));
    assert_eq!(v.op, Op::write(1, 3, 4, 6));
    assert_eq!(v.floor, 6);
    assert!(!report.is_clean());
    let shown = report.to_string();
    assert!(shown.contains("1 violation"), "{shown}");
    assert!(shown.contains("saw v5"), "{shown}");
}

#[test]
fn a_read_after_a_completed_write_may_see_it_or_a_newer_version() {
    check(&[Op::write(1, 1, 2, 5), Op::read(1, 3, 4, Some(5))]).assert_clean();
    // A newer version from a write still in flight (or not recorded) is fine too.
    check(&[
        Op::write(1, 1, 2, 5),
        Op::write(1, 3, 8, 6),
        Op::read(1, 4, 5, Some(6)),
    ])
    .assert_clean();
}

#[test]
fn a_read_after_an_invalidation_must_not_see_below_its_floor() {
    let report = check(&[
        Op::write(1, 1, 2, 3),
        Op::invalidate(1, 3, 6, 4),
        Op::read(1, 7, 8, Some(3)),
    ]);
    assert_eq!(report.violations.len(), 1);
    let v = report.violations[0];
    assert_eq!(v.op, Op::invalidate(1, 3, 6, 4));
    assert_eq!(v.floor, 4);
    assert_eq!(v.seen, Some(3));

    // At or above the floor is fine.
    check(&[Op::invalidate(1, 3, 6, 4), Op::read(1, 7, 8, Some(4))]).assert_clean();
    check(&[Op::invalidate(1, 3, 6, 4), Op::read(1, 7, 8, Some(9))]).assert_clean();
}

#[test]
fn nothing_counts_as_version_zero() {
    // Never written: nothing is the right answer.
    check(&[Op::read(1, 1, 2, None)]).assert_clean();
    check(&[Op::invalidate(1, 1, 2, 0), Op::read(1, 3, 4, None)]).assert_clean();
    // Written, or invalidated with a floor above 0: nothing means a lost value.
    assert_eq!(
        check(&[Op::write(1, 1, 2, 1), Op::read(1, 3, 4, None)])
            .violations
            .len(),
        1
    );
    let report = check(&[Op::invalidate(1, 1, 2, 2), Op::read(1, 3, 4, None)]);
    assert_eq!(report.violations.len(), 1);
    assert_eq!(report.violations[0].seen, None);
    assert!(report.to_string().contains("saw nothing"));
}

#[test]
fn an_overlapping_read_may_see_either_value() {
    // Reads overlapping the write of v2 (ticks 10..20) in every way.
    for (start, end) in [(5, 15), (12, 18), (15, 25), (5, 25), (20, 30)] {
        for seen in [Some(1), Some(2)] {
            check(&[
                Op::write(1, 1, 2, 1),
                Op::write(1, 10, 20, 2),
                Op::read(1, start, end, seen),
            ])
            .assert_clean();
        }
    }
}

#[test]
fn a_read_that_started_before_a_write_ended_may_see_the_old_value() {
    // The read starts before the write ends and ends long after it: it may still have
    // fetched the old value before the write took effect.
    check(&[
        Op::write(1, 1, 2, 1),
        Op::write(1, 10, 20, 2),
        Op::read(1, 19, 100, Some(1)),
    ])
    .assert_clean();
    // Same for an invalidation.
    check(&[
        Op::write(1, 1, 2, 1),
        Op::invalidate(1, 10, 20, 2),
        Op::read(1, 19, 100, Some(1)),
    ])
    .assert_clean();
}

#[test]
fn keys_are_independent() {
    check(&[Op::write(1, 1, 2, 9), Op::read(2, 3, 4, Some(1))]).assert_clean();
}

#[test]
fn the_strongest_completed_operation_is_reported() {
    // Bounds ending in an order unlike their floors'.
    let report = check(&[
        Op::write(1, 1, 5, 7),
        Op::write(1, 2, 3, 4),
        Op::invalidate(1, 4, 6, 5),
        Op::read(1, 10, 11, Some(2)),
    ]);
    assert_eq!(report.violations.len(), 1);
    assert_eq!(report.violations[0].op, Op::write(1, 1, 5, 7));
    assert_eq!(report.violations[0].floor, 7);
}

#[test]
#[should_panic(expected = "ends before it starts")]
fn an_operation_ending_before_it_starts_is_refused() {
    History::new().record(Op::read(1, 5, 4, None));
}

#[test]
fn a_failing_report_panics_with_its_violations() {
    let report = check(&[Op::write(3, 1, 2, 5), Op::read(3, 3, 4, Some(4))]);
    let panic = std::panic::catch_unwind(|| report.assert_clean()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("key 3: read [3..4] saw v4"), "{message}");
    assert!(message.contains("write(v5) [1..2]"), "{message}");
}

/// The rule, checked the slow way.
fn brute_force(ops: &[Op]) -> Vec<(Op, u64)> {
    let mut found = Vec::new();
    for read in ops.iter().filter(|op| op.is_read()) {
        let OpKind::Read { seen } = read.kind else {
            unreachable!()
        };
        let max = ops
            .iter()
            .filter(|op| op.key == read.key && op.end < read.start)
            .filter_map(Op::floor)
            .max();
        if let Some(max) = max.filter(|&max| max > seen.unwrap_or(0)) {
            found.push((*read, max));
        }
    }
    found.sort_unstable_by_key(|(read, _)| (read.key, read.start, read.end));
    found
}

#[test]
fn agrees_with_brute_force_on_random_histories() {
    let mut rng = Rng::new(0x5EED);
    let mut violations = 0;
    for _ in 0..300 {
        let n = 1 + rng.below(60) as usize;
        let ops: Vec<Op> = (0..n)
            .map(|_| {
                let key = rng.below(3) as u32;
                let start = rng.below(100);
                let end = start + rng.below(20);
                let version = rng.below(10);
                match rng.below(3) {
                    0 => Op::write(key, start, end, version),
                    1 => Op::invalidate(key, start, end, version),
                    _ => Op::read(key, start, end, version.checked_sub(1)),
                }
            })
            .collect();
        let report = check(&ops);
        assert_eq!(report.operations, n);
        assert_eq!(report.reads, ops.iter().filter(|op| op.is_read()).count());
        let found: Vec<(Op, u64)> = report
            .violations
            .iter()
            .map(|v| {
                assert_eq!(v.op.floor(), Some(v.floor));
                assert_eq!(v.op.key, v.key);
                assert!(v.op.end < v.read.start);
                (v.read, v.floor)
            })
            .collect();
        assert_eq!(found, brute_force(&ops), "{ops:#?}");
        violations += found.len();
    }
    // The histories exercise both outcomes.
    assert!(violations > 100, "{violations}");
}

/// A valid history of `count` operations over `keys` keys: up to `concurrency` operations
/// are in flight at once, and each takes effect at one instant between its start and end
/// ticks, against a source whose versions only grow.
fn linearizable_history(history: &History, seed: u64, count: usize, keys: u32) {
    #[derive(Clone, Copy)]
    enum Phase {
        Started,
        Applied,
    }
    struct Pending {
        key: u32,
        start: u64,
        kind: OpKind,
        phase: Phase,
    }

    let concurrency = 32;
    let mut rng = Rng::new(seed);
    let mut source = vec![0u64; keys as usize];
    let mut next_version = 1;
    let mut pending: Vec<Pending> = Vec::new();
    let mut started = 0;
    while started < count || !pending.is_empty() {
        let start_one = started < count
            && (pending.is_empty() || (pending.len() < concurrency && rng.below(3) == 0));
        if start_one {
            started += 1;
            let key = rng.below(u64::from(keys)) as u32;
            let kind = match rng.below(10) {
                0..=5 => OpKind::Read { seen: None },
                6..=8 => OpKind::Write { version: 0 },
                // The floor is the source's version at the invalidation's start.
                _ => OpKind::Invalidate {
                    floor: source[key as usize],
                },
            };
            pending.push(Pending {
                key,
                start: history.tick(),
                kind,
                phase: Phase::Started,
            });
            continue;
        }
        let at = rng.below(pending.len() as u64) as usize;
        let op = &mut pending[at];
        match op.phase {
            Phase::Started => {
                let current = &mut source[op.key as usize];
                match &mut op.kind {
                    OpKind::Read { seen } => *seen = (*current > 0).then_some(*current),
                    OpKind::Write { version } => {
                        *version = next_version;
                        *current = next_version;
                        next_version += 1;
                    }
                    OpKind::Invalidate { .. } => {}
                }
                op.phase = Phase::Applied;
            }
            Phase::Applied => {
                let op = pending.swap_remove(at);
                history.record(Op {
                    key: op.key,
                    start: op.start,
                    end: history.tick(),
                    kind: op.kind,
                });
            }
        }
    }
}

#[test]
fn a_random_valid_history_of_100_000_operations_checks_clean() {
    let history = History::new();
    linearizable_history(&history, 42, 100_000, 100);
    assert_eq!(history.len(), 100_000);
    let report = history.check();
    println!("{report}");
    report.assert_clean();
    assert_eq!(report.operations, 100_000);
    assert!(report.reads > 50_000, "{report}");
    // Generous: the check takes about 0.15 s unoptimised; this only catches a blow-up.
    assert!(report.elapsed < Duration::from_secs(5), "{report}");
}

#[test]
fn a_stale_read_planted_in_a_large_valid_history_is_found() {
    let history = History::new();
    linearizable_history(&history, 7, 20_000, 50);
    let ops = history.ops();
    let (write_end, key, version) = ops
        .iter()
        .find_map(|op| match op.kind {
            OpKind::Write { version } if version > 1 => Some((op.end, op.key, version)),
            _ => None,
        })
        .unwrap();
    let start = history.tick();
    assert!(start > write_end);
    history.record(Op::read(key, start, history.tick(), Some(version - 1)));
    // And one that can't be stale: it starts at tick 0, before everything.
    history.record(Op::read(key, 0, history.tick(), None));
    let report = history.check();
    assert_eq!(report.violations.len(), 1, "{report}");
    assert_eq!(report.violations[0].read.start, start);
    assert!(report.violations[0].floor >= version);
}

#[test]
fn records_from_many_threads() {
    let history = Arc::new(History::new());
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let history = Arc::clone(&history);
            std::thread::spawn(move || {
                for i in 0..1_000u64 {
                    // Each thread owns one key and writes increasing versions.
                    let start = history.tick();
                    let end = history.tick();
                    history.record(Op::write(t, start, end, i + 1));
                    let start = history.tick();
                    let end = history.tick();
                    history.record(Op::read(t, start, end, Some(i + 1)));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(history.len(), 16_000);
    let ops = history.ops();
    assert!(ops.windows(2).all(|w| w[0].start <= w[1].start));
    // Ticks are distinct across threads.
    let mut ticks: Vec<u64> = ops.iter().flat_map(|op| [op.start, op.end]).collect();
    ticks.sort_unstable();
    ticks.dedup();
    assert_eq!(ticks.len(), 32_000);
    let report = history.check();
    report.assert_clean();
    assert_eq!(report.reads, 8_000);
}

#[test]
fn a_lag_forgives_reads_that_start_within_it_and_only_those() {
    let history = History::timed();
    let (start, end) = (history.tick(), history.tick());
    history.record(Op::write(1, start, end, 2));
    let (start, end) = (history.tick(), history.tick());
    history.record(Op::read(1, start, end, Some(1)));
    assert!(end > start && start > 0, "timed ticks increase");
    assert_eq!(history.check().violations.len(), 1, "stale without a lag");
    assert!(
        history
            .check_with_lag(std::time::Duration::from_secs(60))
            .is_clean(),
        "within the lag"
    );
    // A read that starts after the lag has passed is judged again.
    let later = history.tick() + 2_000_000_000;
    history.record(Op::read(1, later, later + 1, Some(1)));
    let report = history.check_with_lag(std::time::Duration::from_secs(1));
    assert_eq!(report.violations.len(), 1);
    assert_eq!(report.violations[0].read.start, later);
}
