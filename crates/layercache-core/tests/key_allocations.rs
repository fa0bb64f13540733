//! Building and cloning a short key allocates nothing (ADR 0016): a counting global allocator (its
//! own test binary and its only test) watches keys made per request the way a service makes them.
//!
//! The allocator counts every thread of the process, and the test harness's own thread allocates
//! now and then (seen on a loaded CI machine: 4 allocations during 1,000 keys). So the keys are
//! made in rounds, and the fewest allocations of a round is what is asserted: an allocation made by
//! building or cloning a key would show in every round.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::alloc::System;

use layercache_core::{Key, KeySpace};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Rounds of each measurement; the fewest allocations of a round count.
const ROUNDS: usize = 5;

#[test]
fn short_keys_are_made_and_cloned_without_allocating_and_long_ones_share_their_text() {
    let users = KeySpace::new("app").unwrap().namespace("user").unwrap();
    // Warm-up: the thread-local buffer `Namespace::key` writes into grows once.
    let first = users.key(u64::MAX).unwrap();
    assert_eq!(first.as_str(), "app:v1:user:18446744073709551615");

    let mut fewest = usize::MAX;
    for _ in 0..ROUNDS {
        let mut kept = Vec::with_capacity(1_000);
        let region = Region::new(GLOBAL);
        for id in 0..1_000_u64 {
            let key = users.key(id).unwrap(); // "app:v1:user:<id>": at most 15 bytes
            let copy = key.clone();
            assert_eq!(copy, key);
            kept.push(copy);
        }
        fewest = fewest.min(region.change().allocations);
        assert_eq!(kept[42].as_str(), "app:v1:user:42");
    }
    assert_eq!(
        fewest, 0,
        "1,000 short keys made and cloned: {fewest} allocations in the best of {ROUNDS} rounds"
    );

    // A text past 23 bytes takes one allocation when made, and its clones share it.
    let mut fewest = usize::MAX;
    for _ in 0..ROUNDS {
        let region = Region::new(GLOBAL);
        let long = Key::new("app:v1:session:0123456789abcdef").unwrap();
        let clones: Vec<Key> = (0..100).map(|_| long.clone()).collect();
        fewest = fewest.min(region.change().allocations);
        assert!(clones.iter().all(|k| k == &long));
    }
    assert_eq!(
        fewest, 2,
        "one for the text, one for the Vec of clones (the best of {ROUNDS} rounds)"
    );
}
