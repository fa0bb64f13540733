//! `workload_zipf`: a skewed read workload over many keys, layercache against a hand-written
//! cache-aside and the Rust peers in the same run (issue 9, "a lean request path", and issue 13,
//! "benchmarks a user can trust").
//!
//! Data ([`fixture`]): [`KEYS`] keys, each holding a 1 KiB [`benches::Payload`]
//! (`Payload::new(i)` for key `i`), ALL present in a real `redis-server` on loopback (started by
//! `layercache-testkit`) before the group runs, in the form each id reads: `Entry<Option<Payload>>`
//! envelopes (what a `TieredCache<Payload>` reads), plain JSON (the hand-written ids), and each
//! peer's own format, written through the peer.
//!
//! Trace: [`TRACE_LEN`] requests drawn from Zipf([`ZIPF_S`]) over the keys with a seeded
//! generator (`layercache_testkit::workload`), computed once and shared by every id. One
//! criterion iteration is one chunk of [`CHUNK`] consecutive requests of the trace, served by
//! [`TASKS`] tokio tasks (task `t` takes requests `t`, `t + TASKS`, ...; [`contenders`]);
//! `iter_custom` times whole chunks. Each id keeps a cursor through the trace across iterations
//! (wrapping at the end), so its cache sees the trace in order. The runtime is tokio
//! multi-thread with 2 workers for every id.
//!
//! The ids (role in brackets):
//! - `raw_prototype` (baseline): no code of ours: `moka::future::Cache<u64, Arc<Payload>>` (at
//!   most [`L1_MAX_ENTRIES`]) in front of one redis-rs `ConnectionManager`; on a miss, GET the
//!   plain JSON, `serde_json::from_slice`, insert.
//! - `tiered` (ours): `TieredCache::<Arc<Payload>>` as the README recommends, read with
//!   `get_or_load`; `l2_only` (ours): the same cache with `.without_l1()`.
//! - `peer_*` (peers, [`peers`]): each configured as its documentation recommends.
//!
//! Every [`CHECK_EVERY`]th request of the trace checks the value's `id` against the key's number
//! (asserted at the end). After the group, each id that ran prints its ops/s (requests / total
//! timed time, warm-up included), its L1 hit ratio and its CPU time per request (the process's
//! CPU time over the timed chunks, all threads; Redis runs in its own process and is not
//! counted); then the ids are measured again **interleaved** (rounds that alternate them, so that
//! the machine's drift hits all alike), the medians of the per-round ratios are printed and, for
//! `cargo xtask bench`, written to `$LAYERCACHE_BENCH_DATA/workload_zipf.json`
//! (`benches::data`). Ids can be run alone (`cargo bench -p benches --bench workload_zipf --
//! tiered`), e.g. under `perf record`. See `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark harness"
)]

mod contenders;
mod fixture;
mod interleaved;
mod peers;
mod tally;

use std::sync::Arc;
use std::time::Duration;

use cpu_time::ProcessTime;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use layercache_testkit::RedisServer;

use crate::contenders::{RawPrototype, Runner, Tiered};
use crate::fixture::{CHUNK, KEYS, L1_MAX_ENTRIES, TASKS, TRACE_LEN, ZIPF_S, fixture};
use crate::tally::Tally;

/// What an id is in the comparison.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The hand-written ceiling for our overhead.
    Baseline,
    /// layercache.
    Ours,
    /// Another crate a user might pick.
    Peer,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Baseline => "baseline",
            Role::Ours => "ours",
            Role::Peer => "peer",
        }
    }
}

/// One id of the group.
pub(crate) struct Entry {
    pub(crate) id: &'static str,
    pub(crate) role: Role,
    /// One line: what it is and how it is configured.
    pub(crate) description: &'static str,
    pub(crate) runner: Box<dyn Runner>,
    /// The criterion pass's tally.
    pub(crate) tally: Arc<Tally>,
}

impl Entry {
    pub(crate) fn new(
        id: &'static str,
        role: Role,
        description: &'static str,
        runner: impl Runner + 'static,
    ) -> Self {
        Entry {
            id,
            role,
            description,
            runner: Box::new(runner),
            tally: Arc::new(Tally::default()),
        }
    }
}

impl Entry {
    /// Ours and the baseline never fail a request (panics if one did); a peer's failures are
    /// printed with the first one's reason, and it stays in the comparison. Returns the count.
    pub(crate) fn check_failures(&self, tally: &Tally) -> u64 {
        let (failed, first) = tally.failures();
        if failed > 0 {
            assert!(
                self.role == Role::Peer,
                "{}: {failed} requests failed, the first: {first:?}",
                self.id
            );
            eprintln!(
                "  {}: {failed} of {} requests FAILED (the first: {})",
                self.id,
                tally.requests(),
                first.unwrap_or_default()
            );
        }
        failed
    }
}

fn workload_zipf(c: &mut Criterion) {
    let rt = benches::runtime();
    // Kept alive until the end of the group; dropping it stops the server.
    let server = RedisServer::start();
    let url = server.url();
    let fx = fixture(&rt, &url);

    let mut entries = vec![
        Entry::new(
            "raw_prototype",
            Role::Baseline,
            "hand-written: moka::future::Cache in front of one redis-rs ConnectionManager, GET + serde_json on a miss",
            rt.block_on(RawPrototype::new(&url, &fx)),
        ),
        Entry::new(
            "tiered",
            Role::Ours,
            "TieredCache<Arc<Payload>> as its README recommends (L1 + Redis), get_or_load",
            Tiered::new(&rt, &url, &fx, true),
        ),
        Entry::new(
            "l2_only",
            Role::Ours,
            "the same TieredCache with .without_l1()",
            Tiered::new(&rt, &url, &fx, false),
        ),
    ];
    entries.extend(peers::peers(&rt, &url, &fx));

    let mut group = c.benchmark_group("workload_zipf");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(benches::measurement_time(Duration::from_secs(5)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));
    for entry in &entries {
        let mut cursor = 0_usize;
        group.bench_function(entry.id, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (runner, trace, tally) = (&entry.runner, &fx.trace, &entry.tally);
                let first = cursor;
                cursor = (cursor + iters as usize * CHUNK) % TRACE_LEN;
                async move {
                    let mut elapsed = Duration::ZERO;
                    for n in 0..iters as usize {
                        let start = (first + n * CHUNK) % TRACE_LEN;
                        let cpu = ProcessTime::now();
                        let took = runner.run_chunk(trace, start, tally).await;
                        tally.record(CHUNK, took, cpu.elapsed());
                        elapsed += took;
                    }
                    elapsed
                }
            });
        });
    }
    group.finish();

    eprintln!(
        "workload_zipf summary (ops/s = requests / total timed time, warm-up included; {TASKS} \
         tasks, {CHUNK} requests per iteration, tokio multi-thread with 2 workers; CPU = this \
         process's CPU time per request, all threads; {KEYS} keys, Zipf({ZIPF_S}), L1 of \
         {L1_MAX_ENTRIES} entries):"
    );
    let mut hit_ratios = Vec::new();
    for entry in entries.iter().filter(|entry| entry.tally.ran()) {
        let tally = &entry.tally;
        tally.assert_correct(entry.id);
        entry.check_failures(tally);
        let hit_ratio = entry.runner.finish(entry.id, tally);
        eprintln!(
            "  {:<22} {} requests, {:.0} ops/s, {:.2} µs CPU/request, L1 hit ratio {}",
            entry.id,
            tally.requests(),
            tally.ops_per_sec(),
            tally.cpu_per_request(),
            hit_ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.4}")),
        );
        hit_ratios.push((entry.id, hit_ratio));
    }
    let ran = |id: &str| entries.iter().any(|e| e.id == id && e.tally.ran());
    if ran("raw_prototype") {
        let raw = entries[0].tally.ops_per_sec();
        for entry in entries[1..].iter().filter(|entry| entry.tally.ran()) {
            eprintln!(
                "  ops/s ratio {}/raw_prototype {:.3}",
                entry.id,
                entry.tally.ops_per_sec() / raw
            );
        }
    }
    // Not under `cargo test` (criterion's test mode runs each id once, in a debug build).
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    if bench_mode && ran("raw_prototype") && ran("tiered") {
        let ran: Vec<&Entry> = entries.iter().filter(|e| e.tally.ran()).collect();
        interleaved::measure(&rt, &ran, &fx, &hit_ratios);
    }
    drop(server);
}

criterion_group!(benches, workload_zipf);
criterion_main!(benches);
