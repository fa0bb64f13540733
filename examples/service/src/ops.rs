//! What operators watch: `GET /health`, `GET /cache/stats` and `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use layercache::TieredStats;
use layercache::tiered::CircuitState;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use redis::aio::ConnectionManager;
use serde_json::{Value, json};

use crate::service::AppState;

/// How long `/health` waits for the database or Redis before calling it down.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The bucket bounds of the library's latency histograms (`layercache_*_seconds`), 1 µs to 10 s:
/// an L1 hit is well under a microsecond, a load can take seconds.
const LATENCY_BUCKETS: [f64; 18] = [
    1e-6, 1e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// A Prometheus builder for the service: the `_seconds` metrics as histograms with buckets from
/// 1 µs to 10 s (which instances can be aggregated over), not summaries. The
/// binary builds its global recorder with it; an instance without one builds its own.
pub fn prometheus_builder() -> PrometheusBuilder {
    let matcher = Matcher::Suffix("_seconds".to_owned());
    match PrometheusBuilder::new().set_buckets_for_metric(matcher, &LATENCY_BUCKETS) {
        Ok(builder) => builder,
        // Only an empty bucket list is refused; ours is not.
        Err(_) => PrometheusBuilder::new(),
    }
}

/// Where `/metrics` publishes and what it renders.
#[derive(Clone, Debug)]
pub(crate) enum Metrics {
    /// The global recorder (the binary installed it): publish through the facade, render the
    /// handle.
    Global(PrometheusHandle),
    /// A recorder of this instance only: published into while rendering, so instances in one
    /// process do not mix their figures.
    Local(Arc<PrometheusRecorder>),
}

impl Metrics {
    pub(crate) fn new(global: Option<PrometheusHandle>) -> Self {
        match global {
            Some(handle) => Metrics::Global(handle),
            None => Metrics::Local(Arc::new(prometheus_builder().build_recorder())),
        }
    }

    /// Runs `build` (a cache's build) so that the metric handles it registers record into this
    /// instance's recorder: the global one, or its own.
    pub(crate) fn registering<T>(&self, build: impl FnOnce() -> T) -> T {
        match self {
            Metrics::Global(_) => build(),
            Metrics::Local(recorder) => metrics::with_local_recorder(recorder.as_ref(), build),
        }
    }

    /// Runs `publish` against this instance's recorder, then renders it.
    fn render(&self, publish: impl FnOnce()) -> String {
        let handle = match self {
            Metrics::Global(handle) => {
                publish();
                handle.clone()
            }
            Metrics::Local(recorder) => {
                metrics::with_local_recorder(recorder.as_ref(), publish);
                recorder.handle()
            }
        };
        handle.run_upkeep();
        handle.render()
    }
}

/// A connection for `/health`'s `PING`, made lazily (Redis may be down when the service starts
/// or when it is asked).
pub(crate) fn redis_pinger(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(PING_TIMEOUT))
        .set_response_timeout(Some(PING_TIMEOUT))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client, config)
}

fn circuit_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half-open",
        _ => "unknown",
    }
}

/// `GET /health`: 200 `ok` when the database, Redis and every cache's circuit are fine; 200
/// `degraded` when the database is up but Redis is not (reads go to the database); 503 `down`
/// when the database is down.
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let database = match tokio::time::timeout(PING_TIMEOUT, state.catalog.db.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer in time".to_owned()),
    };
    let mut pinger = state.redis_pinger.clone();
    let command = redis::cmd("PING");
    let ping = command.query_async::<String>(&mut pinger);
    let redis = match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer in time".to_owned()),
    };
    let mut circuits = serde_json::Map::new();
    let mut all_closed = true;
    for (name, circuit) in state.circuits() {
        all_closed &= circuit == CircuitState::Closed;
        circuits.insert(name.to_owned(), circuit_name(circuit).into());
    }
    let (status, code) = match (&database, &redis) {
        (Err(_), _) => ("down", StatusCode::SERVICE_UNAVAILABLE),
        (Ok(()), Ok(())) if all_closed => ("ok", StatusCode::OK),
        _ => ("degraded", StatusCode::OK),
    };
    let part = |result: &Result<(), String>| match result {
        Ok(()) => json!({ "ok": true }),
        Err(error) => json!({ "ok": false, "error": error }),
    };
    let body = json!({
        "status": status,
        "database": part(&database),
        "redis": part(&redis),
        "circuits": circuits,
    });
    (code, Json(body)).into_response()
}

/// The fields of a cache's stats that `/cache/stats` shows.
pub(crate) fn stats_json(s: &TieredStats) -> Value {
    json!({
        "hits": s.hits,
        "misses": s.misses,
        "coalesced": s.coalesced,
        "stale_served": s.stale_served,
        "hit_ratio": s.hit_ratio(),
        "l1_hits": s.l1_hits,
        "l1_misses": s.l1_misses,
        "l1_entries": s.l1_entries,
        "l2_hits": s.l2_hits,
        "l2_misses": s.l2_misses,
        "l2_errors": s.l2_errors,
        "l2_skipped": s.l2_skipped,
        "l2_writes": s.l2_writes,
        "l2_write_failures": s.l2_write_failures,
        "l2_pending_writes": s.l2_pending_writes,
        "circuit": circuit_name(s.circuit),
        "circuit_opened": s.circuit_opened,
        "loads": s.loads,
        "load_errors": s.load_errors,
        "hard_timeouts": s.hard_timeouts,
        "stores_skipped": s.stores_skipped,
        "invalidations_sent": s.invalidations_sent,
        "invalidations_received": s.invalidations_received,
        "tags_invalidated": s.tags_invalidated,
        "l1_flushes": s.l1_flushes,
    })
}

/// `GET /cache/stats`: the mode, the database's query counts, each cache's counters and the
/// rate limiter's.
pub(crate) async fn cache_stats(State(state): State<AppState>) -> Response {
    let db = state.catalog.db.stats();
    let mut caches = serde_json::Map::new();
    if let Some((items, lists)) = state.catalog.stats() {
        caches.insert("products".to_owned(), stats_json(&items));
        caches.insert("product_lists".to_owned(), stats_json(&lists));
    }
    caches.insert(
        "sessions".to_owned(),
        stats_json(&state.sessions.cache().stats()),
    );
    let rate_limit = state.limiter.as_ref().map(|limiter| {
        let s = limiter.stats();
        json!({
            "allowed": s.allowed,
            "denied": s.denied,
            "redis_errors": s.redis_errors,
            "fallback_decisions": s.fallback_decisions,
        })
    });
    Json(json!({
        "mode": state.mode.as_str(),
        "database": { "kind": format!("{:?}", state.catalog.db.kind()).to_lowercase(), "reads": db.reads, "writes": db.writes },
        "caches": caches,
        "rate_limit": rate_limit,
    }))
    .into_response()
}

/// `GET /metrics`: Prometheus text. The caches' counters are published (`publish_metrics`)
/// just before rendering, with the service's own: database queries and rate-limit decisions.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(|| {
        state.publish_cache_metrics();
        let db = state.catalog.db.stats();
        metrics::counter!("layercache_example_db_queries_total", "kind" => "read")
            .absolute(db.reads);
        metrics::counter!("layercache_example_db_queries_total", "kind" => "write")
            .absolute(db.writes);
        if let Some(limiter) = &state.limiter {
            let s = limiter.stats();
            for (decision, value) in [("allowed", s.allowed), ("denied", s.denied)] {
                metrics::counter!("layercache_example_rate_limit_decisions_total", "decision" => decision)
                    .absolute(value);
            }
            metrics::counter!("layercache_example_rate_limit_redis_errors_total")
                .absolute(s.redis_errors);
        }
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
