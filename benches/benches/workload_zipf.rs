//! `workload_zipf`: a skewed read workload over many keys, layercache against a hand-written
//! cache-aside in the same run (the first deliverable of issue 9, "a lean request path").
//!
//! Data: [`KEYS`] keys, each holding a 1 KiB [`Payload`] (`Payload::new(i)` for key `i`), ALL
//! present in a real `redis-server` on loopback (started by `layercache-testkit`) before the group
//! runs, twice: as `Entry<Option<Payload>>` envelopes (what a `TieredCache<Payload>` reads; written
//! through a separate `RedisBackend`) and as plain JSON under another namespace (what the raw
//! prototype reads).
//!
//! Trace: [`TRACE_LEN`] requests drawn from Zipf([`ZIPF_S`]) over the keys with a seeded
//! generator (`layercache_testkit::workload`: SplitMix64, a CDF table and a binary search; the
//! ranks are mapped to keys through a seeded permutation), computed once and shared by every id. One criterion iteration is one
//! chunk of [`CHUNK`] consecutive requests of the trace, served by [`TASKS`] tokio tasks (task `t`
//! takes requests `t`, `t + TASKS`, ...); `iter_custom` times whole chunks. Each id keeps a cursor
//! through the trace across iterations (wrapping at the end), so its cache sees the trace in order.
//! The runtime is tokio multi-thread with 2 workers for every id.
//!
//! - `raw_prototype`: no code of ours: `moka::future::Cache<u64, Arc<Payload>>` (at most
//!   [`L1_MAX_ENTRIES`]) in front of one redis-rs `ConnectionManager`; on a miss, GET the plain
//!   JSON, `serde_json::from_slice`, insert.
//! - `tiered`: `TieredCache::<Arc<Payload>>` built as the README recommends (a value costly to
//!   clone behind an `Arc`; `.redis_url(..)`, `.l1_max_entries(L1_MAX_ENTRIES)`,
//!   `.options(EntryOptions::new(1 h))`, `.l2_timeout(1 s)`), read with `get_or_load`; the loader
//!   never runs (every key is in Redis; checked). The envelopes in Redis are the same bytes as a
//!   `TieredCache<Payload>`'s (serde's `Arc` is transparent).
//! - `l2_only`: the same cache with `.without_l1()`.
//!
//! Every [`CHECK_EVERY`]th request of the trace checks the value's `id` against the key's number
//! (asserted at the end). After the group, each id that ran prints its ops/s (requests / total
//! timed time, warm-up included), its L1 hit ratio and its CPU time per request (the process's
//! CPU time over the timed chunks, all threads; Redis runs in its own process and is not counted)
//! to stderr; then, when all three ran, the ids are measured again interleaved (rounds that
//! alternate them, so that the machine's drift hits all alike) and the medians of the per-round
//! ratios are printed. Ids can be run alone (`cargo bench -p benches --bench workload_zipf -- tiered`), e.g.
//! under `perf record`. See `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark harness"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use benches::Payload;
use cpu_time::ProcessTime;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use layercache_core::{Backend, Clock, EntryOptions, Key, KeySpace, SystemClock};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisServer;
use layercache_testkit::workload::zipf_trace;
use layercache_tiered::TieredCache;
use redis::aio::ConnectionManager;
use tokio::task::JoinSet;

/// Distinct keys, all in Redis.
const KEYS: usize = 100_000;
/// Requests in the precomputed trace.
const TRACE_LEN: usize = 1_000_000;
/// Requests per criterion iteration (a multiple of which is `TRACE_LEN`).
const CHUNK: usize = 10_000;
/// Concurrent tokio tasks sharing one chunk.
const TASKS: usize = 64;
/// The Zipf exponent.
const ZIPF_S: f64 = 0.99;
/// The trace's seed.
const SEED: u64 = 0x5EED_0009_2F1F_0099;
/// L1 bound (entries) of `raw_prototype` and `tiered`.
const L1_MAX_ENTRIES: u64 = 10_000;
/// The bound on one Redis reply, for `tiered` (its L2 timeout) and `raw_prototype` alike.
const L2_TIMEOUT: Duration = Duration::from_secs(1);
/// Long enough that nothing expires during the run.
const TTL: Duration = Duration::from_secs(3600);
/// Keys per pipelined write when filling Redis.
const WRITE_BATCH: usize = 5_000;
/// Every this many-th request of the trace checks its value.
const CHECK_EVERY: usize = 1_000;

const _: () = assert!(TRACE_LEN.is_multiple_of(CHUNK));

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// What every id shares.
struct Fixture {
    trace: Arc<Vec<u32>>,
    /// `keys[i]`: the envelope key of `Payload::new(i)`.
    keys: Arc<Vec<Key>>,
    /// `raw_keys[i]`: the plain-JSON key of `Payload::new(i)`.
    raw_keys: Arc<Vec<String>>,
}

/// Per-id tallies, for the summary printed after the group.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    nanos: AtomicU64,
    /// The process's CPU time over the timed chunks.
    cpu_nanos: AtomicU64,
    /// Raw prototype only: requests answered by its moka cache.
    l1_hits: AtomicU64,
    checked: AtomicU64,
    mismatched: AtomicU64,
}

impl Tally {
    fn record(&self, requests: usize, elapsed: Duration, cpu: Duration) {
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.cpu_nanos
            .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
    }

    fn ran(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    /// CPU microseconds per request.
    fn cpu_per_request(&self) -> f64 {
        let requests = self.requests.load(Ordering::Relaxed);
        if requests == 0 {
            return 0.0;
        }
        self.cpu_nanos.load(Ordering::Relaxed) as f64 / 1e3 / requests as f64
    }

    fn ops_per_sec(&self) -> f64 {
        let nanos = self.nanos.load(Ordering::Relaxed);
        if nanos == 0 {
            return 0.0;
        }
        self.requests.load(Ordering::Relaxed) as f64 / (nanos as f64 / 1e9)
    }

    fn check(&self, ok: bool) {
        self.checked.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.mismatched.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn assert_correct(&self, id: &str) {
        let (checked, bad) = (
            self.checked.load(Ordering::Relaxed),
            self.mismatched.load(Ordering::Relaxed),
        );
        assert!(checked > 0, "{id}: no value was checked");
        assert_eq!(bad, 0, "{id}: {bad} of {checked} checked values were wrong");
    }
}

fn fixture(rt: &tokio::runtime::Runtime, server: &RedisServer) -> Fixture {
    let started = Instant::now();
    let trace = zipf_trace(KEYS, ZIPF_S, TRACE_LEN, SEED);
    let ns = KeySpace::new("bench")
        .expect("key space")
        .namespace("zipf")
        .expect("namespace");
    let raw_ns = KeySpace::new("bench")
        .expect("key space")
        .namespace("zipf_raw")
        .expect("namespace");
    let keys: Vec<Key> = (0..KEYS).map(|i| ns.key(i).expect("key")).collect();
    let raw_keys: Vec<String> = (0..KEYS)
        .map(|i| raw_ns.key(i).expect("key").as_str().to_owned())
        .collect();
    rt.block_on(async {
        // The envelopes, written by a separate backend, exactly as a TieredCache<Payload> stores them.
        // Pipelines of thousands of 1 KiB values: a long command timeout, so a busy machine (or a
        // debug build under `cargo test --all-targets`) does not fail the setup.
        let writer = RedisBackend::builder(server.url())
            .command_timeout(Duration::from_secs(60))
            .connect()
            .await
            .expect("redis backend");
        let now = SystemClock.now();
        for (start, batch) in keys.chunks(WRITE_BATCH).enumerate() {
            let items = batch
                .iter()
                .enumerate()
                .map(|(j, key)| {
                    let id = (start * WRITE_BATCH + j) as u64;
                    let entry = EntryOptions::new(TTL)
                        .entry(Some(Payload::new(id)), now, Duration::ZERO)
                        .expect("entry");
                    (key.clone(), entry)
                })
                .collect();
            Backend::<Option<Payload>>::set_many(&writer, items)
                .await
                .expect("l2 set_many");
        }

        // The plain JSON, for the raw prototype.
        let client = redis::Client::open(server.url()).expect("redis url");
        let setup = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(60)));
        let mut manager = ConnectionManager::new_with_config(client, setup)
            .await
            .expect("redis connection");
        for (start, batch) in raw_keys.chunks(WRITE_BATCH).enumerate() {
            let mut pipe = redis::pipe();
            for (j, key) in batch.iter().enumerate() {
                let id = (start * WRITE_BATCH + j) as u64;
                let json = serde_json::to_vec(&Payload::new(id)).expect("payload encodes");
                pipe.cmd("SET")
                    .arg(key)
                    .arg(json)
                    .arg("EX")
                    .arg(TTL.as_secs())
                    .ignore();
            }
            pipe.query_async::<()>(&mut manager).await.expect("raw set");
        }
        let dbsize: u64 = redis::cmd("DBSIZE")
            .query_async(&mut manager)
            .await
            .expect("dbsize");
        assert_eq!(dbsize, 2 * KEYS as u64, "every key is in Redis");
    });
    eprintln!(
        "workload_zipf: trace of {TRACE_LEN} requests, {} distinct keys; {KEYS} keys written twice \
         to Redis in {:.1?}",
        {
            let mut seen = vec![false; KEYS];
            trace.iter().for_each(|&k| seen[k as usize] = true);
            seen.iter().filter(|&&s| s).count()
        },
        started.elapsed()
    );
    Fixture {
        trace: Arc::new(trace),
        keys: Arc::new(keys),
        raw_keys: Arc::new(raw_keys),
    }
}

/// The hand-written cache-aside: moka in front of one redis-rs connection manager.
#[derive(Clone)]
struct RawPrototype {
    l1: moka::future::Cache<u64, Arc<Payload>>,
    redis: ConnectionManager,
    raw_keys: Arc<Vec<String>>,
}

impl RawPrototype {
    /// The value of key `id`, and whether moka answered.
    async fn get(&mut self, id: u64) -> (Arc<Payload>, bool) {
        if let Some(hit) = self.l1.get(&id).await {
            return (hit, true);
        }
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.raw_keys[id as usize].as_str())
            .query_async(&mut self.redis)
            .await
            .unwrap();
        let value = Arc::new(serde_json::from_slice::<Payload>(&bytes.expect("in redis")).unwrap());
        self.l1.insert(id, Arc::clone(&value)).await;
        (value, false)
    }
}

/// Serves `CHUNK` requests of `trace` from `start` with `TASKS` tasks; returns the elapsed time.
async fn run_raw_chunk(
    raw: &RawPrototype,
    trace: &Arc<Vec<u32>>,
    start: usize,
    tally: &Arc<Tally>,
) -> Duration {
    let began = Instant::now();
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let (mut raw, trace, tally) = (raw.clone(), Arc::clone(trace), Arc::clone(tally));
        tasks.spawn(async move {
            let mut hits = 0_u64;
            for i in (start + t..start + CHUNK).step_by(TASKS) {
                let id = u64::from(trace[i]);
                let (value, hit) = raw.get(id).await;
                hits += u64::from(hit);
                if i.is_multiple_of(CHECK_EVERY) {
                    tally.check(value.id == id);
                }
                black_box(value);
            }
            tally.l1_hits.fetch_add(hits, Ordering::Relaxed);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    began.elapsed()
}

/// Serves `CHUNK` requests of `trace` from `start` with `TASKS` tasks through `cache`; returns
/// the elapsed time.
async fn run_tiered_chunk(
    cache: &Arc<TieredCache<Arc<Payload>>>,
    fx: &Fixture,
    start: usize,
    tally: &Arc<Tally>,
) -> Duration {
    let began = Instant::now();
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let (cache, trace, keys, tally) = (
            Arc::clone(cache),
            Arc::clone(&fx.trace),
            Arc::clone(&fx.keys),
            Arc::clone(tally),
        );
        tasks.spawn(async move {
            for i in (start + t..start + CHUNK).step_by(TASKS) {
                let id = trace[i] as usize;
                let value = cache
                    .get_or_load(&keys[id], |_key| async {
                        Ok::<_, layercache_core::Error>(None)
                    })
                    .await
                    .unwrap()
                    .expect("every key is in Redis");
                if i.is_multiple_of(CHECK_EVERY) {
                    tally.check(value.id == id as u64);
                }
                black_box(value);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    began.elapsed()
}

fn tiered_cache(
    rt: &tokio::runtime::Runtime,
    url: &str,
    l1: bool,
) -> Arc<TieredCache<Arc<Payload>>> {
    // `redis_url` connects lazily, which spawns onto the runtime: build inside it.
    let _runtime_context = rt.enter();
    let builder = TieredCache::<Arc<Payload>>::builder()
        .redis_url(url)
        .l1_max_entries(L1_MAX_ENTRIES)
        .options(EntryOptions::new(TTL))
        .l2_timeout(L2_TIMEOUT);
    let builder = if l1 { builder } else { builder.without_l1() };
    Arc::new(builder.build().expect("tiered cache"))
}

fn workload_zipf(c: &mut Criterion) {
    let rt = runtime();
    // Kept alive until the end of the group; dropping it stops the server.
    let server = RedisServer::start();
    let fx = fixture(&rt, &server);

    let raw = rt.block_on(async {
        let client = redis::Client::open(server.url()).expect("redis url");
        RawPrototype {
            l1: moka::future::Cache::builder()
                .max_capacity(L1_MAX_ENTRIES)
                .build(),
            // The same bound on a Redis reply as `tiered`'s L2 timeout (redis-rs's default is
            // shorter, and a busy machine then fails the prototype's GETs first).
            redis: ConnectionManager::new_with_config(
                client,
                redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(L2_TIMEOUT)),
            )
            .await
            .expect("redis connection"),
            raw_keys: Arc::clone(&fx.raw_keys),
        }
    });
    let tiered = tiered_cache(&rt, &server.url(), true);
    let l2_only = tiered_cache(&rt, &server.url(), false);

    let raw_tally = Arc::new(Tally::default());
    let tiered_tally = Arc::new(Tally::default());
    let l2_only_tally = Arc::new(Tally::default());

    let mut group = c.benchmark_group("workload_zipf");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(benches::measurement_time(Duration::from_secs(5)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));

    let mut cursor = 0_usize;
    group.bench_function("raw_prototype", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (raw, trace, tally) = (&raw, &fx.trace, &raw_tally);
            let first = cursor;
            cursor = (cursor + iters as usize * CHUNK) % TRACE_LEN;
            async move {
                let mut elapsed = Duration::ZERO;
                for n in 0..iters as usize {
                    let start = (first + n * CHUNK) % TRACE_LEN;
                    let cpu = ProcessTime::now();
                    let took = run_raw_chunk(raw, trace, start, tally).await;
                    tally.record(CHUNK, took, cpu.elapsed());
                    elapsed += took;
                }
                elapsed
            }
        });
    });

    for (id, cache, tally) in [
        ("tiered", &tiered, &tiered_tally),
        ("l2_only", &l2_only, &l2_only_tally),
    ] {
        let mut cursor = 0_usize;
        group.bench_function(id, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let fx = &fx;
                let first = cursor;
                cursor = (cursor + iters as usize * CHUNK) % TRACE_LEN;
                async move {
                    let mut elapsed = Duration::ZERO;
                    for n in 0..iters as usize {
                        let start = (first + n * CHUNK) % TRACE_LEN;
                        let cpu = ProcessTime::now();
                        let took = run_tiered_chunk(cache, fx, start, tally).await;
                        tally.record(CHUNK, took, cpu.elapsed());
                        elapsed += took;
                    }
                    elapsed
                }
            });
        });
    }

    group.finish();

    let ratio = |hits: u64, reads: u64| {
        if reads == 0 {
            0.0
        } else {
            hits as f64 / reads as f64
        }
    };
    eprintln!(
        "workload_zipf summary (ops/s = requests / total timed time, warm-up included; {TASKS} \
         tasks, {CHUNK} requests per iteration, tokio multi-thread with 2 workers; CPU = this \
         process's CPU time per request, all threads):"
    );
    if raw_tally.ran() {
        raw_tally.assert_correct("raw_prototype");
        let reads = raw_tally.requests.load(Ordering::Relaxed);
        eprintln!(
            "  raw_prototype: {reads} requests, {:.0} ops/s, {:.2} µs CPU/request, L1 hit ratio {:.4}",
            raw_tally.ops_per_sec(),
            raw_tally.cpu_per_request(),
            ratio(raw_tally.l1_hits.load(Ordering::Relaxed), reads),
        );
    }
    for (id, cache, tally) in [
        ("tiered", &tiered, &tiered_tally),
        ("l2_only", &l2_only, &l2_only_tally),
    ] {
        if !tally.ran() {
            continue;
        }
        tally.assert_correct(id);
        let stats = cache.stats();
        assert_eq!(stats.loads, 0, "{id}: the loader ran: {stats:?}");
        assert_eq!(stats.l2_misses, 0, "{id}: an L2 miss: {stats:?}");
        assert_eq!(stats.l2_errors, 0, "{id}: an L2 error: {stats:?}");
        let reads = tally.requests.load(Ordering::Relaxed);
        eprintln!(
            "  {id:<14} {reads} requests, {:.0} ops/s, {:.2} µs CPU/request, L1 hit ratio {:.4} \
             (l1_hits {}, l1_misses {}, l2_hits {}, coalesced {})",
            tally.ops_per_sec(),
            tally.cpu_per_request(),
            ratio(stats.l1_hits, reads),
            stats.l1_hits,
            stats.l1_misses,
            stats.l2_hits,
            stats.coalesced,
        );
    }
    if raw_tally.ran() {
        for (id, tally) in [("tiered", &tiered_tally), ("l2_only", &l2_only_tally)] {
            if tally.ran() {
                eprintln!(
                    "  ops/s ratio {id}/raw_prototype {:.3}",
                    tally.ops_per_sec() / raw_tally.ops_per_sec()
                );
            }
        }
    }
    if tiered_tally.ran() && l2_only_tally.ran() {
        eprintln!(
            "  ops/s ratio tiered/l2_only {:.3}",
            tiered_tally.ops_per_sec() / l2_only_tally.ops_per_sec()
        );
    }
    // Not under `cargo test` (criterion's test mode runs each id once, in a debug build).
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    if bench_mode && raw_tally.ran() && tiered_tally.ran() && l2_only_tally.ran() {
        interleaved(&rt, &raw, &tiered, &l2_only, &fx);
    }
    drop(server);
}

/// Rounds of the interleaved measurement.
const ROUNDS: usize = 9;
/// Chunks per id per round.
const ROUND_CHUNKS: usize = 10;

/// The three ids again, interleaved: [`ROUNDS`] rounds, each serving [`ROUND_CHUNKS`] chunks per
/// id (the order rotating from round to round), so that the machine's drift hits every id alike.
/// Prints the median ops/s and CPU per request of each id and the median of the per-round ratios.
fn interleaved(
    rt: &tokio::runtime::Runtime,
    raw: &RawPrototype,
    tiered: &Arc<TieredCache<Arc<Payload>>>,
    l2_only: &Arc<TieredCache<Arc<Payload>>>,
    fx: &Fixture,
) {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    // Per id: (ops/s, CPU µs per request) of each round.
    let mut rounds: [Vec<(f64, f64)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut cursors = [0_usize; 3];
    for round in 0..ROUNDS {
        for turn in 0..3 {
            let id = (round + turn) % 3;
            let tally = Arc::new(Tally::default());
            rt.block_on(async {
                for _ in 0..ROUND_CHUNKS {
                    let start = cursors[id];
                    cursors[id] = (start + CHUNK) % TRACE_LEN;
                    let cpu = ProcessTime::now();
                    let took = match id {
                        0 => run_raw_chunk(raw, &fx.trace, start, &tally).await,
                        1 => run_tiered_chunk(tiered, fx, start, &tally).await,
                        _ => run_tiered_chunk(l2_only, fx, start, &tally).await,
                    };
                    tally.record(CHUNK, took, cpu.elapsed());
                }
            });
            rounds[id].push((tally.ops_per_sec(), tally.cpu_per_request()));
        }
    }
    let ops = |id: usize| median(rounds[id].iter().map(|r| r.0).collect());
    let cpu = |id: usize| median(rounds[id].iter().map(|r| r.1).collect());
    let ratio = |a: usize, b: usize| {
        median(
            rounds[a]
                .iter()
                .zip(&rounds[b])
                .map(|(x, y)| x.0 / y.0)
                .collect(),
        )
    };
    eprintln!(
        "workload_zipf interleaved ({ROUNDS} rounds of {} requests per id, medians):",
        ROUND_CHUNKS * CHUNK
    );
    for (id, name) in ["raw_prototype", "tiered", "l2_only"].iter().enumerate() {
        eprintln!(
            "  {name:<14} {:.0} ops/s, {:.2} µs CPU/request",
            ops(id),
            cpu(id)
        );
    }
    eprintln!(
        "  ops/s ratio tiered/raw_prototype {:.3}, tiered/l2_only {:.3}, l2_only/raw_prototype {:.3}",
        ratio(1, 0),
        ratio(1, 2),
        ratio(2, 0)
    );
}

criterion_group!(benches, workload_zipf);
criterion_main!(benches);
