//! `hit_ratio`: what the L1 saves, on real cache traces, with each eviction policy, against raw
//! moka at the same capacity.
//!
//! Traces: the ARC paper's block-I/O traces `OLTP`, `P3` and `P6` (`*.lis.zst` in the directory
//! [`TRACES_ENV`] names, by default `../shared/traces` beside the workspace; format and citation in
//! its README). Each line `start count _ _` expands into `count` requests for keys `start ..
//! start + count`, as the paper, mokabench and Caffeine's simulator count them. Each trace is
//! replayed from its beginning, at most [`DEFAULT_MAX_REQUESTS`] requests (override with
//! [`REQUESTS_ENV`]; `0` = the whole trace), so the group stays short. Where the directory is absent,
//! a seeded synthetic Zipf trace ([`SYNTHETIC_LEN`] requests of Zipf(0.9) over [`SYNTHETIC_KEYS`]
//! keys) stands in.
//!
//! Each (trace, capacity, policy) is replayed through:
//! - **ours**: a `MokaBackend<u64>` (the L1 a `TieredCache` builds) with that `L1Policy`: each
//!   request reads its key with `get_entry`, and a miss stores it with `set_entry`;
//! - **raw**: `moka::sync::Cache<u64, u64>` with the same capacity and `EvictionPolicy`, `get` then
//!   `insert` on a miss.
//!
//! The hit ratios (%) are printed to stderr as a table (`hit_ratio summary`), with ours − raw
//! (expected within 0.5 points) and the better policy per row. moka's TinyLFU sketch is seeded at
//! random, so raw moka moves from run to run too: a second raw TinyLFU replay ("raw again") shows
//! by how much, and a difference within that spread is moka's, not ours. LRU is deterministic. The criterion ids time the replay itself: one
//! iteration serves [`CHUNK`] consecutive requests of the first trace at its second capacity,
//! ids `l1_tinylfu`, `l1_lru`, `moka_raw_tinylfu`, `moka_raw_lru`. See `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "a benchmark: a failed setup should stop it loudly"
)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use layercache_core::{Clock, Entry, EntryOptions, KeySpace, Namespace, SystemClock};
use layercache_moka::{L1Policy, MokaBackend};
use layercache_testkit::workload::zipf_trace;
use moka::policy::EvictionPolicy;

/// The environment variable naming the traces' directory.
const TRACES_ENV: &str = "LAYERCACHE_TRACES";
/// The environment variable bounding the requests replayed per trace (`0`: all of them).
const REQUESTS_ENV: &str = "LAYERCACHE_TRACE_REQUESTS";
/// The default bound on the requests replayed per trace: the first half million of OLTP (0.9 M),
/// P3 (3.9 M) and P6 (12.7 M), so the group takes 1–2 minutes on 2 cores.
const DEFAULT_MAX_REQUESTS: usize = 500_000;
/// The bound under `cargo test --benches` (criterion's test mode, a debug build).
const TEST_MODE_MAX_REQUESTS: usize = 20_000;
/// The synthetic stand-in: requests, keys, exponent, seed.
const SYNTHETIC_LEN: usize = 1_000_000;
const SYNTHETIC_KEYS: usize = 100_000;
const SYNTHETIC_S: f64 = 0.9;
const SYNTHETIC_SEED: u64 = 13;
/// Requests per criterion iteration.
const CHUNK: usize = 1_000;

/// The traces and the capacities they are replayed at: the capacities of the README's check
/// values (and of the ARC paper's tables).
const TRACES: &[(&str, &[u64])] = &[
    ("OLTP", &[250, 1_000, 2_000, 10_000]),
    ("P3", &[32_768, 131_072]),
    ("P6", &[32_768, 131_072]),
];

struct Trace {
    name: String,
    capacities: Vec<u64>,
    keys: Vec<u64>,
    /// Requests in the whole trace (before the bound).
    total: usize,
}

fn traces_dir() -> PathBuf {
    match std::env::var_os(TRACES_ENV) {
        Some(dir) => PathBuf::from(dir),
        // benches/ is a member of the workspace; shared/ sits beside the workspace.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces"),
    }
}

fn max_requests(bench_mode: bool) -> usize {
    if !bench_mode {
        return TEST_MODE_MAX_REQUESTS;
    }
    match std::env::var(REQUESTS_ENV).ok().map(|v| v.parse::<usize>()) {
        Some(Ok(0)) => usize::MAX,
        Some(Ok(n)) => n,
        Some(Err(_)) => panic!("{REQUESTS_ENV} must be a number of requests"),
        None => DEFAULT_MAX_REQUESTS,
    }
}

/// Expands a `.lis.zst` file into its requests, at most `max`; returns them and the total.
fn read_trace(path: &Path, max: usize) -> (Vec<u64>, usize) {
    let file = File::open(path).expect("trace file");
    let decoder = ruzstd::decoding::StreamingDecoder::new(BufReader::new(file)).expect("zstd");
    let mut keys = Vec::new();
    let mut total = 0_usize;
    for line in BufReader::new(decoder).lines() {
        let line = line.expect("trace line");
        let mut fields = line.split_ascii_whitespace().map(|f| f.parse::<u64>());
        let (Some(Ok(start)), Some(Ok(count))) = (fields.next(), fields.next()) else {
            panic!(
                "{}: a line is not `start count _ _`: {line:?}",
                path.display()
            );
        };
        total += count as usize;
        for key in start..start + count {
            if keys.len() < max {
                keys.push(key);
            }
        }
    }
    (keys, total)
}

fn load_traces(max: usize) -> Vec<Trace> {
    let dir = traces_dir();
    let mut traces = Vec::new();
    for (name, capacities) in TRACES {
        let path = dir.join(format!("{name}.lis.zst"));
        if path.is_file() {
            let (keys, total) = read_trace(&path, max);
            traces.push(Trace {
                name: (*name).to_owned(),
                capacities: capacities.to_vec(),
                keys,
                total,
            });
        }
    }
    if traces.is_empty() {
        eprintln!(
            "hit_ratio: no traces in {} (set {TRACES_ENV}); a synthetic Zipf({SYNTHETIC_S}) trace \
             stands in",
            dir.display()
        );
        let len = SYNTHETIC_LEN.min(max);
        let keys = zipf_trace(SYNTHETIC_KEYS, SYNTHETIC_S, len, SYNTHETIC_SEED)
            .into_iter()
            .map(u64::from)
            .collect();
        traces.push(Trace {
            name: format!("zipf{SYNTHETIC_S}"),
            capacities: vec![1_000, 10_000],
            keys,
            total: SYNTHETIC_LEN,
        });
    }
    traces
}

fn policy_of(policy: L1Policy) -> EvictionPolicy {
    match policy {
        L1Policy::Lru => EvictionPolicy::lru(),
        _ => EvictionPolicy::tiny_lfu(),
    }
}

/// One replayer per side, so the criterion ids and the hit-ratio replay share the code.
enum Replayer {
    Ours {
        cache: MokaBackend<u64>,
        ns: Namespace,
        entry: Entry<u64>,
    },
    Raw(moka::sync::Cache<u64, u64>),
}

impl Replayer {
    fn new(raw: bool, capacity: u64, policy: L1Policy) -> Self {
        if raw {
            return Replayer::Raw(
                moka::sync::Cache::builder()
                    .max_capacity(capacity)
                    .eviction_policy(policy_of(policy))
                    .build(),
            );
        }
        Replayer::Ours {
            cache: MokaBackend::builder()
                .max_entries(capacity)
                .eviction_policy(policy)
                .build()
                .expect("moka backend"),
            ns: KeySpace::new("trace").unwrap().namespace("block").unwrap(),
            entry: EntryOptions::new(Duration::from_secs(24 * 3_600))
                .entry(0, SystemClock.now(), Duration::ZERO)
                .expect("entry"),
        }
    }

    /// Serves `keys`; returns the hits.
    fn replay(&self, keys: &[u64]) -> u64 {
        let mut hits = 0;
        match self {
            Replayer::Ours { cache, ns, entry } => {
                for &block in keys {
                    let key = ns.key(block).expect("key");
                    if cache.get_entry(&key).is_some() {
                        hits += 1;
                    } else {
                        cache.set_entry(&key, entry.clone());
                    }
                }
            }
            Replayer::Raw(cache) => {
                for &block in keys {
                    if cache.get(&block).is_some() {
                        hits += 1;
                    } else {
                        cache.insert(block, block);
                    }
                }
            }
        }
        hits
    }
}

const POLICIES: [(L1Policy, &str); 2] = [(L1Policy::TinyLfu, "TinyLFU"), (L1Policy::Lru, "LRU")];

/// The sides of a replay: ours, raw moka, and raw moka again (its own run-to-run spread).
const OURS: u8 = 0;
const RAW: u8 = 1;
const RAW_AGAIN: u8 = 2;

/// (trace, capacity, policy, side).
type Job = (usize, u64, usize, u8);

/// Every (trace, capacity, policy, side) replayed on its own cache, on as many threads as there
/// are cores (the replays share nothing); hit ratios in %, keyed like the jobs.
fn hit_ratios(traces: &[Trace]) -> Vec<(Job, f64)> {
    let mut jobs = Vec::new();
    for (t, trace) in traces.iter().enumerate() {
        for &capacity in &trace.capacities {
            for side in [OURS, RAW, RAW_AGAIN] {
                jobs.push((t, capacity, 0, side));
            }
            for side in [OURS, RAW] {
                jobs.push((t, capacity, 1, side));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(&job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (t, capacity, p, side) = job;
                    let keys = &traces[t].keys;
                    let hits = Replayer::new(side != OURS, capacity, POLICIES[p].0).replay(keys);
                    let ratio = 100.0 * hits as f64 / keys.len().max(1) as f64;
                    results.lock().unwrap().push((job, ratio));
                }
            });
        }
    });
    results.into_inner().unwrap()
}

fn print_summary(traces: &[Trace], ratios: &[(Job, f64)], took: Duration) {
    let ratio = |key: Job| {
        ratios
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(f64::NAN, |(_, r)| *r)
    };
    eprintln!(
        "hit_ratio summary (hit ratio %, each request a get and a miss an insert; ours = \
         MokaBackend, raw = moka::sync::Cache; replayed in {:.1} s):",
        took.as_secs_f64()
    );
    eprintln!(
        "  | trace | requests | capacity | TinyLFU ours | TinyLFU raw | raw again | ours − raw | \
         LRU ours | LRU raw | ours − raw | better |"
    );
    eprintln!("  |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let (mut worst, mut spread) = (0.0_f64, 0.0_f64);
    for (t, trace) in traces.iter().enumerate() {
        let requests = if trace.keys.len() < trace.total {
            format!("{} of {}", trace.keys.len(), trace.total)
        } else {
            trace.keys.len().to_string()
        };
        for &capacity in &trace.capacities {
            let [lfu, lfu_raw, lfu_again, lru, lru_raw] =
                [(0, OURS), (0, RAW), (0, RAW_AGAIN), (1, OURS), (1, RAW)]
                    .map(|(p, side)| ratio((t, capacity, p, side)));
            worst = worst.max((lfu - lfu_raw).abs()).max((lru - lru_raw).abs());
            spread = spread.max((lfu_raw - lfu_again).abs());
            let better = if (lfu - lru).abs() < 0.05 {
                "even"
            } else if lru > lfu {
                "**LRU**"
            } else {
                "TinyLFU"
            };
            eprintln!(
                "  | {} | {requests} | {capacity} | {lfu:.2} | {lfu_raw:.2} | {lfu_again:.2} | \
                 {:+.2} | {lru:.2} | {lru_raw:.2} | {:+.2} | {better} |",
                trace.name,
                lfu - lfu_raw,
                lru - lru_raw,
            );
        }
    }
    eprintln!(
        "  largest |ours − raw|: {worst:.2} points (goal ≤ 0.5: {}); raw moka's own spread \
         (|raw − raw again|, TinyLFU): up to {spread:.2} points",
        if worst <= 0.5 { "met" } else { "NOT met" }
    );
}

fn hit_ratio(c: &mut Criterion) {
    // Not under `cargo test` (criterion's test mode runs each id once, in a debug build).
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    let traces = load_traces(max_requests(bench_mode));

    let started = Instant::now();
    let ratios = hit_ratios(&traces);
    print_summary(&traces, &ratios, started.elapsed());

    let trace = &traces[0];
    let capacity = trace.capacities[1.min(trace.capacities.len() - 1)];
    let chunks = trace.keys.len() / CHUNK;
    let mut group = c.benchmark_group("hit_ratio");
    group
        .throughput(Throughput::Elements(CHUNK as u64))
        .measurement_time(benches::measurement_time(Duration::from_secs(5)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));
    for (id, raw, policy) in [
        ("l1_tinylfu", false, L1Policy::TinyLfu),
        ("l1_lru", false, L1Policy::Lru),
        ("moka_raw_tinylfu", true, L1Policy::TinyLfu),
        ("moka_raw_lru", true, L1Policy::Lru),
    ] {
        let replayer = Replayer::new(raw, capacity, policy);
        let mut cursor = 0_usize;
        group.bench_function(id, |b| {
            b.iter(|| {
                let start = cursor * CHUNK;
                cursor = (cursor + 1) % chunks.max(1);
                replayer.replay(&trace.keys[start..(start + CHUNK).min(trace.keys.len())])
            });
        });
    }
    group.finish();
}

criterion_group!(benches, hit_ratio);
criterion_main!(benches);
