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
//! moka seeds TinyLFU's frequency sketch at random, so raw moka's hit ratio moves from replay to
//! replay by itself (by more than a point on P3/P6): each TinyLFU row is replayed
//! [`TINYLFU_RUNS`] times ([`RUNS_ENV`] overrides) for ours and as many for raw, and compared by
//! the medians. LRU is deterministic and replayed once per side. The hit ratios (%) are printed
//! to stderr as a table (`hit_ratio summary`): per row and policy the median and spread (min–max)
//! of each side, ours − raw of the medians, whether it is within the goal of [`GOAL_POINTS`]
//! points (and, where not, whether ours' median lies inside raw moka's own min–max), and the
//! better policy; with `LAYERCACHE_BENCH_DATA` set they are also written to
//! `$LAYERCACHE_BENCH_DATA/hit_ratio.json` (every replay's value; `benches::data`).
//!
//! The criterion ids time the replay itself: one iteration serves [`CHUNK`] consecutive requests
//! of the first trace at its second capacity, ids `l1_tinylfu`, `l1_lru`, `moka_raw_tinylfu`,
//! `moka_raw_lru`. See `docs/benchmarks.md`.

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

/// The replays of each (trace, capacity, TinyLFU) row, for ours and for raw moka alike: moka
/// seeds TinyLFU's frequency sketch at random, so one replay per row says little (raw moka moves
/// by more than a point from itself on P3/P6); the median of several does. LRU is deterministic:
/// one replay each. One replay of P3 moves by 0.45–0.74 points (standard deviation): medians of 5
/// per side missed 0.5 points in one row of two runs out of three, medians of 15 never (largest
/// 0.24); 9 keeps `cargo xtask bench` well under its 15 minutes.
const TINYLFU_RUNS: usize = 9;
/// The environment variable overriding [`TINYLFU_RUNS`] (more replays narrow the medians' spread
/// on P3/P6, at their cost: about 12 s per replay of all the rows, on two cores).
const RUNS_ENV: &str = "LAYERCACHE_HIT_RATIO_RUNS";
/// [`TINYLFU_RUNS`] under `cargo test --benches`.
const TEST_MODE_TINYLFU_RUNS: usize = 2;
/// The goal: ours within this many points of raw moka (of the medians).
const GOAL_POINTS: f64 = 0.5;

/// (trace, capacity, policy index in [`POLICIES`], raw, run).
type Job = (usize, u64, usize, bool, usize);

/// The hit ratios (%) of one row's replays, in the order they ran.
#[derive(Clone, Debug, Default)]
struct Runs(Vec<f64>);

impl Runs {
    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    fn median(&self) -> f64 {
        let sorted = self.sorted();
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `median (min–max)`, or the one value of a single replay.
    fn cell(&self) -> String {
        if self.0.len() == 1 {
            format!("{:.2}", self.0[0])
        } else {
            format!("{:.2} ({:.2}–{:.2})", self.median(), self.min(), self.max())
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "runs": self.0,
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
        })
    }
}

/// One (trace, capacity, policy) row: ours and raw moka.
#[derive(Debug)]
struct Row {
    trace: usize,
    capacity: u64,
    policy: usize,
    ours: Runs,
    raw: Runs,
}

impl Row {
    /// ours − raw, of the medians, in points.
    fn difference(&self) -> f64 {
        self.ours.median() - self.raw.median()
    }

    fn within_goal(&self) -> bool {
        self.difference().abs() <= GOAL_POINTS
    }

    /// Whether ours' median lies within raw moka's own min–max: a difference raw moka shows
    /// against itself.
    fn within_raw_spread(&self) -> bool {
        (self.raw.min()..=self.raw.max()).contains(&self.ours.median())
    }

    /// The summary's verdict on the goal.
    fn verdict(&self) -> &'static str {
        match (self.within_goal(), self.within_raw_spread()) {
            (true, _) => "yes",
            (false, true) => "**no** (inside raw's own min–max)",
            (false, false) => "**no**",
        }
    }
}

/// Every (trace, capacity, policy, side, run) replayed on its own cache, on as many threads as
/// there are cores (the replays share nothing); rows in trace, capacity, policy order.
fn hit_ratios(traces: &[Trace], tinylfu_runs: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut jobs = Vec::new();
    for (t, trace) in traces.iter().enumerate() {
        for &capacity in &trace.capacities {
            for (p, (policy, _)) in POLICIES.iter().enumerate() {
                let runs = if *policy == L1Policy::Lru {
                    1
                } else {
                    tinylfu_runs
                };
                for run in 0..runs {
                    for raw in [false, true] {
                        jobs.push((t, capacity, p, raw, run));
                    }
                }
                rows.push(Row {
                    trace: t,
                    capacity,
                    policy: p,
                    ours: Runs::default(),
                    raw: Runs::default(),
                });
            }
        }
    }
    // The largest caches first, so the last job to finish is a short one.
    jobs.sort_by_key(|&(t, capacity, ..)| {
        std::cmp::Reverse(capacity * traces[t].keys.len() as u64)
    });
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(Job, f64)>> = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(&job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (t, capacity, p, raw, _) = job;
                    let keys = &traces[t].keys;
                    let hits = Replayer::new(raw, capacity, POLICIES[p].0).replay(keys);
                    let ratio = 100.0 * hits as f64 / keys.len().max(1) as f64;
                    results.lock().unwrap().push((job, ratio));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    // Runs in their index order, whatever thread finished first.
    results.sort_by_key(|&((.., run), _)| run);
    for ((t, capacity, p, raw, _), ratio) in results {
        let row = rows
            .iter_mut()
            .find(|r| r.trace == t && r.capacity == capacity && r.policy == p)
            .unwrap();
        if raw {
            row.raw.0.push(ratio);
        } else {
            row.ours.0.push(ratio);
        }
    }
    rows
}

/// `n of total`, or `n` for a whole trace.
fn requests(trace: &Trace) -> String {
    if trace.keys.len() < trace.total {
        format!("{} of {}", trace.keys.len(), trace.total)
    } else {
        trace.keys.len().to_string()
    }
}

fn print_summary(traces: &[Trace], rows: &[Row], tinylfu_runs: usize, took: Duration) {
    eprintln!(
        "hit_ratio summary (hit ratio %, each request a get and a miss an insert; ours = \
         MokaBackend, raw = moka::sync::Cache; TinyLFU: median (min–max) of {tinylfu_runs} \
         replays each, moka seeding its sketch at random; LRU: one replay each, it is \
         deterministic; ours − raw of the medians; replayed in {:.1} s):",
        took.as_secs_f64()
    );
    eprintln!(
        "  | trace | requests | capacity | TinyLFU ours | TinyLFU raw | ours − raw | ≤ 0.5 | \
         LRU ours | LRU raw | ours − raw | ≤ 0.5 | better |"
    );
    eprintln!("  |---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|");
    let (mut worst, mut spread) = (0.0_f64, 0.0_f64);
    let (mut missed, mut noise) = (0, 0);
    for pair in rows.chunks(2) {
        let [lfu, lru] = pair else { continue };
        let trace = &traces[lfu.trace];
        worst = worst
            .max(lfu.difference().abs())
            .max(lru.difference().abs());
        spread = spread.max(lfu.raw.max() - lfu.raw.min());
        for row in [lfu, lru] {
            missed += usize::from(!row.within_goal());
            noise += usize::from(!row.within_goal() && row.within_raw_spread());
        }
        let (lfu_median, lru_median) = (lfu.ours.median(), lru.ours.median());
        let better = if (lfu_median - lru_median).abs() < 0.05 {
            "even"
        } else if lru_median > lfu_median {
            "**LRU**"
        } else {
            "TinyLFU"
        };
        eprintln!(
            "  | {} | {} | {} | {} | {} | {:+.2} | {} | {} | {} | {:+.2} | {} | {better} |",
            trace.name,
            requests(trace),
            lfu.capacity,
            lfu.ours.cell(),
            lfu.raw.cell(),
            lfu.difference(),
            lfu.verdict(),
            lru.ours.cell(),
            lru.raw.cell(),
            lru.difference(),
            lru.verdict(),
        );
    }
    eprintln!(
        "  largest |ours − raw| of the medians: {worst:.2} points (goal ≤ {GOAL_POINTS}: {}); \
         raw moka's own spread (max − min of its TinyLFU replays): up to {spread:.2} points",
        if missed == 0 {
            String::from("met in every row")
        } else {
            format!(
                "NOT met in {missed} of {} rows, {noise} of them with ours' median inside raw \
                 moka's own min–max",
                rows.len()
            )
        }
    );
}

/// The rows as `target/bench-data/hit_ratio.json` (`benches/report` draws them).
fn write_data(traces: &[Trace], rows: &[Row], tinylfu_runs: usize, max: usize) {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let trace = &traces[row.trace];
            serde_json::json!({
                "trace": trace.name,
                "requests": trace.keys.len(),
                "trace_requests": trace.total,
                "capacity": row.capacity,
                "policy": POLICIES[row.policy].1,
                "ours": row.ours.json(),
                "raw": row.raw.json(),
                "ours_minus_raw": row.difference(),
                "within_goal": row.within_goal(),
                "within_raw_spread": row.within_raw_spread(),
            })
        })
        .collect();
    benches::data::write(
        "hit_ratio",
        &serde_json::json!({
            "group": "hit_ratio",
            "config": {
                "max_requests": if max == usize::MAX { 0 } else { max },
                "tinylfu_runs": tinylfu_runs,
                "lru_runs": 1,
                "goal_points": GOAL_POINTS,
            },
            "rows": rows,
        }),
    );
}

fn hit_ratio(c: &mut Criterion) {
    // Not under `cargo test` (criterion's test mode runs each id once, in a debug build).
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    let max = max_requests(bench_mode);
    let traces = load_traces(max);
    let tinylfu_runs = if bench_mode {
        match std::env::var(RUNS_ENV).ok().map(|v| v.parse::<usize>()) {
            Some(Ok(n)) if n > 0 => n,
            Some(_) => panic!("{RUNS_ENV} must be a number of replays (at least 1)"),
            None => TINYLFU_RUNS,
        }
    } else {
        TEST_MODE_TINYLFU_RUNS
    };

    let started = Instant::now();
    let rows = hit_ratios(&traces, tinylfu_runs);
    print_summary(&traces, &rows, tinylfu_runs, started.elapsed());
    write_data(&traces, &rows, tinylfu_runs, max);

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
