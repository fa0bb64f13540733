//! Large values (issue 11): a maximum value size checked before anything is written, loaded
//! values over it served but not cached, and large writes bounded by their size, not by a
//! timeout made for small ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use layercache_core::ErrorKind;
use layercache_redis::{DEFAULT_MAX_VALUE_SIZE, RedisBackend};
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::TieredCache;

use crate::raw_get;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_set_is_a_typed_error_and_writes_nothing() {
    let server = RedisServer::start();
    let cache = TieredCache::<String>::builder()
        .redis_url(server.url())
        .build()
        .unwrap();
    let key = unique_space().namespace("large").unwrap().key("k").unwrap();
    cache.set(&key, "small".to_owned()).await.unwrap();

    let huge = "x".repeat(64 * MIB);
    let error = cache
        .set(&key, huge)
        .await
        .expect_err("64 MiB is over 1 MiB");
    assert_eq!(error.kind(), ErrorKind::TooLarge, "{error}");
    assert!(!error.is_temporary());
    assert!(
        error
            .to_string()
            .contains(&DEFAULT_MAX_VALUE_SIZE.to_string()),
        "{error}"
    );

    // Nothing written: both tiers keep the old value, no retry is pending.
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("small"));
    let stored = raw_get(&server.url(), &key).await.unwrap();
    assert!(stored.len() < 100, "Redis holds {} bytes", stored.len());
    let stats = cache.stats();
    assert_eq!(stats.values_too_large, 1, "{stats:?}");
    assert_eq!(stats.l2_write_failures, 0, "{stats:?}");
    assert_eq!(stats.l2_pending_writes, 0, "{stats:?}");
    assert_eq!(cache.in_flight().2, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_value_over_the_limit_is_served_but_not_cached() {
    let server = RedisServer::start();
    let redis = RedisBackend::builder(server.url())
        .max_value_size(4096)
        .connect()
        .await
        .unwrap();
    let cache = TieredCache::<String>::builder()
        .redis(redis)
        .build()
        .unwrap();
    let key = unique_space().namespace("large").unwrap().key("k").unwrap();
    let loads = Arc::new(AtomicU64::new(0));
    for _ in 0..3 {
        let loads = Arc::clone(&loads);
        let value = cache
            .get_or_load(&key, |_| async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Some("y".repeat(10_000)))
            })
            .await
            .unwrap();
        assert_eq!(value.map(|v| v.len()), Some(10_000));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3, "nothing was cached");
    assert_eq!(raw_get(&server.url(), &key).await, None);
    assert_eq!(cache.stats().values_too_large, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_limit_stores_64_mib_and_another_instance_reads_it() {
    let server = RedisServer::start();
    let redis = RedisBackend::builder(server.url())
        .max_value_size(128 * MIB)
        .connect()
        .await
        .unwrap();
    let writer = TieredCache::<String>::builder()
        .redis(redis)
        .build()
        .unwrap();
    let reader = TieredCache::<String>::builder()
        .redis_url(server.url())
        .build()
        .unwrap();
    let key = unique_space().namespace("large").unwrap().key("k").unwrap();
    let huge = "z".repeat(64 * MIB);
    let started = Instant::now();
    writer.set(&key, huge.clone()).await.unwrap();
    let written = started.elapsed();
    // Each read is bounded by the default 100 ms L2 timeout: the first one times out, and the
    // backend learns the value's size in the background; later reads are bounded by that size.
    // The reader tries again, as a caller would, until a generous deadline: a few timeouts in a
    // row open the circuit (reads skip L2 for its cool-down), which a busy machine can cause.
    let started = Instant::now();
    let mut attempts = 0;
    let read = loop {
        attempts += 1;
        let read = reader.get(&key).await.unwrap();
        if read.is_some() || started.elapsed() > Duration::from_secs(30) {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "64 MiB: set {written:?}, read by another instance {:?} ({attempts} attempts, {} L2 errors)",
        started.elapsed(),
        reader.stats().l2_errors
    );
    assert!(
        read == Some(huge),
        "the other instance reads the whole value"
    );
    let stats = writer.stats();
    assert_eq!(
        (stats.l2_writes, stats.l2_write_failures),
        (1, 0),
        "{stats:?}"
    );
}
