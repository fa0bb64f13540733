//! Cache-aside and read-through over real Redis and a real SQLite source.

use std::sync::Arc;
use std::time::Duration;

use layercache_core::{Backend, EntryOptions, Key, ManualClock};
use layercache_redis::RedisBackend;
use layercache_strategy::{CacheAside, ReadThrough};
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_testkit::sqlite::{Product, Products};

async fn redis(server: &RedisServer, clock: &ManualClock) -> Arc<dyn Backend<Option<Product>>> {
    Arc::new(
        RedisBackend::builder(server.url())
            .clock(clock.clone())
            .connect()
            .await
            .unwrap(),
    )
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
    let cache = CacheAside::builder(redis(&server, &clock).await)
        .clock(clock.clone())
        .options(EntryOptions::new(Duration::from_secs(60)))
        .build()
        .unwrap();
    let ns = unique_space().namespace("products").unwrap();
    let keys: Vec<Key> = (0..10).map(|i| ns.key(&format!("p{i}")).unwrap()).collect();
    let mut tasks = Vec::new();
    for t in 0..20 {
        let (cache, products, keys) = (cache.clone(), products.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            for r in 0..50 {
                let i = (t + r) % 10;
                let product = cache
                    .get_or_load(&keys[i], &products)
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
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, 1_000);
    println!(
        "source reads saved: {} of 1000; {stats:?}",
        1_000 - source.loads
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_rows_reach_the_source_once_per_key_per_negative_ttl() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let products = Arc::new(Products::create().await.unwrap());
    let cache = CacheAside::builder(redis(&server, &clock).await)
        .clock(clock.clone())
        .negative_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let ns = unique_space().namespace("missing").unwrap();
    let keys: Vec<Key> = (0..5)
        .map(|i| ns.key(&format!("nope{i}")).unwrap())
        .collect();
    for _ in 0..20 {
        for key in &keys {
            assert_eq!(cache.get_or_load(key, &products).await.unwrap(), None);
        }
    }
    assert_eq!(products.stats().loads, 5, "one source read per absent key");
    clock.advance(Duration::from_secs(6));
    for _ in 0..20 {
        for key in &keys {
            assert_eq!(cache.get_or_load(key, &products).await.unwrap(), None);
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
    cache.delete(&keys[0]).await.unwrap();
    assert_eq!(
        cache
            .get_or_load(&keys[0], &products)
            .await
            .unwrap()
            .unwrap()
            .name,
        "late arrival"
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
    let cache = CacheAside::builder(redis(&server, &clock).await)
        .clock(clock.clone())
        .build()
        .unwrap();
    let reader = ReadThrough::new(cache, products.clone());
    let ns = unique_space().namespace("rt").unwrap();
    let keys: Vec<Key> = (0..25).map(|i| ns.key(&format!("p{i}")).unwrap()).collect();
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
