//! `rate_limit`: one request through the Redis rate limiter against its raw baseline.
//!
//! - `raw_evalsha`: redis-rs `EVALSHA` (`Script::invoke_async`, loading the script on
//!   `NOSCRIPT`) of the limiter's GCRA script on a `ConnectionManager` of its own, with the same
//!   key and arguments: no code of ours on the path.
//! - `layer`: an `http::Request` through `RateLimitLayer` around a `tower::service_fn` that
//!   answers at once: the key function, the limiter's own `ConnectionManager`, its timeout, its
//!   counters, the three `RateLimit-*` headers and the boxed future.
//! - `raw_evalsha_16`, `layer_16`: the same from 16 tasks at once (16 requests in flight on the
//!   one multiplexed connection, as in a busy server); the time is per request.
//!
//! Like for like: one Redis server, the same script, the same key (`<prefix>gcra:bench`, so the
//! script reads and writes the same state), the same arguments, the same kind of connection,
//! the same number of requests in flight on both sides of a pair, run by tasks on the runtime's
//! workers (where a server runs its handlers). The limit is high enough that every request is
//! admitted, so the script does the same work for both. Both sides drop their answer inside the
//! clock (the script's reply; the response with the headers the layer added).
//!
//! The HTTP request: in the one-at-a-time pair it is built before the clock starts (a server has
//! it already; building it is not the limiter's work): each request is timed on its own, on
//! both sides, so requests are built one at a time and the allocator sees what it sees in a
//! server (a batch built ahead and freed in the loop sends glibc's malloc down its slow paths).
//! In the `_16` pair the layer side builds its requests inside the clock, which counts against
//! it.
//!
//! What the raw side does not do and the limiter must: bound the wait itself (the raw side pays
//! redis-rs's own response timeout instead, the default 500 ms of `ConnectionManager`: one timer
//! per request on both sides), turn the reply into a decision, count it, and write the headers.
//!
//! After the group, the pair runs again interleaved (see [`interleaved`]): the criterion ids run
//! one after the other, and on a shared machine a build starting between them moves their ratio
//! more than anything the limiter does. Redis is a real `redis-server` on loopback, started by
//! `layercache-testkit` for the group. Goal: `layer` ≤ 1.15 × `raw_evalsha`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark harness"
)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpu_time::ProcessTime;
use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use layercache_testkit::RedisServer;
use layercache_tower::rate_limit::{Algorithm, RateLimiter};
use redis::Script;
use redis::aio::ConnectionManager;
use tower::{Layer, Service, ServiceExt};

/// A limit no run reaches: one request per microsecond, a burst of a billion.
const LIMIT: u64 = 1_000_000_000;
const WINDOW: Duration = Duration::from_secs(1_000);
/// The key of every request, on both sides.
const CLIENT: &str = "bench";
/// Requests in flight in the `_16` pair.
const IN_FLIGHT: u64 = 16;

static X_CLIENT: HeaderName = HeaderName::from_static("x-client");

/// A request of [`CLIENT`]; static header name and value, so building and dropping it costs the
/// harness little.
fn request() -> Request<String> {
    let mut request = Request::new(String::new());
    let value = HeaderValue::from_static(CLIENT);
    request.headers_mut().insert(X_CLIENT.clone(), value);
    request
}

/// One side of a pair: what it needs per request before the clock starts, and the request.
trait Side: Clone + Send + Sync + 'static {
    type Input: Send;
    fn input(&self) -> Self::Input;
    fn call(&self, input: Self::Input) -> impl Future<Output = ()> + Send;
}

/// The raw baseline: what a user of redis-rs writes, on a handle of the shared multiplexed
/// connection.
#[derive(Clone)]
struct RawEvalsha {
    script: &'static Script,
    conn: ConnectionManager,
    key: Arc<str>,
    limit: u64,
    second: u64,
}

impl Side for RawEvalsha {
    type Input = ();

    fn input(&self) {}

    async fn call(&self, (): ()) {
        let answer: Vec<i64> = self
            .script
            .key(black_box(&*self.key))
            .arg(self.limit)
            .arg(self.second)
            .invoke_async(&mut self.conn.clone())
            .await
            .unwrap();
        black_box(&answer);
    }
}

/// A request through the layer, the way a server's connection task calls its service.
#[derive(Clone)]
struct Layered<S>(S);

impl<S> Side for Layered<S>
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    type Input = Request<String>;

    fn input(&self) -> Request<String> {
        request()
    }

    async fn call(&self, request: Request<String>) {
        let response = self.0.clone().oneshot(request).await.unwrap();
        black_box(&response);
    }
}

/// `iters` requests of `side` one after the other in a task on a worker, each timed on its own
/// (its input made outside the clock); their sum.
async fn one_at_a_time(iters: u64, side: impl Side) -> Duration {
    let task = tokio::spawn(async move {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let input = side.input();
            let started = Instant::now();
            side.call(input).await;
            total += started.elapsed();
        }
        total
    });
    task.await.unwrap()
}

/// `iters` requests of `side` from [`IN_FLIGHT`] tasks at once, inputs made inside the clock;
/// the time they all took.
async fn in_flight(iters: u64, side: impl Side) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let (side, n) = (
                side.clone(),
                iters / IN_FLIGHT + u64::from(i < iters % IN_FLIGHT),
            );
            tokio::spawn(async move {
                for _ in 0..n {
                    side.call(side.input()).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

/// How long each half of the interleaved check runs at most (1 s in quick mode), and how many
/// pairs.
const INTERLEAVED_FOR: Duration = Duration::from_secs(4);
const PAIRS: usize = 100_000;

/// Requests per block of the CPU-time rounds.
const CPU_BLOCK: u32 = 250;

/// The one-at-a-time pair again, the two sides interleaved in a task on a worker, so a load
/// that comes and goes weighs on both alike: the median wall time of alternating single
/// requests (who goes first alternates too), then this process's CPU time per request (all
/// threads) over alternating blocks, with a third block that only builds and drops requests
/// (the harness's share of the layer side).
async fn interleaved(raw: RawEvalsha, layer: impl Side<Input = Request<String>>) {
    let run_for = if benches::quick() {
        Duration::from_secs(1)
    } else {
        INTERLEAVED_FOR
    };
    let task = tokio::spawn(async move {
        let (mut raw_wall, mut layer_wall) = (Vec::new(), Vec::new());
        let started = Instant::now();
        while raw_wall.len() < PAIRS && started.elapsed() < run_for {
            let request = request();
            let raw_first = raw_wall.len() % 2 == 0;
            if raw_first {
                let t = Instant::now();
                raw.call(()).await;
                raw_wall.push(t.elapsed());
            }
            let t = Instant::now();
            layer.call(request).await;
            layer_wall.push(t.elapsed());
            if !raw_first {
                let t = Instant::now();
                raw.call(()).await;
                raw_wall.push(t.elapsed());
            }
        }
        let mut cpu = [Duration::ZERO; 3];
        let mut rounds = 0;
        let started = Instant::now();
        while started.elapsed() < run_for {
            let t = ProcessTime::now();
            for _ in 0..CPU_BLOCK {
                raw.call(()).await;
            }
            cpu[0] += t.elapsed();
            let t = ProcessTime::now();
            for _ in 0..CPU_BLOCK {
                layer.call(request()).await;
            }
            cpu[1] += t.elapsed();
            let t = ProcessTime::now();
            for _ in 0..CPU_BLOCK {
                drop(black_box(request()));
            }
            cpu[2] += t.elapsed();
            rounds += 1;
        }
        (raw_wall, layer_wall, cpu, rounds * CPU_BLOCK)
    });
    let (mut raw_wall, mut layer_wall, cpu, requests) = task.await.unwrap();
    let median = |times: &mut Vec<Duration>| {
        times.sort_unstable();
        times[times.len() / 2].as_secs_f64() * 1e6
    };
    let (raw_median, layer_median) = (median(&mut raw_wall), median(&mut layer_wall));
    let [raw_cpu, layer_cpu, harness_cpu] =
        cpu.map(|total| total.as_secs_f64() * 1e6 / f64::from(requests));
    eprintln!(
        "rate_limit interleaved: {} pairs, median wall per request raw_evalsha {raw_median:.2} µs, \
         layer {layer_median:.2} µs, ratio {:.3}; CPU per request (this process, all threads, \
         {requests} requests a side) raw_evalsha {raw_cpu:.2} µs, layer {layer_cpu:.2} µs (of \
         which building and dropping the request {harness_cpu:.2} µs), ratio {:.3}",
        raw_wall.len(),
        layer_median / raw_median,
        layer_cpu / raw_cpu,
    );
}

fn rate_limit(c: &mut Criterion) {
    let rt = benches::runtime();
    // Kept alive until the end of the group; dropping it stops the server.
    let server = RedisServer::start();

    let (limiter, conn) = rt.block_on(async {
        let limiter = RateLimiter::builder(Algorithm::Gcra, LIMIT, WINDOW)
            .key_prefix("bench:rate_limit:")
            // Generous, so a stall of a loaded machine never sends a request to the fallback
            // (which would measure the in-process limiter instead of Redis).
            .timeout(Duration::from_secs(1))
            .connect(&server.url())
            .await
            .expect("limiter");
        let client = redis::Client::open(server.url()).expect("redis url");
        let conn = ConnectionManager::new(client)
            .await
            .expect("redis connection");
        (limiter, conn)
    });
    let service = limiter
        .layer(|req: &Request<String>| {
            let client = req.headers().get("x-client")?.to_str().ok()?;
            Some(client.to_owned())
        })
        .layer(tower::service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    // The raw baseline runs the same script with the same arguments on the same key.
    let (key, limit, second) = limiter.script_args(CLIENT);
    let raw = RawEvalsha {
        script: limiter.script(),
        conn,
        key: key.into(),
        limit,
        second,
    };

    rt.block_on(async {
        let answer: Vec<i64> = raw
            .script
            .key(&*raw.key)
            .arg(limit)
            .arg(second)
            .invoke_async(&mut raw.conn.clone())
            .await
            .expect("raw evalsha");
        assert_eq!(answer.first(), Some(&1), "the raw call is admitted");
        let response = service.clone().oneshot(request()).await.expect("layer");
        assert_eq!(response.status(), http::StatusCode::OK);
        assert!(response.headers().contains_key("ratelimit-remaining"));
    });

    let mut group = c.benchmark_group("rate_limit");
    group
        .measurement_time(benches::measurement_time(Duration::from_secs(5)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));

    let layer = Layered(service);
    group.bench_function("raw_evalsha", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| one_at_a_time(iters, raw.clone()));
    });
    group.bench_function("layer", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| one_at_a_time(iters, layer.clone()));
    });
    group.bench_function("raw_evalsha_16", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| in_flight(iters, raw.clone()));
    });
    group.bench_function("layer_16", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| in_flight(iters, layer.clone()));
    });
    group.finish();
    if benches::interleaved_wanted() {
        rt.block_on(interleaved(raw, layer));
    }
    let stats = limiter.stats();
    assert_eq!(stats.redis_errors, 0, "every layer request reached Redis");
    assert_eq!(stats.denied, 0);
    drop(server);
}

criterion_group!(benches, rate_limit);
criterion_main!(benches);
