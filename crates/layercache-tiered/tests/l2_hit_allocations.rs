//! What an L2 hit allocates (an L1 miss served by Redis, the value put into L1), against a
//! hand-written redis-rs GET + `serde_json` decode + moka insert of the same values: a counting
//! global allocator in a test binary of its own (one test, so nothing else is counted).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use layercache_core::{EntryOptions, Key, KeySpace};
use layercache_tiered::TieredCache;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

async fn load(key: Key) -> Result<Option<Arc<String>>, std::convert::Infallible> {
    Ok(Some(Arc::new(format!("value of {key}"))))
}

/// Printed for `docs/benchmarks.md`, and held to a bound so that a regression shows.
#[test]
fn an_l2_hit_allocates_about_what_a_hand_written_one_does() {
    use layercache_core::{Backend, Clock, SystemClock};
    use layercache_redis::RedisBackend;
    use layercache_testkit::RedisServer;

    const READS: usize = 500;
    let server = RedisServer::start();
    // One thread: the connection's driver task runs here too, so its allocations are counted.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ns = KeySpace::new("alloc").unwrap().namespace("l2").unwrap();
        let keys: Vec<Key> = (0..READS).map(|i| ns.key(i).unwrap()).collect();
        let raw_keys: Vec<String> = (0..READS).map(|i| format!("raw:{i}")).collect();
        let value = |i: usize| Arc::new(format!("{i:0>1000}"));
        let writer = RedisBackend::connect(server.url()).await.unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let mut raw = redis::aio::ConnectionManager::new(client).await.unwrap();
        let now = SystemClock.now();
        for (i, (key, raw_key)) in keys.iter().zip(&raw_keys).enumerate() {
            let entry = EntryOptions::new(Duration::from_secs(3600))
                .entry(Some(value(i)), now, Duration::ZERO)
                .unwrap();
            Backend::<Option<Arc<String>>>::set(&writer, key, entry)
                .await
                .unwrap();
            let json = serde_json::to_vec(&*value(i)).unwrap();
            redis::cmd("SET")
                .arg(raw_key)
                .arg(json)
                .query_async::<()>(&mut raw)
                .await
                .unwrap();
        }
        let cache = TieredCache::<Arc<String>>::builder()
            .redis(RedisBackend::connect(server.url()).await.unwrap())
            .options(EntryOptions::new(Duration::from_secs(3600)))
            .build()
            .unwrap();
        // Warm the connections, then time nothing: count.
        cache.get(&keys[0]).await.unwrap();
        let region = Region::new(GLOBAL);
        for (i, key) in keys.iter().enumerate().skip(1) {
            let got = cache.get_or_load(key, load).await.unwrap().unwrap();
            assert_eq!(got, value(i));
        }
        let ours = region.change();
        assert_eq!(cache.stats().l2_hits, READS as u64, "{:?}", cache.stats());

        let moka: moka::sync::Cache<u64, Arc<String>> = moka::sync::Cache::new(10_000);
        let region = Region::new(GLOBAL);
        for (i, raw_key) in raw_keys.iter().enumerate().skip(1) {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(raw_key)
                .query_async(&mut raw)
                .await
                .unwrap();
            let got: Arc<String> = Arc::new(serde_json::from_slice(&bytes.unwrap()).unwrap());
            moka.insert(i as u64, Arc::clone(&got));
            assert_eq!(got, value(i));
        }
        let hand_written = region.change();
        let per_read = |n: usize| n as f64 / (READS - 1) as f64;
        eprintln!(
            "allocations per L2 hit: {:.1} (hand-written redis-rs + serde_json + moka: {:.1})",
            per_read(ours.allocations),
            per_read(hand_written.allocations)
        );
        assert!(
            ours.allocations <= hand_written.allocations + 8 * (READS - 1),
            "an L2 hit allocates more than 8 times beyond a hand-written one: ours {ours:?}, \
             hand-written {hand_written:?}"
        );
    });
}
