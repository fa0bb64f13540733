//! An L1 hit allocates nothing: a counting global allocator (its own test binary and its only
//! test, so nothing else is counted, and no earlier test left moka garbage to collect) watches
//! 10,000 hits after warm-up.
//!
//! The values sit behind an `Arc`, as the README recommends for values costly to clone: a hit
//! hands out one reference count. The hit path itself (L1 lookup, clock, freshness, counters,
//! refresh check) must add nothing to that. moka's own maintenance runs every 64 reads and on a
//! timer, and may now and then allocate once for itself (seen on a slow, cold CI run: 4
//! allocations in 10,000 hits, never freed); so the hits are counted in rounds, and one round of
//! 10,000 hits must allocate nothing at all (a hit that allocated would show in every round).

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
const ROUNDS: usize = 5;

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
        let build = || {
            TieredCache::<Arc<String>>::builder()
                .options(EntryOptions::new(Duration::from_secs(3600)))
                .build()
                .unwrap()
        };
        // With the `metrics` feature, the latency histograms record every hit into a recorder
        // that allocates nothing itself: what allocates is ours.
        #[cfg(feature = "metrics")]
        let cache = metrics::with_local_recorder(&recorder::COUNTING, build);
        #[cfg(not(feature = "metrics"))]
        let cache = build();
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

        // Rounds: moka's maintenance runs now and then (every 64 reads, and on a timer) and may
        // make a one-time allocation of its own (a buffer, a garbage bag); a hit that allocated
        // would show in every round.
        let mut found = 0_usize;
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let region = Region::new(GLOBAL);
            for i in 0..HITS {
                let key = &keys[i % KEYS];
                let value = cache.get_or_load(key, load).await.unwrap();
                found += usize::from(value.is_some());
            }
            rounds.push(region.change());
        }
        let ours = rounds
            .iter()
            .min_by_key(|round| round.allocations)
            .copied()
            .unwrap();
        let all: usize = rounds.iter().map(|round| round.allocations).sum();

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
            (ROUNDS * HITS, HITS),
            "every read found its value"
        );
        assert_eq!(
            cache.stats().l1_hits - hits_before,
            (ROUNDS * HITS) as u64,
            "every read was an L1 hit"
        );
        eprintln!(
            "{ROUNDS} rounds of {HITS} L1 hits: {:?} allocations; raw moka, {HITS} reads: {} \
             ({} bytes)",
            rounds
                .iter()
                .map(|round| round.allocations)
                .collect::<Vec<_>>(),
            moka_own.allocations,
            moka_own.bytes_allocated
        );
        assert_eq!(
            ours.allocations, 0,
            "every round of {HITS} L1 hits allocated (the quietest {ours:?}; moka alone, the same \
             reads: {moka_own:?})"
        );
        assert!(
            all * 100 <= ROUNDS * HITS,
            "more than one allocation per 100 hits over all rounds: {all}"
        );
        #[cfg(feature = "metrics")]
        assert!(
            recorder::COUNTING.records() >= 2 * (ROUNDS * HITS - 64) as u64,
            "every hit recorded its latency (L1 and the whole read; one in 64 timed, weight 64): {}",
            recorder::COUNTING.records()
        );
    });
}

/// A `metrics` recorder whose histograms count their records in one atomic (no allocation).
#[cfg(feature = "metrics")]
mod recorder {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use metrics::{
        Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString,
        Unit,
    };

    pub(crate) static COUNTING: Counting = Counting;

    static RECORDS: AtomicU64 = AtomicU64::new(0);

    pub(crate) struct Counting;

    struct Records;

    impl HistogramFn for Records {
        fn record(&self, _: f64) {
            RECORDS.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Counting {
        pub(crate) fn records(&self) -> u64 {
            RECORDS.load(Ordering::Relaxed)
        }
    }

    impl Recorder for Counting {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Records))
        }
    }
}
