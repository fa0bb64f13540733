//! Cache-aside (the `TieredCache` itself) and read-through over real Redis and a real SQLite source.

use std::sync::Arc;
use std::time::Duration;

use layercache_core::{Backend, EntryOptions, Key, ManualClock};
use layercache_redis::RedisBackend;
use layercache_strategy::ReadThrough;
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_testkit::sqlite::{Product, Products};
use layercache_tiered::{TieredCache, TieredCacheBuilder};

/// A cache over L1 and a Redis L2, both on `clock`.
async fn tiered(server: &RedisServer, clock: &ManualClock) -> TieredCacheBuilder<Product> {
    let redis: Arc<dyn Backend<Option<Product>>> = Arc::new(
        RedisBackend::builder(server.url())
            .clock(clock.clone())
            .command_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap(),
    );
    TieredCache::builder()
        .l2_backend(redis)
        .l2_timeout(Duration::from_secs(2))
        .clock(clock.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reads_over_ten_keys_reach_the_source_ten_times() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let products = Arc::new(Products::create().await.unwrap());
    for i in 0..10 {
        products
            .insert(&Product::new(
                format!("p{i}"),
                format!("product {i}"),
                100 + i,
            ))
            .await
            .unwrap();
    }
    let cache = tiered(&server, &clock)
        .await
        .options(EntryOptions::new(Duration::from_secs(60)))
        .build()
        .unwrap();
    let ns = unique_space().namespace("products").unwrap();
    let keys: Vec<Key> = (0..10).map(|i| ns.key(format!("p{i}")).unwrap()).collect();
    let mut tasks = Vec::new();
    for t in 0..20 {
        let (cache, products, keys) = (cache.clone(), products.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            for r in 0..50 {
                let i = (t + r) % 10;
                let product = cache
                    .get_or_load_from(&keys[i], &products)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(product.name, format!("product {i}"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let source = products.stats();
    assert_eq!(source.loads, 10, "1,000 reads, 10 source reads: {source:?}");
    println!(
        "source reads saved: {} of 1000; {:?}",
        1_000 - source.loads,
        cache.stats()
    );
    // Loaded values reach L2 in the background: once they landed, nothing is kept.
    cache.shutdown().await.unwrap();
    assert_eq!(cache.in_flight(), (0, 0, 0), "nothing kept once idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_rows_reach_the_source_once_per_key_per_negative_ttl() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let products = Arc::new(Products::create().await.unwrap());
    let cache = tiered(&server, &clock)
        .await
        .negative_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let ns = unique_space().namespace("missing").unwrap();
    let keys: Vec<Key> = (0..5)
        .map(|i| ns.key(format!("nope{i}")).unwrap())
        .collect();
    for _ in 0..20 {
        for key in &keys {
            assert_eq!(cache.get_or_load_from(key, &products).await.unwrap(), None);
        }
    }
    assert_eq!(products.stats().loads, 5, "one source read per absent key");
    clock.advance(Duration::from_secs(6));
    for _ in 0..20 {
        for key in &keys {
            assert_eq!(cache.get_or_load_from(key, &products).await.unwrap(), None);
        }
    }
    assert_eq!(
        products.stats().loads,
        10,
        "once more per key after the negative TTL"
    );

    // A row that appears is served once its negative entry expires, or at once after a delete.
    products
        .insert(&Product::new("nope0", "late arrival", 1))
        .await
        .unwrap();
    assert_eq!(
        cache.get_or_load_from(&keys[0], &products).await.unwrap(),
        None,
        "still the cached absence"
    );
    cache.delete(&keys[0]).await.unwrap();
    assert_eq!(
        cache
            .get_or_load_from(&keys[0], &products)
            .await
            .unwrap()
            .unwrap()
            .name,
        "late arrival"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_negative_caching_every_read_of_an_absent_row_reaches_the_source() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let products = Arc::new(Products::create().await.unwrap());
    let cache = tiered(&server, &clock)
        .await
        .no_negative_caching()
        .build()
        .unwrap();
    let ns = unique_space().namespace("missing").unwrap();
    let key = ns.key("nope").unwrap();
    for n in 1..=10 {
        assert_eq!(cache.get_or_load_from(&key, &products).await.unwrap(), None);
        assert_eq!(products.stats().loads, n, "the absence was not cached");
    }
    assert_eq!(cache.get(&key).await.unwrap(), None);

    // So a row that appears is served on the next read, without a delete.
    products
        .insert(&Product::new("nope", "late arrival", 1))
        .await
        .unwrap();
    assert_eq!(
        cache
            .get_or_load_from(&key, &products)
            .await
            .unwrap()
            .unwrap()
            .name,
        "late arrival"
    );
    assert_eq!(products.stats().loads, 11);
    // A value is cached as usual.
    cache.get_or_load_from(&key, &products).await.unwrap();
    assert_eq!(products.stats().loads, 11);

    // The same with a closure loader: each `None` reaches the loader again.
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let other = ns.key("closure").unwrap();
    for n in 1..=3 {
        let counter = Arc::clone(&calls);
        let value = cache
            .get_or_load(&other, move |_key: Key| async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, layercache_core::Error>(None::<Product>)
            })
            .await
            .unwrap();
        assert_eq!(value, None);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_negative_caching_a_closure_none_is_cached_for_the_negative_ttl() {
    let clock = ManualClock::starting_now();
    let cache = TieredCache::<String>::builder()
        .clock(clock.clone())
        .negative_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let key = Key::new("absent").unwrap();
    let read = || {
        let counter = Arc::clone(&calls);
        cache.get_or_load(&key, move |_key: Key| async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, layercache_core::Error>(None::<String>)
        })
    };
    for _ in 0..5 {
        assert_eq!(read().await.unwrap(), None);
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(4));
    assert_eq!(read().await.unwrap(), None);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(read().await.unwrap(), None);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "loaded again once the negative TTL ran out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_through_loads_all_misses_with_one_batched_call() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let products = Arc::new(Products::create().await.unwrap());
    for i in 0..20 {
        products
            .insert(&Product::new(format!("p{i}"), format!("product {i}"), i))
            .await
            .unwrap();
    }
    let cache = tiered(&server, &clock).await.build().unwrap();
    let reader = ReadThrough::new(cache, products.clone());
    let ns = unique_space().namespace("rt").unwrap();
    let keys: Vec<Key> = (0..25).map(|i| ns.key(format!("p{i}")).unwrap()).collect();
    for key in &keys[..10] {
        reader.get(key).await.unwrap();
    }
    assert_eq!(products.stats().loads, 10);
    let values = reader.get_many(&keys).await.unwrap();
    let stats = products.stats();
    assert_eq!(
        (stats.loads, stats.load_many_calls),
        (10, 1),
        "one batched call for 15 misses"
    );
    for (i, value) in values.iter().enumerate() {
        match value {
            Some(p) => assert_eq!(p.name, format!("product {i}")),
            None => assert!(i >= 20, "p{i} exists"),
        }
    }
    // Hits, and absences cached negatively: no further source call.
    reader.get_many(&keys).await.unwrap();
    assert_eq!(products.stats().load_many_calls, 1);
}
