//! `rate_limit`: one request through the Redis rate limiter against its raw baseline.
//!
//! - `raw_evalsha`: redis-rs `EVALSHA` (`Script::invoke_async`) of the limiter's GCRA script on a
//!   `ConnectionManager`, with the same key shape and arguments: no code of ours on the path.
//! - `layer`: an `http::Request` through `RateLimitLayer` around a `tower::service_fn` that
//!   answers at once (the limiter's own connection, its headers, the boxed future).
//!
//! The limit is high enough that every request is admitted, so both ids do the same script work.
//! Redis is a real `redis-server` on loopback, started by `layercache-testkit` for the group.
//! Goal: `layer` ≤ 1.15 × `raw_evalsha`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark harness"
)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use layercache_testkit::RedisServer;
use layercache_tower::rate_limit::{Algorithm, RateLimiter};
use redis::aio::ConnectionManager;
use tower::{Layer, ServiceExt};

/// A limit no run reaches: one request per microsecond, a burst of a billion.
const LIMIT: u64 = 1_000_000_000;
const WINDOW: Duration = Duration::from_secs(1_000);

fn rate_limit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Kept alive until the end of the group; dropping it stops the server.
    let server = RedisServer::start();

    let (limiter, raw) = rt.block_on(async {
        let limiter = RateLimiter::builder(Algorithm::Gcra, LIMIT, WINDOW)
            .key_prefix("bench:rate_limit:")
            // Generous, so a stall of a loaded machine never sends a request to the fallback
            // (which would measure the in-process limiter instead of Redis).
            .timeout(Duration::from_secs(1))
            .connect(&server.url())
            .await
            .expect("limiter");
        let client = redis::Client::open(server.url()).expect("redis url");
        let raw = ConnectionManager::new(client)
            .await
            .expect("redis connection");
        (limiter, raw)
    });
    let service = limiter
        .layer(|req: &Request<String>| {
            let client = req.headers().get("x-client")?.to_str().ok()?;
            Some(client.to_owned())
        })
        .layer(tower::service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    // The raw baseline runs the same script with the same arguments, on a key of its own.
    let script = limiter.script();
    let (raw_key, limit, interval) = limiter.script_args("raw");

    rt.block_on(async {
        let answer: Vec<i64> = script
            .key(&raw_key)
            .arg(limit)
            .arg(interval)
            .invoke_async(&mut raw.clone())
            .await
            .expect("raw evalsha");
        assert_eq!(answer.first(), Some(&1), "the raw call is admitted");
        let request = Request::builder()
            .header("x-client", "layer")
            .body(String::new())
            .expect("request");
        let response = service.clone().oneshot(request).await.expect("layer");
        assert_eq!(response.status(), http::StatusCode::OK);
        assert!(response.headers().contains_key("ratelimit-remaining"));
    });

    let mut group = c.benchmark_group("rate_limit");
    group
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));

    group.bench_function("raw_evalsha", |b| {
        b.to_async(&rt).iter(|| {
            // What a user of redis-rs does: a handle on the shared multiplexed connection.
            let mut conn = raw.clone();
            let key = raw_key.as_str();
            async move {
                let answer: Vec<i64> = script
                    .key(black_box(key))
                    .arg(limit)
                    .arg(interval)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                black_box(answer)
            }
        });
    });

    group.bench_function("layer", |b| {
        b.to_async(&rt).iter(|| {
            let svc = service.clone();
            async move {
                let request = Request::builder()
                    .header("x-client", black_box("layer"))
                    .body(String::new())
                    .unwrap();
                black_box(svc.oneshot(request).await.unwrap())
            }
        });
    });

    group.finish();
    let stats = limiter.stats();
    assert_eq!(stats.redis_errors, 0, "every layer request reached Redis");
    assert_eq!(stats.denied, 0);
    drop(server);
}

criterion_group!(benches, rate_limit);
criterion_main!(benches);
