//! Bulk reads and warm-up.

use std::sync::Arc;
use std::time::Duration;

use layercache_core::{Backend, Clock, EntryOptions, Key, SystemClock};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::{TieredCache, WarmOutcome};

use crate::{Source, command_calls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_of_100_keys_makes_one_mget_and_one_batched_load() {
    let server = RedisServer::start();
    let url = server.url();
    let ns = unique_space().namespace("bulk").unwrap();
    let keys: Vec<Key> = (0..100).map(|i| ns.key(i).unwrap()).collect();

    // 50 keys already in L2, written by "another process".
    let other = RedisBackend::connect(url.as_str()).await.unwrap();
    let options = EntryOptions::new(Duration::from_secs(60));
    let items = keys[..50]
        .iter()
        .map(|k| {
            (
                k.clone(),
                options
                    .entry(
                        Some(format!("cached {k}")),
                        SystemClock.now(),
                        Duration::ZERO,
                    )
                    .unwrap(),
            )
        })
        .collect();
    Backend::<Option<String>>::set_many(&other, items)
        .await
        .unwrap();

    let cache: TieredCache<String> = TieredCache::builder()
        .redis_url(url.as_str())
        .options(options)
        .build()
        .unwrap();
    let source = Source::new(Duration::ZERO);
    let mgets_before = command_calls(&url, "mget").await;
    let values = cache.get_many(&keys, &source).await.unwrap();

    assert_eq!(
        command_calls(&url, "mget").await - mgets_before,
        1,
        "one MGET for the L2 part"
    );
    assert_eq!(
        source.batches(),
        1,
        "one batched loader call for the misses"
    );
    assert_eq!(source.loads(), 0);
    for (i, (key, value)) in keys.iter().zip(&values).enumerate() {
        let expected = if i < 50 {
            format!("cached {key}")
        } else {
            format!("value of {key}")
        };
        assert_eq!(value.as_deref(), Some(expected.as_str()));
    }
    let stats = cache.stats();
    assert_eq!((stats.l2_hits, stats.l2_misses), (50, 50), "{stats:?}");

    // Everything is in L1 now: a second read touches neither Redis nor the source.
    let again = cache.get_many(&keys, &source).await.unwrap();
    assert_eq!(again, values);
    assert_eq!(command_calls(&url, "mget").await - mgets_before, 1);
    assert_eq!(source.batches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_join_a_batch_in_flight() {
    let cache: TieredCache<String> = TieredCache::builder().build().unwrap();
    let source = Source::new(Duration::from_millis(200));
    let keys: Vec<Key> = (0..10)
        .map(|i| Key::new(format!("k{i}")).unwrap())
        .collect();
    let (batch, single) = tokio::join!(cache.get_many(&keys, &source), async {
        // Wait until the batch holds its keys' flights, then ask for one of them.
        while cache.stats().loads == 0 {
            tokio::task::yield_now().await;
        }
        cache.get_or_load_from(&keys[3], &source).await
    });
    assert_eq!(batch.unwrap()[3], single.unwrap());
    assert_eq!(
        (source.batches(), source.loads()),
        (1, 0),
        "the single read joined the batch"
    );
    assert!(cache.stats().coalesced >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_reports_every_item_and_one_failure_does_not_stop_the_rest() {
    let server = RedisServer::start();
    let cache: TieredCache<String> = TieredCache::builder()
        .redis_url(server.url())
        .build()
        .unwrap();
    // Warm-up loads in batches of DEFAULT_WARM_BATCH (100): a failing row fails its batch (one
    // `load_many`), and the other batches still load.
    let source = Arc::new(Source {
        failing: vec![":142".into()],
        ..Source::default()
    });
    let ns = unique_space().namespace("warm").unwrap();
    let keys: Vec<Key> = (0..300).map(|i| ns.key(i).unwrap()).collect();
    let report = cache.warm(&keys, &source).await;
    assert_eq!(report.items.len(), 300);
    assert_eq!(report.loaded(), 200);
    assert_eq!(report.absent(), 0);
    let reported: Vec<&Key> = report.items.iter().map(|(k, _)| k).collect();
    assert_eq!(
        reported,
        keys.iter().collect::<Vec<_>>(),
        "in the order given"
    );
    let failed: Vec<&Key> = report.failed().map(|(k, _)| k).collect();
    assert_eq!(failed, keys[100..200].iter().collect::<Vec<_>>());
    assert!(
        report
            .failed()
            .all(|(_, e)| e.kind() == layercache_core::ErrorKind::Loader)
    );
    assert!(matches!(report.items[0].1, WarmOutcome::Loaded));
    // The warmed values are in both tiers.
    cache.shutdown().await.unwrap();
    let l2 = RedisBackend::connect(server.url()).await.unwrap();
    let stored = Backend::<Option<String>>::get(&l2, &keys[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.value.as_deref(),
        Some(format!("value of {}", keys[0]).as_str())
    );
    let loads = source.loads();
    assert_eq!(
        cache
            .get_or_load_from(&keys[1], &source)
            .await
            .unwrap()
            .unwrap(),
        format!("value of {}", keys[1])
    );
    assert_eq!(source.loads(), loads, "a warmed key is a hit");
}
