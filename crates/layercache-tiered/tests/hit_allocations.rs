//! An L1 hit allocates nothing: a counting global allocator (its own test binary and its only
//! test, so nothing else is counted, and no earlier test left moka garbage to collect) watches
//! 10,000 hits after warm-up.
//!
//! The values sit behind an `Arc`, as the README recommends for values costly to clone: a hit
//! hands out one reference count. The hit path itself (L1 lookup, clock, freshness, counters,
//! refresh check) must add nothing to that. moka's own maintenance runs every 64 reads and now
//! and then seals a batch of its epoch-based garbage collector (crossbeam-epoch) into one
//! allocation; a raw `moka::sync::Cache` read the same way allocates the same, so the test holds
//! the cache to that: no allocation beyond what moka itself makes for the same reads.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use layercache_core::{EntryOptions, Key, KeySpace};
use layercache_tiered::TieredCache;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const KEYS: usize = 100;

const HITS: usize = 10_000;

async fn load(key: Key) -> Result<Option<Arc<String>>, std::convert::Infallible> {
    Ok(Some(Arc::new(format!("value of {key}"))))
}

#[test]
fn an_l1_hit_allocates_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = TieredCache::<Arc<String>>::builder()
            .options(EntryOptions::new(Duration::from_secs(3600)))
            .build()
            .unwrap();
        let ns = KeySpace::new("alloc").unwrap().namespace("hits").unwrap();
        let keys: Vec<Key> = (0..KEYS).map(|i| ns.key(i).unwrap()).collect();
        // Warm-up: load every key, then read each a few times (moka's admission and maintenance
        // settle on the first reads).
        for round in 0..10 {
            for key in &keys {
                let value = cache.get_or_load(key, load).await.unwrap().unwrap();
                if round == 0 {
                    assert_eq!(*value, format!("value of {key}"));
                }
            }
        }
        let hits_before = cache.stats().l1_hits;

        let region = Region::new(GLOBAL);
        let mut found = 0_usize;
        for i in 0..HITS {
            let key = &keys[i % KEYS];
            let value = cache.get_or_load(key, load).await.unwrap();
            found += usize::from(value.is_some());
        }
        let ours = region.change();

        // The same reads on a raw moka cache, warmed the same way.
        let raw: moka::sync::Cache<Key, Arc<String>> = moka::sync::Cache::new(10_000);
        for round in 0..10 {
            for key in &keys {
                if round == 0 {
                    raw.insert(key.clone(), Arc::new(format!("value of {key}")));
                }
                assert!(raw.get(key).is_some());
            }
        }
        let region = Region::new(GLOBAL);
        let mut raw_found = 0_usize;
        for i in 0..HITS {
            raw_found += usize::from(raw.get(&keys[i % KEYS]).is_some());
        }
        let moka_own = region.change();

        assert_eq!(
            (found, raw_found),
            (HITS, HITS),
            "every read found its value"
        );
        assert_eq!(
            cache.stats().l1_hits - hits_before,
            HITS as u64,
            "every read was an L1 hit"
        );
        eprintln!(
            "{HITS} L1 hits: {} allocations ({} bytes); raw moka, same reads: {} ({} bytes)",
            ours.allocations, ours.bytes_allocated, moka_own.allocations, moka_own.bytes_allocated
        );
        assert!(
            ours.allocations == 0 || ours.allocations <= moka_own.allocations,
            "{HITS} L1 hits allocated {} times ({} bytes); moka alone allocates {} times for the \
             same reads: {ours:?}",
            ours.allocations,
            ours.bytes_allocated,
            moka_own.allocations
        );
        assert!(
            ours.allocations * 100 <= HITS,
            "more than one allocation per 100 hits: {ours:?}"
        );
    });
}
