//! The load run of issue 12: the service on loopback under a bounded load generator — 16
//! connections, Zipf(0.99)-distributed product ids over 10,000 products — in three settings
//! measured in one run (no cache, Redis only, L1 + L2), with Redis SIGKILLed for 5 s in the middle
//! of each cached setting and restarted empty.
//!
//! Asserted (outcomes, never timings): no response with a 5xx status, no transport error, every
//! product served is the one asked for; the caches save database reads; the outage shows in the
//! cache's stats. Printed (for `docs/benchmarks.md` and the closing note): requests/s, p50/p99 over
//! the whole run and over the steady part before the kill, database reads and the reads saved.
//!
//! `LOAD_RUN_SECONDS` sets each setting's length (default 20). Figures worth quoting come from a
//! release build: `cargo test --release -p layercache-example-service --test load -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache_example_service::{CacheMode, Config, Product, RunningService, Service};
use layercache_testkit::RedisServer;
use layercache_testkit::workload::zipf_trace;
use tokio::task::JoinSet;

/// Concurrent connections (one request in flight on each).
const CONNECTIONS: usize = 16;
/// Products in the database; the ids asked for are Zipf-distributed over them.
const PRODUCTS: usize = 10_000;
const ZIPF_S: f64 = 0.99;
const SEED: u64 = 0x10AD_0012;
/// Requests in the precomputed trace (connections walk it with a stride, wrapping).
const TRACE_LEN: usize = 1_000_000;
/// How long Redis stays dead.
const OUTAGE: Duration = Duration::from_secs(5);
/// A request that takes longer than this is a failure (no request may hang).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn run_length() -> Duration {
    let seconds = std::env::var("LOAD_RUN_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&s| s >= 8)
        .unwrap_or(20);
    Duration::from_secs(seconds)
}

/// One response: when it was sent (since the run began) and how long it took, in µs.
#[derive(Clone, Copy)]
struct Sample {
    at_us: u64,
    took_us: u64,
}

#[derive(Default)]
struct Tally {
    samples: Vec<Sample>,
    ok: u64,
    client_errors: u64,
    server_errors: u64,
    transport_errors: u64,
    wrong_product: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.samples.extend(other.samples);
        self.ok += other.ok;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.transport_errors += other.transport_errors;
        self.wrong_product += other.wrong_product;
    }
}

/// What one setting measured.
struct Report {
    mode: CacheMode,
    seconds: f64,
    tally: Tally,
    db_reads: u64,
    /// (requests/s, p50 µs, p99 µs) over the steady part before the outage (all of it for `none`).
    steady: (f64, u64, u64),
    stats: Option<layercache::TieredStats>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn summary(samples: &[Sample], seconds: f64) -> (f64, u64, u64) {
    let mut took: Vec<u64> = samples.iter().map(|s| s.took_us).collect();
    took.sort_unstable();
    (
        samples.len() as f64 / seconds,
        percentile(&took, 0.50),
        percentile(&took, 0.99),
    )
}

/// Drives `service` for `length` with [`CONNECTIONS`] connections walking `trace`; when `redis`
/// is given, kills it at 40 % of the run for [`OUTAGE`] and restarts it (empty).
async fn drive(
    service: &RunningService,
    trace: Arc<Vec<u32>>,
    length: Duration,
    redis: Option<Arc<RedisServer>>,
) -> (Tally, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let base = service.url();
    let began = Instant::now();
    let deadline = began + length;
    let outage = redis.map(|redis| {
        let kill_at = began + length.mul_f64(0.4);
        tokio::spawn(async move {
            // The experiment's schedule, not a wait for a signal.
            tokio::time::sleep_until(kill_at.into()).await;
            let stopped = Arc::clone(&redis);
            tokio::task::spawn_blocking(move || stopped.stop())
                .await
                .unwrap();
            tokio::time::sleep(OUTAGE).await;
            tokio::task::spawn_blocking(move || redis.restart())
                .await
                .unwrap();
        })
    });
    let mut connections = JoinSet::new();
    for connection in 0..CONNECTIONS {
        let (client, base, trace) = (client.clone(), base.clone(), Arc::clone(&trace));
        connections.spawn(async move {
            let mut tally = Tally::default();
            let mut i = connection;
            while Instant::now() < deadline {
                let id = u64::from(trace[i % trace.len()]) + 1;
                i += CONNECTIONS;
                let sent = Instant::now();
                let response = client.get(format!("{base}/products/{id}")).send().await;
                let outcome = match response {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.json::<Product>().await;
                        Some((status, body))
                    }
                    Err(_) => None,
                };
                tally.samples.push(Sample {
                    at_us: sent.duration_since(began).as_micros() as u64,
                    took_us: sent.elapsed().as_micros() as u64,
                });
                match outcome {
                    None => tally.transport_errors += 1,
                    Some((status, _)) if status.is_server_error() => tally.server_errors += 1,
                    Some((status, _)) if status.is_client_error() => tally.client_errors += 1,
                    Some((_, Ok(product))) if product.id == id as i64 => tally.ok += 1,
                    Some(_) => tally.wrong_product += 1,
                }
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = connections.join_next().await {
        tally.merge(done.unwrap());
    }
    let seconds = began.elapsed().as_secs_f64();
    if let Some(outage) = outage {
        outage.await.unwrap();
    }
    (tally, seconds)
}

async fn measure(
    mode: CacheMode,
    redis: &Arc<RedisServer>,
    trace: &Arc<Vec<u32>>,
    length: Duration,
) -> Report {
    let mut config = Config::ephemeral();
    config.redis_url = Some(redis.url());
    config.cache_mode = mode;
    // The comparison is about the cache: no rate limit (its Redis call would be in every
    // setting), a key prefix per setting (each starts cold), the whole catalogue seeded.
    config.rate_limit = None;
    config.key_prefix = format!("load-{}", mode.as_str());
    config.seed_products = PRODUCTS;
    config.warm_up = 0;
    let service = Service::start(config).await.expect("the service starts");
    let reads_before = service.db_stats().reads;
    let kill = (mode != CacheMode::None).then(|| Arc::clone(redis));
    let (tally, seconds) = drive(&service, Arc::clone(trace), length, kill).await;
    let db_reads = service.db_stats().reads - reads_before;
    let stats = service.product_cache_stats();
    let steady_until = length.mul_f64(0.4).as_micros() as u64;
    let steady: Vec<Sample> = match mode {
        CacheMode::None => tally.samples.clone(),
        _ => tally
            .samples
            .iter()
            .copied()
            .filter(|s| s.at_us < steady_until)
            .collect(),
    };
    let steady_seconds = match mode {
        CacheMode::None => seconds,
        _ => steady_until as f64 / 1e6,
    };
    let steady = summary(&steady, steady_seconds);
    service.shutdown().await.expect("a graceful shutdown");
    Report {
        mode,
        seconds,
        tally,
        db_reads,
        steady,
        stats,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_run_with_redis_killed_serves_no_5xx_and_the_cache_saves_database_reads() {
    let redis = Arc::new(RedisServer::start());
    let trace = Arc::new(zipf_trace(PRODUCTS, ZIPF_S, TRACE_LEN, SEED));
    let length = run_length();
    let mut reports = Vec::new();
    for mode in [CacheMode::None, CacheMode::RedisOnly, CacheMode::Tiered] {
        reports.push(measure(mode, &redis, &trace, length).await);
    }

    eprintln!(
        "\nload run: {CONNECTIONS} connections, {}s per setting, Zipf({ZIPF_S}) over {PRODUCTS} \
         products; Redis killed at 40 % for {}s in the cached settings (restarted empty)",
        length.as_secs(),
        OUTAGE.as_secs()
    );
    eprintln!(
        "| setting | requests | req/s | p50 | p99 | steady req/s | steady p50 | steady p99 | 5xx | DB reads | DB reads saved |"
    );
    eprintln!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for report in &reports {
        let (rate, p50, p99) = summary(&report.tally.samples, report.seconds);
        let requests = report.tally.samples.len() as u64;
        let saved = requests.saturating_sub(report.db_reads);
        eprintln!(
            "| {} | {requests} | {rate:.0} | {p50} µs | {p99} µs | {:.0} | {} µs | {} µs | {} | {} | {saved} ({:.1} %) |",
            report.mode,
            report.steady.0,
            report.steady.1,
            report.steady.2,
            report.tally.server_errors,
            report.db_reads,
            100.0 * saved as f64 / requests.max(1) as f64,
        );
    }
    for report in &reports {
        if let Some(stats) = &report.stats {
            eprintln!(
                "{}: l1 hit ratio {:.3}, l2 hits {}, l2 errors {}, circuit opened {}, loads {}",
                report.mode,
                stats.l1_hit_ratio(),
                stats.l2_hits,
                stats.l2_errors,
                stats.circuit_opened,
                stats.loads
            );
        }
    }

    for report in &reports {
        let t = &report.tally;
        let requests = t.samples.len() as u64;
        assert!(requests > 0, "{}: no request went through", report.mode);
        assert_eq!(
            (
                t.server_errors,
                t.transport_errors,
                t.wrong_product,
                t.client_errors
            ),
            (0, 0, 0, 0),
            "{}: every request gets its product, 5xx never (of {requests})",
            report.mode
        );
        assert_eq!(t.ok, requests, "{}", report.mode);
    }
    let none = &reports[0];
    assert!(
        none.db_reads >= none.tally.samples.len() as u64,
        "without a cache every request reads the database"
    );
    for report in &reports[1..] {
        let requests = report.tally.samples.len() as u64;
        // Every setting starts cold and Redis comes back empty: a tenth is a floor any cache
        // clears on a skewed workload (the figures show how far above it).
        assert!(
            report.db_reads * 10 < requests * 9,
            "{}: the cache saves database reads ({} reads for {requests} requests)",
            report.mode,
            report.db_reads
        );
        let stats = report.stats.as_ref().expect("a cached setting has stats");
        assert!(
            stats.l2_errors + stats.l2_skipped > 0 && stats.circuit_opened > 0,
            "{}: the outage shows in the stats: {stats:?}",
            report.mode
        );
    }
    let redis_only = reports[1].stats.as_ref().unwrap();
    assert!(redis_only.l2_hits > 0, "Redis served hits: {redis_only:?}");
}
