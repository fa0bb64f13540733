//! `tiered_write`: writes through the two-tier `TieredCache`, 64 at a time, concurrent against
//! sequential in the same run.
//!
//! Both ids use one cache, built with `.redis_url(..)` (L1 + L2), and the same [`KEYS`] distinct
//! keys (`bench:w:0` .. `bench:w:63`), each written with its own 1 KiB [`Payload`]. One iteration is
//! one batch of [`KEYS`] `TieredCache::<Payload>::set` calls (each writes L1, then L2, before it
//! returns); the owned keys and values of the batch are cloned before the clock starts.
//! - `set_64_concurrent`: the [`KEYS`] sets, each in its own tokio task (a `JoinSet`), all spawned
//!   and then all awaited; the spawns are timed.
//! - `set_64_sequential`: the same [`KEYS`] sets, each awaited before the next starts.
//!
//! The goal: `set_64_concurrent` at least 5× faster than `set_64_sequential`. Before each id the
//! keys are deleted from Redis (untimed); after it, a separate `RedisBackend` reads every key back
//! with the value the id wrote, and the cache's stats show no L2 write failure.
//! Redis is a real `redis-server` on loopback, started by `layercache-testkit`. See
//! `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark harness"
)]

use std::time::{Duration, Instant};

use benches::Payload;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use layercache_core::{Backend, EntryOptions, Key, KeySpace};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisServer;
use layercache_tiered::TieredCache;
use tokio::task::JoinSet;

/// Long enough that nothing expires during the run.
const TTL: Duration = Duration::from_secs(3600);
/// Sets per iteration, on as many distinct keys.
const KEYS: usize = 64;

/// The batch every iteration writes: key `i` holds `Payload::new(i)`.
fn batch() -> Vec<(Key, Payload)> {
    let ns = KeySpace::new("bench")
        .expect("key space")
        .namespace("w")
        .expect("namespace");
    (0..KEYS)
        .map(|i| {
            let key = ns.key(i).expect("key");
            (key, Payload::new(i as u64))
        })
        .collect()
}

/// The [`KEYS`] sets, each in its own task, all awaited.
async fn set_concurrent(cache: &TieredCache<Payload>, batch: Vec<(Key, Payload)>) {
    let mut tasks = JoinSet::new();
    for (key, value) in batch {
        let cache = cache.clone();
        tasks.spawn(async move { cache.set(&key, value).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("set task").expect("tiered set");
    }
}

/// The [`KEYS`] sets, one after another.
async fn set_sequential(cache: &TieredCache<Payload>, batch: Vec<(Key, Payload)>) {
    for (key, value) in batch {
        cache.set(&key, value).await.expect("tiered set");
    }
}

/// Removes the batch's keys from Redis, so that [`check_written`] sees what the next id wrote.
async fn clear(checker: &RedisBackend, items: &[(Key, Payload)]) {
    let keys: Vec<Key> = items.iter().map(|(key, _)| key.clone()).collect();
    Backend::<Option<Payload>>::delete_many(checker, &keys)
        .await
        .expect("l2 delete_many");
}

/// Every key of the batch is in Redis with its value, and no L2 write failed.
async fn check_written(
    id: &str,
    cache: &TieredCache<Payload>,
    checker: &RedisBackend,
    items: &[(Key, Payload)],
) {
    let keys: Vec<Key> = items.iter().map(|(key, _)| key.clone()).collect();
    let entries = Backend::<Option<Payload>>::get_many(checker, &keys)
        .await
        .expect("l2 get_many");
    for ((key, value), entry) in items.iter().zip(entries) {
        let entry = entry.unwrap_or_else(|| panic!("{id}: {key} is not in Redis"));
        assert_eq!(entry.value.as_ref(), Some(value), "{id}: {key}");
    }
    let stats = cache.stats();
    assert_eq!(stats.l2_write_failures, 0, "{id}: {stats:?}");
    assert_eq!(stats.l2_pending_writes, 0, "{id}: {stats:?}");
    assert!(stats.l2_writes >= KEYS as u64, "{id}: {stats:?}");
}

fn tiered_write(c: &mut Criterion) {
    let rt = benches::runtime();
    // Kept alive until the end of the group; dropping it stops the server.
    let server = RedisServer::start();
    let items = batch();

    // `redis_url` connects lazily, which spawns onto the runtime: build inside it.
    let runtime_context = rt.enter();
    let cache: TieredCache<Payload> = TieredCache::builder()
        .redis_url(server.url())
        .options(EntryOptions::new(TTL))
        // The check after the timing asserts that no write failed: a busy machine (or a debug build
        // under `cargo test --all-targets`) must not turn a slow round trip into a failure. A
        // timeout that never fires costs nothing in the measurement.
        .l2_timeout(Duration::from_secs(2))
        .build()
        .expect("tiered cache");
    drop(runtime_context);

    // A separate connection to the same Redis, to clear and check the keys outside the timing.
    let checker = rt.block_on(async {
        let checker = RedisBackend::connect(server.url())
            .await
            .expect("redis backend");
        // Both ids start from a connected cache: one untimed write, then the keys are cleared.
        set_sequential(&cache, items[..1].to_vec()).await;
        checker
    });

    let mut group = c.benchmark_group("tiered_write");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(benches::measurement_time(Duration::from_secs(5)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));

    rt.block_on(clear(&checker, &items));
    let mut ran = false;
    group.bench_function("set_64_concurrent", |b| {
        ran = true;
        b.to_async(&rt).iter_custom(|iters| {
            let (cache, items) = (&cache, &items);
            async move {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let batch = items.clone();
                    let start = Instant::now();
                    set_concurrent(cache, batch).await;
                    elapsed += start.elapsed();
                }
                elapsed
            }
        });
    });
    // Skipped when a filter left the id out.
    if ran {
        rt.block_on(check_written("set_64_concurrent", &cache, &checker, &items));
    }

    rt.block_on(clear(&checker, &items));
    let mut ran = false;
    group.bench_function("set_64_sequential", |b| {
        ran = true;
        b.to_async(&rt).iter_custom(|iters| {
            let (cache, items) = (&cache, &items);
            async move {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let batch = items.clone();
                    let start = Instant::now();
                    set_sequential(cache, batch).await;
                    elapsed += start.elapsed();
                }
                elapsed
            }
        });
    });
    // Skipped when a filter left the id out.
    if ran {
        rt.block_on(check_written("set_64_sequential", &cache, &checker, &items));
    }

    group.finish();
    drop(server);
}

criterion_group!(benches, tiered_write);
criterion_main!(benches);
