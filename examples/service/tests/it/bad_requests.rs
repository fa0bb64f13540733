//! Bad requests get a 4xx with a JSON `error`, and leave the caches and the database untouched.

use layercache::TieredStats;
use layercache_example_service::{BODY_LIMIT, RunningService};
use layercache_testkit::RedisServer;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Client, config, start};

/// What a read or a write through the caches would move.
fn footprint(service: &RunningService) -> Vec<u64> {
    let mut figures = Vec::new();
    for stats in [service.product_cache_stats(), service.list_cache_stats()] {
        let s: TieredStats = stats.expect("caches on");
        figures.extend([
            s.hits,
            s.misses,
            s.coalesced,
            s.stale_served,
            s.l1_hits,
            s.l1_misses,
            s.l2_hits,
            s.l2_misses,
            s.loads,
            s.invalidations_sent,
            s.tags_invalidated,
        ]);
    }
    let db = service.db_stats();
    figures.extend([db.reads, db.writes]);
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_json_4xx_and_leave_the_cache_untouched() {
    let redis = RedisServer::start();
    let service = start(config(&redis, None)).await;
    let client = Client::new(&service);
    let before = footprint(&service);

    let json_post = |path: &str, body: &'static str| {
        client
            .request(Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
    };
    let oversized = format!(
        r#"{{"name": "{}", "category": "books", "price_cents": 1}}"#,
        "x".repeat(BODY_LIMIT + 1)
    );
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        (
            "malformed JSON",
            json_post("/products", "{\"name\": "),
            StatusCode::BAD_REQUEST,
        ),
        (
            "JSON of the wrong shape",
            json_post("/products", "[1, 2]"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a missing field",
            json_post("/products", r#"{"name": "x", "category": "books"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "an unknown field",
            json_post(
                "/products",
                r#"{"name": "x", "category": "books", "price_cents": 1, "admin": true}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a category unfit for a key",
            json_post(
                "/products",
                r#"{"name": "x", "category": "a b:*", "price_cents": 1}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a negative price",
            json_post(
                "/products",
                r#"{"name": "x", "category": "books", "price_cents": -1}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "an empty name",
            json_post(
                "/products",
                r#"{"name": " ", "category": "books", "price_cents": 1}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "no content type",
            client
                .request(Method::POST, "/products")
                .body(r#"{"name": "x", "category": "books", "price_cents": 1}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "an oversized body",
            client
                .request(Method::POST, "/products")
                .header("content-type", "application/json")
                .body(oversized.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "an oversized update",
            client
                .request(Method::PUT, "/products/1")
                .header("content-type", "application/json")
                .body(oversized),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "malformed JSON on an update",
            client
                .request(Method::PUT, "/products/1")
                .header("content-type", "application/json")
                .body("{"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an id that is not a number",
            client.request(Method::GET, "/products/abc"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a zero id",
            client.request(Method::GET, "/products/0"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a negative id",
            client.request(Method::GET, "/products/-5"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an id past i64",
            client.request(Method::GET, "/products/99999999999999999999"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a fractional id",
            client.request(Method::DELETE, "/products/1.5"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a bad id on an update",
            client
                .request(Method::PUT, "/products/x")
                .json(&json!({"name": "x", "category": "books", "price_cents": 1})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "page zero",
            client.request(Method::GET, "/products?page=0"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a page that is not a number",
            client.request(Method::GET, "/products?page=two"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a page past the last allowed",
            client.request(Method::GET, "/products?page=10001"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a category unfit for a key",
            client.request(Method::GET, "/products?category=a%20b"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an unknown query parameter",
            client.request(Method::GET, "/products?sort=price"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an unknown route",
            client.request(Method::GET, "/nothing/here"),
            StatusCode::NOT_FOUND,
        ),
        (
            "an unknown method",
            client.request(Method::PATCH, "/products/1"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "an unknown method on a list",
            client.request(Method::DELETE, "/products"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "malformed login",
            json_post("/login", "{\"user\""),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, request, expected) in cases {
        let answer = client.send(request).await;
        assert_eq!(answer.status, expected, "{what}: {:?}", answer.body);
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{what}: a JSON body ({:?})",
            answer.headers
        );
        assert!(
            answer.error().is_some_and(|e| !e.is_empty()),
            "{what}: an error message in {:?}",
            answer.body
        );
    }

    assert_eq!(
        footprint(&service),
        before,
        "no cache or database work for a bad request"
    );
    // And the service is still fine.
    assert_eq!(client.get("/products/1").await.status, StatusCode::OK);
    assert_ne!(footprint(&service), before, "a good request is counted");
    service.shutdown().await.unwrap();
}
