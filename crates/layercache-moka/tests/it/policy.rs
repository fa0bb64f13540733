//! The eviction policy takes effect: a hot working set, then a one-time scan of new keys. TinyLFU
//! refuses the scan's keys (seen once, less often than the hot keys they would evict); LRU admits
//! them and the hot keys go.

use std::time::Duration;

use layercache_core::{Clock, Entry, EntryOptions, Key, KeySpace, Namespace, SystemClock};
use layercache_moka::{L1Policy, MokaBackend};

const CAPACITY: u64 = 100;
const HOT: u64 = 50;
const SCAN: u64 = 2_000;

fn entry() -> Entry<u64> {
    EntryOptions::new(Duration::from_secs(600))
        .entry(1, SystemClock.now(), Duration::ZERO)
        .unwrap()
}

fn key(ns: &Namespace, i: u64) -> Key {
    ns.key(i).unwrap()
}

/// Reads each key (a miss stores it), as a cache in front of a source would; returns how many of
/// the hot keys are still held after the scan.
async fn hot_keys_kept_after_scan(policy: L1Policy) -> u64 {
    let cache: MokaBackend<u64> = MokaBackend::builder()
        .max_entries(CAPACITY)
        .eviction_policy(policy)
        .build()
        .unwrap();
    let ns = KeySpace::new("t").unwrap().namespace("policy").unwrap();
    let access = |i: u64| {
        let key = key(&ns, i);
        if cache.get_entry(&key).is_none() {
            cache.set_entry(&key, entry());
        }
    };
    for _round in 0..20 {
        for i in 0..HOT {
            access(i);
        }
    }
    cache.run_pending_tasks().await;
    for i in 0..SCAN {
        access(1_000_000 + i);
        if i % 32 == 0 {
            cache.run_pending_tasks().await;
        }
    }
    cache.run_pending_tasks().await;
    (0..HOT)
        .filter(|&i| cache.lookup_at(&key(&ns, i), SystemClock.now()).is_some())
        .count() as u64
}

#[tokio::test]
async fn tiny_lfu_keeps_the_hot_set_through_a_scan_and_lru_does_not() {
    let tiny_lfu = hot_keys_kept_after_scan(L1Policy::TinyLfu).await;
    let lru = hot_keys_kept_after_scan(L1Policy::Lru).await;
    eprintln!("hot keys kept: TinyLFU {tiny_lfu}, LRU {lru} of {HOT}");
    assert!(tiny_lfu >= HOT * 9 / 10, "TinyLFU kept {tiny_lfu} of {HOT}");
    assert_eq!(
        lru, 0,
        "LRU kept {lru} of {HOT} hot keys through a scan of {SCAN}"
    );
}

#[test]
fn the_default_policy_is_tiny_lfu() {
    assert_eq!(L1Policy::default(), L1Policy::TinyLfu);
}
