//! Building and cloning a short key allocates nothing (ADR 0016): a counting global allocator (its
//! own test binary and its only test, so nothing else is counted) watches keys made per request
//! the way a service makes them.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::alloc::System;

use layercache_core::{Key, KeySpace};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn short_keys_are_made_and_cloned_without_allocating_and_long_ones_share_their_text() {
    let users = KeySpace::new("app").unwrap().namespace("user").unwrap();
    // Warm-up: the thread-local buffer `Namespace::key` writes into grows once.
    let first = users.key(u64::MAX).unwrap();
    assert_eq!(first.as_str(), "app:v1:user:18446744073709551615");

    let mut kept = Vec::with_capacity(1_000);
    let region = Region::new(GLOBAL);
    for id in 0..1_000_u64 {
        let key = users.key(id).unwrap(); // "app:v1:user:<id>": at most 15 bytes
        let copy = key.clone();
        assert_eq!(copy, key);
        kept.push(copy);
    }
    let made_here = region.change().allocations;
    assert_eq!(
        made_here, 0,
        "1,000 short keys made and cloned: {made_here} allocations"
    );
    assert_eq!(kept[42].as_str(), "app:v1:user:42");

    // A text past 23 bytes takes one allocation when made, and its clones share it.
    let region = Region::new(GLOBAL);
    let long = Key::new("app:v1:session:0123456789abcdef").unwrap();
    let clones: Vec<Key> = (0..100).map(|_| long.clone()).collect();
    let change = region.change();
    assert_eq!(
        change.allocations, 2,
        "one for the text, one for the Vec of clones"
    );
    assert!(clones.iter().all(|k| k == &long));
}
