//! The Redis rate limiter against real `redis-server` processes: exact counts of the fixed
//! window, the documented bounds of the sliding window and GCRA, the headers, two instances
//! sharing a limit, Redis stopped mid-run, a Redis Cluster and bad settings.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use layercache_core::ErrorKind;
use layercache_testkit::{RedisCluster, RedisServer};
use layercache_tower::rate_limit::{
    Algorithm, DecisionSource, OnRedisError, RateLimitLayer, RateLimitStats, RateLimiter,
};
use tower::{Layer, Service, ServiceExt};

const LIMIT: u64 = 100;
/// Long enough that 1,000 requests fit in one window on a busy machine.
const WINDOW: Duration = Duration::from_secs(10);
const REQUESTS: usize = 1_000;
const TASKS: usize = 16;
/// The Redis timeout of the counting tests: far above the default (50 ms), so a stall of a busy
/// machine never hands a decision to the fallback and the counts stay exact.
const PATIENT: Duration = Duration::from_secs(2);

fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// A key prefix no other test uses.
fn prefix(test: &str) -> String {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test:{test}:{nanos}:{}:",
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

type KeyFn = fn(&Request<String>) -> Option<String>;

/// The client's key: the `x-client` header; requests without one are not limited.
fn client_key(req: &Request<String>) -> Option<String> {
    let value = req.headers().get("x-client")?.to_str().ok()?;
    Some(value.to_owned())
}

fn layer(limiter: &RateLimiter) -> RateLimitLayer<KeyFn> {
    limiter.layer(client_key as KeyFn)
}

/// A service behind the limiter whose handler answers 200 "ok".
fn service(
    limiter: &RateLimiter,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    layer(limiter).layer(tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    }))
}

fn request(client: &str) -> Request<String> {
    Request::builder()
        .header("x-client", client)
        .body(String::new())
        .unwrap()
}

/// `requests` requests of `client` from `TASKS` concurrent tasks, task `i` through
/// `services[i % len]`; the responses, and how long the burst took.
async fn burst<S>(
    services: &[S],
    client: &str,
    requests: usize,
) -> (Vec<Response<String>>, Duration)
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let svc = services[task % services.len()].clone();
        let client = client.to_owned();
        let share = requests / TASKS + usize::from(task < requests % TASKS);
        tasks.push(tokio::spawn(async move {
            let mut responses = Vec::with_capacity(share);
            for _ in 0..share {
                responses.push(svc.clone().oneshot(request(&client)).await.unwrap());
            }
            responses
        }));
    }
    let mut responses = Vec::with_capacity(requests);
    for task in tasks {
        responses.extend(task.await.unwrap());
    }
    (responses, started.elapsed())
}

fn header(response: &Response<String>, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// Checks every response's status and headers; the number allowed.
fn check_responses(responses: &[Response<String>], window: Duration) -> u64 {
    let mut allowed = 0;
    for response in responses {
        assert_eq!(header(response, "ratelimit-limit"), Some(LIMIT));
        let reset = header(response, "ratelimit-reset").expect("RateLimit-Reset");
        assert!(reset <= window.as_secs(), "reset {reset}");
        let remaining = header(response, "ratelimit-remaining").expect("RateLimit-Remaining");
        match response.status() {
            StatusCode::OK => {
                allowed += 1;
                assert!(remaining < LIMIT);
                assert!(response.headers().get("retry-after").is_none());
                assert_eq!(response.body(), "ok");
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(remaining, 0);
                let retry = header(response, "retry-after").expect("Retry-After");
                assert!((1..=window.as_secs()).contains(&retry), "retry {retry}");
                assert!(response.body().is_empty(), "the handler never ran");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    allowed
}

async fn limiter(algorithm: Algorithm, test: &str) -> RateLimiter {
    RateLimiter::builder(algorithm, LIMIT, WINDOW)
        .key_prefix(prefix(test))
        .timeout(PATIENT)
        .connect(&shared_server().url())
        .await
        .unwrap()
}

fn assert_counted(stats: RateLimitStats, allowed: u64, requests: usize) {
    assert_eq!(stats.allowed, allowed);
    assert_eq!(stats.allowed + stats.denied, requests as u64);
    assert_eq!(stats.redis_errors, 0);
    assert_eq!(stats.fallback_decisions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixed_window_admits_exactly_the_limit() {
    let limiter = limiter(Algorithm::FixedWindow, "fixed").await;
    let (responses, _) = burst(&[service(&limiter)], "client-a", REQUESTS).await;
    assert_eq!(responses.len(), REQUESTS);
    assert_eq!(check_responses(&responses, WINDOW), LIMIT);
    // Each admitted request saw its own count: remaining 99 down to 0, once each.
    let mut remaining: Vec<u64> = responses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .map(|r| header(r, "ratelimit-remaining").unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..LIMIT).collect::<Vec<_>>());
    assert_counted(limiter.stats(), LIMIT, REQUESTS);
    // Another client has a limit of its own.
    let (other, _) = burst(&[service(&limiter)], "client-b", 150).await;
    assert_eq!(check_responses(&other, WINDOW), LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sliding_window_stays_within_its_bound() {
    let limiter = limiter(Algorithm::SlidingWindow, "sliding").await;
    let (responses, took) = burst(&[service(&limiter)], "client", REQUESTS).await;
    let allowed = check_responses(&responses, WINDOW);
    // A burst of length d from an idle key: at most limit + ⌈limit × d / window⌉ (exactly the
    // limit unless the burst crosses a window boundary).
    let bound = LIMIT + (LIMIT as f64 * took.as_secs_f64() / WINDOW.as_secs_f64()).ceil() as u64;
    assert!(
        (LIMIT..=bound).contains(&allowed),
        "allowed {allowed}, bound {bound}"
    );
    assert_counted(limiter.stats(), allowed, REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcra_stays_within_its_bound() {
    let limiter = limiter(Algorithm::Gcra, "gcra").await;
    let (responses, took) = burst(&[service(&limiter)], "client", REQUESTS).await;
    let allowed = check_responses(&responses, WINDOW);
    // A burst of `limit`, then one per emission interval (window / limit).
    let interval = WINDOW.as_secs_f64() / LIMIT as f64;
    let bound = LIMIT + (took.as_secs_f64() / interval).floor() as u64 + 1;
    assert!(
        (LIMIT..=bound).contains(&allowed),
        "allowed {allowed}, bound {bound}"
    );
    assert_counted(limiter.stats(), allowed, REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_the_limit() {
    let prefix = prefix("shared");
    let url = shared_server().url();
    let connect = || {
        RateLimiter::builder(Algorithm::FixedWindow, LIMIT, WINDOW)
            .key_prefix(prefix.clone())
            .timeout(PATIENT)
            .connect(&url)
    };
    let (one, two) = (connect().await.unwrap(), connect().await.unwrap());
    let (responses, _) = burst(&[service(&one), service(&two)], "client", REQUESTS).await;
    assert_eq!(check_responses(&responses, WINDOW), LIMIT);
    let (a, b) = (one.stats(), two.stats());
    assert_eq!(a.allowed + b.allowed, LIMIT);
    assert!(
        a.allowed > 0 && b.allowed > 0,
        "both instances admitted some"
    );
    assert_eq!(a.allowed + a.denied, (REQUESTS / 2) as u64);
    assert_eq!(b.allowed + b.denied, (REQUESTS / 2) as u64);
}

/// Above the default (50 ms) so the healthy first burst never times out on a loaded machine.
const TIMEOUT: Duration = Duration::from_millis(250);

/// A limiter on a server of its own, which the test stops after a first, healthy burst.
/// Returns the stats at the stop too, so the assertions count only what came after.
async fn stopped_redis(
    on_error: OnRedisError,
    limit: u64,
) -> (RateLimiter, RedisServer, RateLimitStats) {
    let server = RedisServer::start();
    let limiter = RateLimiter::builder(Algorithm::FixedWindow, limit, WINDOW)
        .key_prefix(prefix("stopped"))
        .timeout(TIMEOUT)
        .on_redis_error(on_error)
        .connect(&server.url())
        .await
        .unwrap();
    let (before, _) = burst(&[service(&limiter)], "before", 5).await;
    assert!(before.iter().all(|r| r.status() == StatusCode::OK));
    let before = limiter.stats();
    server.stop();
    (limiter, server, before)
}

/// 50 requests with Redis down: every one completes (the hang detector is 5× the timeout per
/// request, far above what a decision takes).
async fn burst_while_down(limiter: &RateLimiter, client: &str) -> Vec<Response<String>> {
    let bound = TIMEOUT * 5 * 50;
    let (responses, _) = tokio::time::timeout(bound, burst(&[service(limiter)], client, 50))
        .await
        .expect("no request hangs");
    assert_eq!(responses.len(), 50);
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_fail_open_allows_and_counts() {
    let (limiter, _server, before) = stopped_redis(OnRedisError::Allow, LIMIT).await;
    let responses = burst_while_down(&limiter, "client").await;
    for response in &responses {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers().get("ratelimit-remaining").is_none(),
            "no count is known"
        );
    }
    let stats = limiter.stats();
    assert_eq!(stats.allowed - before.allowed, 50);
    assert_eq!(stats.fallback_decisions - before.fallback_decisions, 50);
    assert!(stats.redis_errors > before.redis_errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_local_fallback_limits_this_instance() {
    let (limiter, _server, before) = stopped_redis(OnRedisError::Local, 10).await;
    let responses = burst_while_down(&limiter, "client").await;
    let allowed = responses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(allowed, 10, "the in-process window admits the limit");
    for response in responses.iter().filter(|r| r.status() != StatusCode::OK) {
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(response, "ratelimit-limit"), Some(10));
        assert!(header(response, "retry-after").unwrap() >= 1);
    }
    let stats = limiter.stats();
    assert_eq!(stats.fallback_decisions - before.fallback_decisions, 50);
    assert_eq!(stats.denied - before.denied, 40);
    assert!(stats.redis_errors > before.redis_errors);
    assert_eq!(
        limiter.check("client").await.source,
        DecisionSource::Local,
        "still deciding without Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_fail_closed_denies_with_503() {
    let (limiter, _server, before) = stopped_redis(OnRedisError::Deny, LIMIT).await;
    let responses = burst_while_down(&limiter, "client").await;
    for response in &responses {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(header(response, "retry-after").unwrap() >= 1);
        assert!(response.body().is_empty(), "the handler never ran");
    }
    let stats = limiter.stats();
    assert_eq!(stats.denied - before.denied, 50);
    assert_eq!(stats.fallback_decisions - before.fallback_decisions, 50);
    assert!(stats.redis_errors > before.redis_errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_limits_without_crossslot() {
    let cluster = shared_cluster();
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let limiter = RateLimiter::builder(algorithm, 10, WINDOW)
            .key_prefix(prefix("cluster"))
            .timeout(PATIENT)
            .connect_cluster(&cluster.urls())
            .await
            .unwrap();
        // Keys spread over the three primaries.
        for client in ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"] {
            let mut allowed = 0;
            for _ in 0..25 {
                let decision = limiter.check(client).await;
                assert_eq!(decision.source, DecisionSource::Redis, "{algorithm:?}");
                allowed += u64::from(decision.allowed);
            }
            // 25 quick sequential requests: the fixed window exactly, the others within a
            // request or two (a window boundary, an emission interval of 1 s).
            match algorithm {
                Algorithm::FixedWindow => assert_eq!(allowed, 10),
                _ => assert!((10..=12).contains(&allowed), "{algorithm:?}: {allowed}"),
            }
        }
        let stats = limiter.stats();
        assert_eq!(
            stats.redis_errors, 0,
            "{algorithm:?}: no CROSSSLOT, no error"
        );
    }
}

#[tokio::test]
async fn the_script_is_loaded_again_after_a_flush() {
    let limiter = limiter(Algorithm::Gcra, "noscript").await;
    assert!(limiter.check("client").await.allowed);
    let client = redis::Client::open(shared_server().url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let decision = limiter.check("client").await;
    assert!(decision.allowed);
    assert_eq!(decision.source, DecisionSource::Redis);
    assert_eq!(decision.remaining, LIMIT - 2);
    assert_eq!(limiter.stats().redis_errors, 0);
}

#[tokio::test]
async fn requests_without_a_key_are_not_limited() {
    let limiter = RateLimiter::builder(Algorithm::FixedWindow, 1, WINDOW)
        .key_prefix(prefix("unkeyed"))
        .timeout(PATIENT)
        .connect(&shared_server().url())
        .await
        .unwrap();
    let svc = service(&limiter);
    for _ in 0..5 {
        let req = Request::new(String::new());
        let response = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("ratelimit-limit").is_none());
    }
    assert_eq!(limiter.stats(), RateLimitStats::default());
}

#[tokio::test]
async fn bad_settings_are_config_errors() {
    // Checked before connecting: no server listens on port 1.
    let url = "redis://127.0.0.1:1";
    let second = Duration::from_secs(1);
    let bad = [
        RateLimiter::builder(Algorithm::FixedWindow, 0, second),
        RateLimiter::builder(Algorithm::SlidingWindow, 10, Duration::ZERO),
        RateLimiter::builder(Algorithm::Gcra, 10, Duration::from_micros(500)),
        // GCRA needs at least a microsecond per request.
        RateLimiter::builder(Algorithm::Gcra, 10_000, Duration::from_millis(1)),
        RateLimiter::builder(Algorithm::Gcra, 10, second).timeout(Duration::ZERO),
        RateLimiter::builder(Algorithm::Gcra, 10, second).fallback_max_keys(0),
        RateLimiter::builder(Algorithm::Gcra, 10, Duration::from_secs(400 * 24 * 3600)),
    ];
    for builder in bad {
        let shown = format!("{builder:?}");
        let error = builder.connect(url).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config, "{shown}: {error}");
    }
    let error = RateLimiter::builder(Algorithm::Gcra, 10, second)
        .connect("not a url")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    // A good setting against a closed port is not a Config error.
    let error = RateLimiter::builder(Algorithm::Gcra, 10, second)
        .connect_timeout(Duration::from_millis(200))
        .connect(url)
        .await
        .unwrap_err();
    assert_ne!(error.kind(), ErrorKind::Config);
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RateLimiter>();
    check::<RateLimitLayer<KeyFn>>();
    check::<layercache_tower::rate_limit::RateLimiterBuilder>();
    check::<layercache_tower::rate_limit::Decision>();
}
