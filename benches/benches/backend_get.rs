//! `backend_get`: the hit path of one key, layercache backends against their raw baselines.
//!
//! - `moka_raw`: `moka::future::Cache<String, Payload>::get` (bounded by entry count).
//! - `moka_backend`: `MokaBackend::<Payload>::get` through `Arc<dyn Backend<Payload>>`.
//! - `redis_raw`: redis-rs GET on a `ConnectionManager`, then `serde_json::from_slice` into `Payload`.
//! - `redis_backend`: `RedisBackend::get` through `Arc<dyn Backend<Payload>>` (envelope + JSON).
//!
//! Every id reads the same 1 KiB [`Payload`]. Redis is a real `redis-server` on loopback, started
//! by `layercache-testkit` for the group. See `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark harness"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use benches::Payload;
use criterion::{Criterion, criterion_group, criterion_main};
use layercache_core::{Backend, Clock, EntryOptions, KeySpace, SystemClock};
use layercache_moka::{DEFAULT_MAX_ENTRIES, MokaBackend};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisServer;
use redis::aio::ConnectionManager;

/// Long enough that nothing expires during the run.
const TTL: Duration = Duration::from_secs(3600);

fn backend_get(c: &mut Criterion) {
    let rt = benches::runtime();
    // Kept alive until the end of the group; dropping it stops the server.
    let server = RedisServer::start();

    let payload = Payload::new(42);
    let json = serde_json::to_vec(&payload).expect("payload encodes");
    let ns = KeySpace::new("bench")
        .expect("key space")
        .namespace("backend_get")
        .expect("namespace");
    let entry = || {
        EntryOptions::new(TTL)
            .entry(payload.clone(), SystemClock.now(), Duration::ZERO)
            .expect("entry")
    };

    // moka: the raw cache and the backend, bounded alike.
    let moka_raw_key = ns.key("moka_raw").expect("key").as_str().to_owned();
    let moka_raw: moka::future::Cache<String, Payload> = moka::future::Cache::builder()
        .max_capacity(DEFAULT_MAX_ENTRIES)
        .build();
    let moka_key = ns.key("moka_backend").expect("key");
    let moka: Arc<dyn Backend<Payload>> =
        Arc::new(MokaBackend::<Payload>::with_max_entries(DEFAULT_MAX_ENTRIES).expect("moka"));

    // redis: a raw ConnectionManager and the backend, on the same server, each with its own key.
    let redis_raw_key = ns.key("redis_raw").expect("key").as_str().to_owned();
    let redis_key = ns.key("redis_backend").expect("key");
    let (redis_raw, redis) = rt.block_on(async {
        moka_raw.insert(moka_raw_key.clone(), payload.clone()).await;
        moka.set(&moka_key, entry()).await.expect("moka set");

        let client = redis::Client::open(server.url()).expect("redis url");
        let mut manager = ConnectionManager::new(client)
            .await
            .expect("redis connection");
        redis::cmd("SET")
            .arg(&redis_raw_key)
            .arg(&json)
            .query_async::<()>(&mut manager)
            .await
            .expect("redis set");
        let redis: Arc<dyn Backend<Payload>> = Arc::new(
            RedisBackend::connect(server.url())
                .await
                .expect("redis backend"),
        );
        redis.set(&redis_key, entry()).await.expect("backend set");

        // Every id must measure a hit of the same value.
        assert_eq!(moka_raw.get(&moka_raw_key).await.as_ref(), Some(&payload));
        let hit = moka.get(&moka_key).await.expect("moka get");
        assert_eq!(hit.map(|e| e.value).as_ref(), Some(&payload));
        let hit = redis.get(&redis_key).await.expect("redis get");
        assert_eq!(hit.map(|e| e.value).as_ref(), Some(&payload));
        (manager, redis)
    });

    let mut group = c.benchmark_group("backend_get");
    group
        .measurement_time(benches::measurement_time(Duration::from_secs(5)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));

    group.bench_function("moka_raw", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka_raw.get(black_box(moka_raw_key.as_str())).await) });
    });

    group.bench_function("moka_backend", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka.get(black_box(&moka_key)).await.unwrap()) });
    });

    group.bench_function("redis_raw", |b| {
        b.to_async(&rt).iter(|| {
            // What a user of redis-rs does: a handle on the shared multiplexed connection.
            let mut conn = redis_raw.clone();
            let key = redis_raw_key.as_str();
            async move {
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(black_box(key))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let value: Option<Payload> = bytes.map(|b| serde_json::from_slice(&b).unwrap());
                black_box(value)
            }
        });
    });

    group.bench_function("redis_backend", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(redis.get(black_box(&redis_key)).await.unwrap()) });
    });

    group.finish();
    drop(server);
}

criterion_group!(benches, backend_get);
criterion_main!(benches);
