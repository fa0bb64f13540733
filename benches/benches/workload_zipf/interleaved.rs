//! The ids measured again, interleaved, so that the machine's drift hits every id alike; the
//! medians printed and written for the report.

use std::sync::Arc;

use benches::median;
use cpu_time::ProcessTime;
use serde_json::json;

use crate::fixture::{CHUNK, Fixture, KEYS, L1_MAX_ENTRIES, TASKS, TRACE_LEN, ZIPF_S};
use crate::tally::Tally;
use crate::{Entry, Role};

/// Rounds of the interleaved measurement.
const ROUNDS: usize = 9;
/// Chunks per id per round.
const ROUND_CHUNKS: usize = 10;
/// Chunks each id serves untimed at the start of its turn: the ids before it left the CPU caches
/// full of their own data, and an id's first requests after the switch would pay for that (the
/// criterion pass, where each id runs for seconds, does not).
const WARM_CHUNKS: usize = 2;

/// The ratios of ops/s named in the issues: (numerator, denominator, goal).
const GOALS: &[(&str, &str, &str)] = &[
    ("tiered", "raw_prototype", "≥ 0.90"),
    ("tiered", "l2_only", "≥ 1.6"),
    ("l2_only", "raw_prototype", ""),
];

/// Min, median and max of `values`.
fn spread(values: &[f64]) -> serde_json::Value {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({"median": median(values.to_vec()), "min": min, "max": max})
}

/// [`ROUNDS`] rounds, each serving [`ROUND_CHUNKS`] timed chunks per id after [`WARM_CHUNKS`]
/// untimed ones (the order rotating from round to round). Prints the median ops/s and CPU per request of each id and the medians of the
/// per-round ratios; writes them with `benches::data`. `hit_ratios`: each id's in-process hit
/// ratio from the criterion pass.
pub(crate) fn measure(
    rt: &tokio::runtime::Runtime,
    entries: &[&Entry],
    fx: &Fixture,
    hit_ratios: &[(&str, Option<f64>)],
) {
    let n = entries.len();
    // Per id: (ops/s, CPU µs per request) of each round, and failed requests.
    let mut rounds: Vec<Vec<(f64, f64)>> = vec![Vec::new(); n];
    let mut failed = vec![0_u64; n];
    let mut cursors = vec![0_usize; n];
    for round in 0..ROUNDS {
        for turn in 0..n {
            let at = (round + turn) % n;
            let tally = Arc::new(Tally::default());
            let warm = Arc::new(Tally::default());
            rt.block_on(async {
                for _ in 0..WARM_CHUNKS {
                    let start = cursors[at];
                    cursors[at] = (start + CHUNK) % TRACE_LEN;
                    entries[at].runner.run_chunk(&fx.trace, start, &warm).await;
                }
                for _ in 0..ROUND_CHUNKS {
                    let start = cursors[at];
                    cursors[at] = (start + CHUNK) % TRACE_LEN;
                    let cpu = ProcessTime::now();
                    let took = entries[at].runner.run_chunk(&fx.trace, start, &tally).await;
                    tally.record(CHUNK, took, cpu.elapsed());
                }
            });
            tally.assert_correct(entries[at].id);
            failed[at] += entries[at].check_failures(&tally);
            rounds[at].push((tally.ops_per_sec(), tally.cpu_per_request()));
        }
    }
    let index = |id: &str| entries.iter().position(|e| e.id == id);
    let ops = |at: usize| rounds[at].iter().map(|r| r.0).collect::<Vec<_>>();
    let cpu = |at: usize| median(rounds[at].iter().map(|r| r.1).collect());
    let ratios = |a: usize, b: usize| {
        rounds[a]
            .iter()
            .zip(&rounds[b])
            .map(|(x, y)| x.0 / y.0)
            .collect::<Vec<_>>()
    };

    eprintln!(
        "workload_zipf interleaved ({ROUNDS} rounds of {} timed requests per id, each after {} \
         untimed ones; medians):",
        ROUND_CHUNKS * CHUNK,
        WARM_CHUNKS * CHUNK
    );
    let mut ids = Vec::new();
    for (at, entry) in entries.iter().enumerate() {
        let hit_ratio = hit_ratios
            .iter()
            .find(|(id, _)| *id == entry.id)
            .and_then(|(_, r)| *r);
        eprintln!(
            "  {:<22} {:.0} ops/s, {:.2} µs CPU/request",
            entry.id,
            median(ops(at)),
            cpu(at)
        );
        ids.push(json!({
            "id": entry.id,
            "role": entry.role.name(),
            "description": entry.description,
            "ops_per_sec": spread(&ops(at)),
            "cpu_us_per_request": cpu(at),
            "l1_hit_ratio": hit_ratio,
            "failed_requests": failed[at],
        }));
    }

    // The named ratios, then `tiered` over each peer (the goal: ≥ 1.5× the best peer).
    let mut pairs: Vec<(&str, &str, &str)> = GOALS.to_vec();
    let peers: Vec<&str> = entries
        .iter()
        .filter(|e| e.role == Role::Peer)
        .map(|e| e.id)
        .collect();
    let best_peer = peers.iter().copied().max_by(|a, b| {
        let (a, b) = (index(a).map(ops), index(b).map(ops));
        median(a.unwrap_or_default()).total_cmp(&median(b.unwrap_or_default()))
    });
    for peer in &peers {
        let goal = if Some(*peer) == best_peer {
            "≥ 1.5 (best peer)"
        } else {
            ""
        };
        pairs.push(("tiered", peer, goal));
    }
    let mut ratio_rows = Vec::new();
    let mut line = String::new();
    for (a, b, goal) in pairs {
        let (Some(x), Some(y)) = (index(a), index(b)) else {
            continue;
        };
        let values = ratios(x, y);
        let label = format!("{a} / {b}");
        line.push_str(&format!(
            "  ops/s ratio {label} {:.3}\n",
            median(values.clone())
        ));
        let mut row = spread(&values);
        row["label"] = json!(label);
        row["goal"] = json!(goal);
        ratio_rows.push(row);
    }
    eprint!("{line}");

    benches::data::write(
        "workload_zipf",
        &json!({
            "group": "workload_zipf",
            "config": {
                "keys": KEYS,
                "trace_len": TRACE_LEN,
                "zipf_s": ZIPF_S,
                "tasks": TASKS,
                "l1_max_entries": L1_MAX_ENTRIES,
                "rounds": ROUNDS,
                "requests_per_round": ROUND_CHUNKS * CHUNK,
                "untimed_requests_per_round": WARM_CHUNKS * CHUNK,
            },
            "ids": ids,
            "ratios": ratio_rows,
        }),
    );
}
