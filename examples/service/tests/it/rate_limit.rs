//! The rate limiter on the API routes: a small limit shared by two instances through Redis, 429
//! with `Retry-After` and `RateLimit-*` headers and a JSON error, per API key or per client IP,
//! and the routes it does not cover.

use std::time::Duration;

use layercache_example_service::{Algorithm, RateLimitConfig};
use layercache_testkit::RedisServer;
use reqwest::{Method, StatusCode};

use crate::support::{Answer, Client, TempDir, config, start};

const LIMIT: u64 = 5;
/// One window for the whole test: a fixed window is exact within it, and the test ends long
/// before it does, even on a busy machine.
const WINDOW: Duration = Duration::from_secs(120);

fn number(answer: &Answer, header: &str) -> u64 {
    answer
        .header(header)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a numeric {header} in {:?}", answer.headers))
}

async fn get_as(client: &Client, path: &str, api_key: Option<&str>) -> Answer {
    let mut request = client.request(Method::GET, path);
    if let Some(key) = api_key {
        request = request.header("x-api-key", key);
    }
    client.send(request).await
}

fn assert_refused(answer: &Answer) {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        answer.body
    );
    let retry = number(answer, "retry-after");
    assert!(
        (1..=WINDOW.as_secs()).contains(&retry),
        "Retry-After {retry}"
    );
    assert_eq!(number(answer, "ratelimit-limit"), LIMIT);
    assert_eq!(number(answer, "ratelimit-remaining"), 0);
    assert!(number(answer, "ratelimit-reset") <= WINDOW.as_secs());
    assert_eq!(answer.error(), Some("rate limit exceeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_shared_by_two_instances_and_answers_429_with_headers() {
    let redis = RedisServer::start();
    let dir = TempDir::new();
    let mut cfg = config(&redis, Some(dir.sqlite_url()));
    let mut limit = RateLimitConfig::new(Algorithm::FixedWindow, LIMIT, WINDOW);
    // Patient: a stalled busy machine must not hand decisions to the per-instance fallback.
    limit.timeout = Duration::from_secs(5);
    cfg.rate_limit = Some(limit);
    let a = start(cfg.clone()).await;
    let b = start(cfg).await;
    let (ca, cb) = (Client::new(&a), Client::new(&b));

    // One API key across both instances: LIMIT allowed in all, the remaining count going down.
    for n in 0..LIMIT {
        let client = if n % 2 == 0 { &ca } else { &cb };
        let answer = get_as(client, "/products/1", Some("alpha")).await;
        assert_eq!(answer.status, StatusCode::OK, "request {n}");
        assert_eq!(number(&answer, "ratelimit-limit"), LIMIT);
        assert_eq!(number(&answer, "ratelimit-remaining"), LIMIT - 1 - n);
    }
    for client in [&ca, &cb] {
        assert_refused(&get_as(client, "/products/1", Some("alpha")).await);
        assert_refused(&get_as(client, "/products?category=books", Some("alpha")).await);
        assert_refused(&get_as(client, "/me", Some("alpha")).await);
    }

    // Another key has its own quota; requests without a key count per client IP.
    assert_eq!(
        get_as(&cb, "/products/2", Some("beta")).await.status,
        StatusCode::OK
    );
    for n in 0..LIMIT {
        let client = if n % 2 == 0 { &cb } else { &ca };
        assert_eq!(
            get_as(client, "/products/3", None).await.status,
            StatusCode::OK,
            "by IP {n}"
        );
    }
    assert_refused(&get_as(&ca, "/products/3", None).await);
    assert_refused(&get_as(&cb, "/products/3", None).await);

    // Health, stats, metrics and login are not limited.
    for _ in 0..LIMIT + 2 {
        for path in ["/health", "/cache/stats", "/metrics"] {
            assert_eq!(
                get_as(&ca, path, Some("alpha")).await.status,
                StatusCode::OK,
                "{path}"
            );
        }
    }

    // Every decision came from Redis: 5 + 1 + 5 allowed, 6 + 2 refused, in all.
    let (sa, sb) = (a.rate_limit_stats().unwrap(), b.rate_limit_stats().unwrap());
    assert_eq!(sa.allowed + sb.allowed, 2 * LIMIT + 1);
    assert_eq!(sa.denied + sb.denied, 8);
    assert_eq!(sa.fallback_decisions + sb.fallback_decisions, 0);

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
