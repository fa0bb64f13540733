//! The data every id reads: the trace, and the keys in Redis in the forms ours and the
//! hand-written contenders read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::Payload;
use layercache_core::{Backend, Clock, EntryOptions, Key, KeySpace, Namespace, SystemClock};
use layercache_redis::RedisBackend;
use layercache_testkit::workload::zipf_trace;
use redis::aio::ConnectionManager;

/// Distinct keys, all in Redis.
pub(crate) const KEYS: usize = 100_000;
/// Requests in the precomputed trace.
pub(crate) const TRACE_LEN: usize = 1_000_000;
/// Requests per criterion iteration (a multiple of which is `TRACE_LEN`).
pub(crate) const CHUNK: usize = 10_000;
/// Concurrent tokio tasks sharing one chunk.
pub(crate) const TASKS: usize = 64;
/// The Zipf exponent.
pub(crate) const ZIPF_S: f64 = 0.99;
/// The trace's seed.
const SEED: u64 = 0x5EED_0009_2F1F_0099;
/// L1 bound (entries) of every contender with an in-process tier.
pub(crate) const L1_MAX_ENTRIES: u64 = 10_000;
/// The bound on one Redis reply, for `tiered` (its L2 timeout) and the hand-written ids alike.
pub(crate) const L2_TIMEOUT: Duration = Duration::from_secs(1);
/// Long enough that nothing expires during the run.
pub(crate) const TTL: Duration = Duration::from_secs(3600);
/// Keys per pipelined write when filling Redis.
pub(crate) const WRITE_BATCH: usize = 5_000;
/// Every this many-th request of the trace checks its value.
pub(crate) const CHECK_EVERY: usize = 1_000;
/// A long bound on one setup command (pipelines of thousands of 1 KiB values), so that a busy
/// machine, or a debug build under `cargo test --all-targets`, does not fail the setup.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

const _: () = assert!(TRACE_LEN.is_multiple_of(CHUNK));

/// What every id shares.
pub(crate) struct Fixture {
    pub(crate) trace: Arc<Vec<u32>>,
    /// The namespace of the envelopes `tiered` reads: key `ns.key(i)` holds `Payload::new(i)`.
    pub(crate) ns: Namespace,
    /// The namespace of the plain JSON the hand-written ids read: `raw_ns.key(i)` likewise.
    pub(crate) raw_ns: Namespace,
}

/// A connection for setup commands, with [`SETUP_TIMEOUT`].
pub(crate) async fn setup_connection(url: &str) -> ConnectionManager {
    let client = redis::Client::open(url).expect("redis url");
    let config =
        redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(SETUP_TIMEOUT));
    ConnectionManager::new_with_config(client, config)
        .await
        .expect("redis connection")
}

/// The trace, and every key written to Redis twice: as `Entry<Option<Payload>>` envelopes
/// (exactly what a `TieredCache<Payload>` stores, written through a separate `RedisBackend`) and
/// as plain JSON under another namespace.
pub(crate) fn fixture(rt: &tokio::runtime::Runtime, url: &str) -> Fixture {
    let started = Instant::now();
    let trace = zipf_trace(KEYS, ZIPF_S, TRACE_LEN, SEED);
    let namespace = |name: &str| {
        KeySpace::new("bench")
            .expect("key space")
            .namespace(name)
            .expect("namespace")
    };
    let (ns, raw_ns) = (namespace("zipf"), namespace("zipf_raw"));
    let keys: Vec<Key> = (0..KEYS).map(|i| ns.key(i).expect("key")).collect();
    let raw_keys: Vec<String> = (0..KEYS)
        .map(|i| raw_ns.key(i).expect("key").as_str().to_owned())
        .collect();
    rt.block_on(async {
        let writer = RedisBackend::builder(url)
            .command_timeout(SETUP_TIMEOUT)
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

        let mut manager = setup_connection(url).await;
        benches::set_raw_payloads(&mut manager, &raw_keys, Some(TTL), WRITE_BATCH)
            .await
            .expect("raw set");
        let dbsize: u64 = redis::cmd("DBSIZE")
            .query_async(&mut manager)
            .await
            .expect("dbsize");
        assert!(dbsize >= 2 * KEYS as u64, "every key is in Redis");
    });
    let distinct = {
        let mut seen = vec![false; KEYS];
        trace.iter().for_each(|&k| seen[k as usize] = true);
        seen.iter().filter(|&&s| s).count()
    };
    eprintln!(
        "workload_zipf: trace of {TRACE_LEN} requests, {distinct} distinct keys; {KEYS} keys \
         written twice to Redis in {:.1?}",
        started.elapsed()
    );
    Fixture {
        trace: Arc::new(trace),
        ns,
        raw_ns,
    }
}
