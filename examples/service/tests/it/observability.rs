//! What operators watch: `/metrics` (the caches' counters, per instance), `/cache/stats`, and
//! `/health` through Redis going down and coming back.

use layercache_testkit::RedisServer;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Client, TempDir, config, eventually, start};

/// The value of the sample `name` (with its labels, as rendered) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_each_instances_cache_counters_in_prometheus_text() {
    let redis = RedisServer::start();
    let dir = TempDir::new();
    let mut a_config = config(&redis, Some(dir.sqlite_url()));
    a_config.warm_up = 0;
    let b_config = a_config.clone();
    let a = start(a_config).await;
    let b = start(b_config).await;
    let (ca, cb) = (Client::new(&a), Client::new(&b));

    // Three reads of one product on A: a load, then two L1 hits. None on B.
    for _ in 0..3 {
        assert_eq!(ca.get("/products/7").await.status, StatusCode::OK);
    }
    assert_eq!(
        ca.get("/products?category=books").await.status,
        StatusCode::OK
    );

    let response = ca
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers().get("content-type").cloned();
    assert!(
        content_type.is_some_and(|t| t.as_bytes().starts_with(b"text/plain")),
        "Prometheus text"
    );
    let metrics = response.text().await.unwrap();
    for name in [
        "layercache_loads_total{cache=\"products\"}",
        "layercache_hits_total{cache=\"products\"}",
        "layercache_l1_hits_total{cache=\"products\"}",
        "layercache_misses_total{cache=\"product_lists\"}",
        "layercache_loads_total{cache=\"sessions\"}",
        "layercache_l2_circuit_state{cache=\"products\"}",
        "layercache_example_db_queries_total{kind=\"read\"}",
    ] {
        assert!(sample(&metrics, name).is_some(), "{name} in\n{metrics}");
    }
    assert_eq!(
        sample(&metrics, "layercache_loads_total{cache=\"products\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "layercache_hits_total{cache=\"products\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&metrics, "layercache_loads_total{cache=\"product_lists\"}"),
        Some(1.0)
    );
    // The latency histograms, recorded as the reads happened: one read that loaded (an L2 miss,
    // then the loader), each with its outcome.
    for (histogram, count) in [
        (
            "layercache_get_seconds_count{cache=\"products\",outcome=\"loaded\"}",
            1.0,
        ),
        (
            "layercache_l2_seconds_count{cache=\"products\",outcome=\"miss\"}",
            1.0,
        ),
        (
            "layercache_load_seconds_count{cache=\"products\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "layercache_load_seconds_count{cache=\"product_lists\",outcome=\"ok\"}",
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&metrics, histogram),
            Some(count),
            "{histogram} in\n{metrics}"
        );
    }
    assert!(
        metrics.contains("layercache_get_seconds_bucket{cache=\"products\",outcome=\"loaded\",le="),
        "buckets, not a summary:\n{metrics}"
    );

    // B's recorder is its own: A's reads are not in it.
    let metrics_b = cb
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&metrics_b, "layercache_loads_total{cache=\"products\"}"),
        Some(0.0)
    );

    // /cache/stats says the same in JSON, with the database's query counts.
    let stats = ca.get("/cache/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.body["mode"], "tiered");
    assert_eq!(stats.body["caches"]["products"]["loads"], json!(1));
    assert_eq!(stats.body["caches"]["products"]["hits"], json!(2));
    assert_eq!(stats.body["caches"]["products"]["circuit"], "closed");
    assert_eq!(stats.body["database"]["kind"], "sqlite");
    assert_eq!(stats.body["database"]["reads"], json!(a.db_stats().reads));
    assert!(stats.body["caches"]["sessions"].is_object());

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_without_redis_and_writes_still_succeed_and_are_served() {
    let redis = RedisServer::start();
    let mut cfg = config(&redis, None);
    // Fail fast while Redis is down (the tests' default is patient).
    cfg.l2_timeout = std::time::Duration::from_millis(200);
    let service = start(cfg).await;
    let client = Client::new(&service);

    let healthy = client.get("/health").await;
    assert_eq!(healthy.status, StatusCode::OK);
    assert_eq!(healthy.body["status"], "ok", "{:?}", healthy.body);
    assert_eq!(healthy.body["database"]["ok"], true);
    assert_eq!(healthy.body["redis"]["ok"], true);
    assert_eq!(healthy.body["circuits"]["products"], "closed");

    redis.stop();
    let degraded = client.get("/health").await;
    assert_eq!(degraded.status, StatusCode::OK, "the database is up");
    assert_eq!(degraded.body["status"], "degraded", "{:?}", degraded.body);
    assert_eq!(degraded.body["redis"]["ok"], false);

    // Reads and writes go on against the database; what a write returns is what is served.
    for path in ["/products/1", "/products/30", "/products?category=tools"] {
        let answer = client.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {:?}", answer.body);
    }
    let updated = client
        .put(
            "/products/1",
            &json!({"name": "offline edit", "category": "tools", "price_cents": 5}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    let served = client.get("/products/1").await;
    assert_eq!(served.body["name"], "offline edit");
    let list = client.get("/products?category=tools").await;
    assert_eq!(
        list.body["items"][0]["id"], 1,
        "moved into tools: {:?}",
        list.body
    );

    // Redis back: the health is ok again once a cache call closed each circuit. L1 hits make
    // no L2 call, so each attempt reads what no tier holds yet: the L2 read is the probe.
    redis.restart();
    let attempt = std::sync::atomic::AtomicU64::new(0);
    eventually(|| async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        client.get(&format!("/products/{}", 1000 + n)).await;
        client.get(&format!("/products?category=probe{n}")).await;
        let health = client.get("/health").await;
        match health.body["status"].as_str() {
            Some("ok") => Ok(()),
            _ => Err(format!("{:?}", health.body)),
        }
    })
    .await
    .unwrap();
    service.shutdown().await.unwrap();
}

/// The global recorder of this test process, installed once (as the binary does).
fn global_prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("the only global recorder");
            handle
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_through_the_global_recorder_as_the_binary_installs_it() {
    let redis = RedisServer::start();
    let mut cfg = config(&redis, None);
    cfg.warm_up = 0;
    cfg.prometheus = Some(global_prometheus());
    let service = start(cfg).await;
    let client = Client::new(&service);
    for _ in 0..3 {
        assert_eq!(client.get("/products/9").await.status, StatusCode::OK);
    }
    let metrics = client
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The only instance publishing into the global recorder: its figures, exactly. (What the
    // library records on its own, latency histograms, lands here too, from every instance of
    // this process.)
    assert_eq!(
        sample(&metrics, "layercache_loads_total{cache=\"products\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "layercache_hits_total{cache=\"products\"}"),
        Some(2.0)
    );
    assert!(
        sample(
            &metrics,
            "layercache_example_db_queries_total{kind=\"read\"}"
        )
        .is_some()
    );
    service.shutdown().await.unwrap();
}
