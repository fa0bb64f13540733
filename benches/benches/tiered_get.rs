//! `tiered_get` and `bulk`: reads through the two-tier `TieredCache`, against raw moka and raw
//! redis-rs in the same run.
//!
//! `tiered_get` (every value is the 1 KiB [`Payload`] behind an `Arc`, as the README recommends
//! for values costly to clone, on both sides):
//! - `moka_raw`: `moka::future::Cache<String, Arc<Payload>>::get` of one key (bounded by entry
//!   count).
//! - `l1_hit`: `TieredCache::<Arc<Payload>>::get_or_load` of one key present in L1 (a cache built with
//!   `.redis_url(..)`, the key stored with `set`); the loader is never called (checked).
//! - `l1_hit_with_tracking`: `l1_hit` on a cache whose L1 is kept coherent by Redis client
//!   tracking (`RedisTracking`, ADR 0012): the transport must cost nothing on the hit path (goal:
//!   ≤ 1.05× `l1_hit`).
//! - `redis_raw`: redis-rs GET on a `ConnectionManager` + `serde_json::from_slice` into an
//!   `Arc<Payload>`,
//!   cycling over [`L2_KEYS`] keys.
//! - `l2_hit`: `TieredCache::get_or_load` where L1 misses and L2 hits. A long-lived cache cannot be
//!   made to miss L1 on every read (there is no L1-only invalidation, and the L1 TTL cap is far
//!   longer than a sample), so the id reads [`L2_KEYS`] keys that are all in Redis, each once, from
//!   a fresh `TieredCache` (empty L1) per batch of [`L2_KEYS`] reads; only the reads are timed.
//!   Every fresh cache shares one connected `RedisBackend` (built as `.redis_url` builds it: JSON,
//!   the L2 command timeout), as the reads of one long-lived cache would, and reads one warm-up key
//!   before the clock starts. Each timed read is therefore an L1 miss, an L2 GET + decode, and the
//!   L1 fill (checked per batch through the stats).
//!
//! After the group, `l2_hit` and `redis_raw` run again **interleaved** (see [`interleaved`]):
//! a round trip on loopback drifts between two criterion ids by more than the goal's 10 %
//! (`l2_hit` ≤ 1.10 × `redis_raw`), so the rounds alternate them and the median of the
//! per-round ratios is printed (and put in `cargo xtask bench`'s summary).
//!
//! `bulk` (the first [`BULK`] of those keys, a fresh, warmed-up cache — empty L1 — per iteration,
//! only the reads timed):
//! - `get_many_100`: one `TieredCache::get_many` (one MGET for the 100 L1 misses).
//! - `get_sequential_100`: 100 sequential `TieredCache::get_or_load` calls.
//! - `mget_raw_100` (no goal, the floor under `get_many_100`): one redis-rs MGET of 100 keys
//!   holding the plain JSON of the same payloads, + `serde_json::from_slice` of each.
//!
//! The L2 keys are written beforehand through a separate `RedisBackend` as
//! `Entry<Option<Payload>>` (a `TieredCache<V>` stores `Option<V>`, so cached absences are values).
//! Redis is a real `redis-server` on loopback, started by `layercache-testkit`. See
//! `docs/benchmarks.md`.

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
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use layercache_core::{
    Backend, Clock, EntryOptions, Error, Key, KeySpace, Loader, SystemClock, loader_fn,
};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisServer;
use layercache_tiered::{DEFAULT_L1_MAX_ENTRIES, DEFAULT_L2_TIMEOUT, TieredCache};
use redis::aio::ConnectionManager;

/// Long enough that nothing expires during the run.
const TTL: Duration = Duration::from_secs(3600);
/// Keys held in L2 (and raw keys read by `redis_raw`); `l2_hit` takes a fresh cache per batch of
/// this many reads.
const L2_KEYS: usize = 1_000;
/// Keys per `bulk` read.
const BULK: usize = 100;

/// A loader that must never run (every key is cached); counts its calls.
fn never_loader(calls: &Arc<AtomicU64>) -> Arc<impl Loader<Arc<Payload>> + use<>> {
    let calls = Arc::clone(calls);
    Arc::new(loader_fn(move |key: Key| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move { Err::<Option<Arc<Payload>>, _>(Error::loader(format!("loader called for {key}"))) }
    }))
}

/// A two-tier cache with an empty L1 over the shared, connected L2, built and warmed up outside
/// the timed section: its first read (an L2 hit of the warm-up key) has run, so the timed reads
/// find the connection as a busy cache's reads would, not idle since the previous batch.
async fn fresh_cache(fx: &Fixture) -> TieredCache<Arc<Payload>> {
    let cache = TieredCache::builder()
        .options(EntryOptions::new(TTL))
        .redis(fx.l2.clone())
        .build()
        .expect("tiered cache");
    let warm = cache.get(&fx.warm_key).await.expect("warm-up read");
    assert!(warm.is_some(), "the warm-up key is in L2");
    cache
}

/// `redis_raw`'s read: a GET of `key` on a handle of the shared connection, and the JSON decoded.
async fn raw_read(manager: &ConnectionManager, key: &str) -> Arc<Payload> {
    // What a user of redis-rs does: a handle on the shared multiplexed connection.
    let mut conn = manager.clone();
    let bytes: Option<Vec<u8>> = redis::cmd("GET")
        .arg(black_box(key))
        .query_async(&mut conn)
        .await
        .unwrap();
    black_box(Arc::new(serde_json::from_slice(&bytes.unwrap()).unwrap()))
}

/// `l2_hit`'s work: the first `batch` L2 keys read by a fresh cache (each an L1 miss, an L2 hit
/// and the L1 fill, checked); only the reads are timed.
async fn l2_batch(
    fx: &Fixture,
    loader: &Arc<impl Loader<Arc<Payload>> + 'static>,
    batch: usize,
) -> Duration {
    let cache = fresh_cache(fx).await;
    let start = Instant::now();
    for key in &fx.l2_keys[..batch] {
        black_box(cache.get_or_load_from(key, loader).await.unwrap().unwrap());
    }
    let elapsed = start.elapsed();
    let stats = cache.stats();
    assert_eq!(stats.l1_hits, 0, "{stats:?}");
    assert_eq!(stats.l2_hits, batch as u64 + 1, "{stats:?}");
    elapsed
}

/// Rounds of the interleaved check (fewer when it runs out of time).
const ROUNDS: usize = 15;
/// How long the interleaved check runs at most (4 s in quick mode).
const INTERLEAVED_FOR: Duration = Duration::from_secs(15);

/// `l2_hit` and `redis_raw` again, in rounds that alternate them (who goes first alternates too),
/// each side reading [`L2_KEYS`] keys per round as its criterion id does: criterion runs the ids
/// one after the other, and a Redis round trip on loopback drifts between them by more than the
/// goal's 10 %. Prints the medians per read and the median of the per-round ratios.
async fn interleaved(fx: &Fixture, loader: &Arc<impl Loader<Arc<Payload>> + 'static>) {
    let run_for = if benches::quick() {
        Duration::from_secs(4)
    } else {
        INTERLEAVED_FOR
    };
    let started = Instant::now();
    let per_read = |d: Duration| d.as_secs_f64() * 1e6 / L2_KEYS as f64;
    let (mut raw, mut l2, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    while raw.len() < ROUNDS && (raw.len() < 3 || started.elapsed() < run_for) {
        let raw_side = async {
            let start = Instant::now();
            for key in &fx.raw_keys {
                raw_read(&fx.manager, key).await;
            }
            per_read(start.elapsed())
        };
        let (r, t) = if raw.len() % 2 == 0 {
            let r = raw_side.await;
            (r, per_read(l2_batch(fx, loader, L2_KEYS).await))
        } else {
            let t = per_read(l2_batch(fx, loader, L2_KEYS).await);
            (raw_side.await, t)
        };
        raw.push(r);
        l2.push(t);
        ratios.push(t / r);
    }
    let (low, high) = ratios
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    eprintln!(
        "tiered_get interleaved ({} rounds of {L2_KEYS} reads per side, who goes first \
         alternating; medians):",
        raw.len()
    );
    eprintln!("  redis_raw  {:.1} µs per read", benches::median(raw));
    eprintln!("  l2_hit     {:.1} µs per read", benches::median(l2));
    eprintln!(
        "  ratio l2_hit / redis_raw {:.3} (rounds {low:.2}–{high:.2}; goal ≤ 1.10)",
        benches::median(ratios)
    );
}

struct Fixture {
    /// Keys present in L2 (as envelopes of `Option<Payload>`), absent from every L1.
    l2_keys: Vec<Key>,
    /// One more key in L2, read (untimed) by every fresh cache before its timed reads.
    warm_key: Key,
    /// Keys holding the plain JSON of a `Payload`, for `redis_raw`.
    raw_keys: Vec<String>,
    /// The L2 every fresh cache shares.
    l2: RedisBackend,
    /// redis-rs, raw.
    manager: ConnectionManager,
}

fn fixture(rt: &tokio::runtime::Runtime, server: &RedisServer) -> Fixture {
    let ns = KeySpace::new("bench")
        .expect("key space")
        .namespace("tiered_get")
        .expect("namespace");
    let l2_keys: Vec<Key> = (0..L2_KEYS)
        .map(|i| ns.key(format!("l2-{i}")).expect("key"))
        .collect();
    let warm_key = ns.key("warm").expect("key");
    let raw_keys: Vec<String> = (0..L2_KEYS)
        .map(|i| ns.key(format!("raw-{i}")).expect("key").as_str().to_owned())
        .collect();
    rt.block_on(async {
        // The values, written by a separate backend, exactly as a TieredCache<Payload> stores them.
        let writer = RedisBackend::connect(server.url())
            .await
            .expect("redis backend");
        let now = SystemClock.now();
        let items = l2_keys
            .iter()
            .chain([&warm_key])
            .enumerate()
            .map(|(i, key)| {
                let entry = EntryOptions::new(TTL)
                    .entry(Some(Payload::new(i as u64)), now, Duration::ZERO)
                    .expect("entry");
                (key.clone(), entry)
            })
            .collect();
        Backend::<Option<Payload>>::set_many(&writer, items)
            .await
            .expect("l2 set_many");

        let client = redis::Client::open(server.url()).expect("redis url");
        let mut manager = ConnectionManager::new(client)
            .await
            .expect("redis connection");
        benches::set_raw_payloads(&mut manager, &raw_keys, None, raw_keys.len())
            .await
            .expect("raw set");

        let l2 = RedisBackend::builder(server.url())
            .command_timeout(DEFAULT_L2_TIMEOUT)
            .connect()
            .await
            .expect("l2 backend");
        Fixture {
            l2_keys,
            warm_key,
            raw_keys,
            l2,
            manager,
        }
    })
}

fn tiered_get(c: &mut Criterion) {
    let rt = benches::runtime();
    // Kept alive until the end of the groups; dropping it stops the server.
    let server = RedisServer::start();
    let fx = fixture(&rt, &server);
    let calls = Arc::new(AtomicU64::new(0));
    let loader = never_loader(&calls);

    let payload = Arc::new(Payload::new(42));
    let ns = KeySpace::new("bench")
        .expect("key space")
        .namespace("tiered_get")
        .expect("namespace");
    let moka_key = ns.key("moka_raw").expect("key").as_str().to_owned();
    let moka_raw: moka::future::Cache<String, Arc<Payload>> = moka::future::Cache::builder()
        .max_capacity(DEFAULT_L1_MAX_ENTRIES)
        .build();
    let l1_key = ns.key("l1_hit").expect("key");
    // `redis_url` connects lazily, which spawns onto the runtime: build inside it.
    let runtime_context = rt.enter();
    let l1_cache: TieredCache<Arc<Payload>> = TieredCache::builder()
        .options(EntryOptions::new(TTL))
        .redis_url(server.url())
        .build()
        .expect("tiered cache");
    // A key of its own: another cache's write of `l1_key` would reach this one's L1.
    let tracked_key = ns.key("l1_hit_tracked").expect("key");
    let tracking = layercache_redis::RedisTracking::builder(server.url())
        .build()
        .expect("client tracking");
    let tracked_cache: TieredCache<Arc<Payload>> = TieredCache::builder()
        .options(EntryOptions::new(TTL))
        .redis_url(server.url())
        .invalidation(tracking.clone())
        .build()
        .expect("tiered cache with tracking");
    drop(runtime_context);

    rt.block_on(async {
        assert!(tracking.wait_connected(Duration::from_secs(10)).await);
        tracked_cache
            .set(&tracked_key, payload.clone())
            .await
            .expect("tiered set");
        // Tracking echoes the cache's own write (it drops the key from L1 once): wait for it,
        // then read the key back into L1.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tracking.stats().keys_invalidated == 0 {
            assert!(
                Instant::now() < deadline,
                "tracking never reported the write"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A read that misses L1 (a slow L2 read on a busy machine falls back to the loader,
        // whose store tracking echoes once more) refills it; within a few reads one must hit.
        let mut l1_hit = false;
        for _ in 0..100 {
            let before = tracked_cache.stats().l1_hits;
            let read = tracked_cache.get_or_load_from(&tracked_key, &loader).await;
            assert_eq!(read.expect("read").as_ref(), Some(&payload));
            if tracked_cache.stats().l1_hits == before + 1 {
                l1_hit = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(l1_hit, "the tracked key never became an L1 hit");
        moka_raw.insert(moka_key.clone(), payload.clone()).await;
        l1_cache
            .set(&l1_key, payload.clone())
            .await
            .expect("tiered set");
        // Every id must read the same kind of value: check one read of each.
        assert_eq!(moka_raw.get(&moka_key).await.as_ref(), Some(&payload));
        let hit = l1_cache
            .get_or_load_from(&l1_key, &loader)
            .await
            .expect("l1 hit");
        assert_eq!(hit.as_ref(), Some(&payload));
        assert_eq!(l1_cache.stats().l1_hits, 1);
        let cache = fresh_cache(&fx).await;
        let hit = cache
            .get_or_load_from(&fx.l2_keys[3], &loader)
            .await
            .expect("l2 hit");
        assert_eq!(hit.as_deref(), Some(&Payload::new(3)));
        let stats = cache.stats();
        assert_eq!((stats.l1_hits, stats.l2_hits), (0, 2), "{stats:?}");
    });

    let mut group = c.benchmark_group("tiered_get");
    group
        .measurement_time(benches::measurement_time(Duration::from_secs(5)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));

    group.bench_function("moka_raw", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka_raw.get(black_box(moka_key.as_str())).await) });
    });

    group.bench_function("l1_hit", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                l1_cache
                    .get_or_load_from(black_box(&l1_key), &loader)
                    .await
                    .unwrap(),
            )
        });
    });

    group.bench_function("l1_hit_with_tracking", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                tracked_cache
                    .get_or_load_from(black_box(&tracked_key), &loader)
                    .await
                    .unwrap(),
            )
        });
    });

    let mut next_raw = 0_usize;
    group.bench_function("redis_raw", |b| {
        b.to_async(&rt).iter(|| {
            // What a user of redis-rs does: a handle on the shared multiplexed connection.
            let key = fx.raw_keys[next_raw % L2_KEYS].as_str();
            next_raw += 1;
            raw_read(&fx.manager, key)
        });
    });

    group.bench_function("l2_hit", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (fx, loader) = (&fx, &loader);
            async move {
                let mut elapsed = Duration::ZERO;
                let mut done = 0_u64;
                while done < iters {
                    let batch = (iters - done).min(L2_KEYS as u64) as usize;
                    elapsed += l2_batch(fx, loader, batch).await;
                    done += batch as u64;
                }
                elapsed
            }
        });
    });

    group.finish();

    if benches::interleaved_wanted() {
        rt.block_on(interleaved(&fx, &loader));
    }

    let mut group = c.benchmark_group("bulk");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(benches::measurement_time(Duration::from_secs(5)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));
    let bulk_keys = &fx.l2_keys[..BULK];

    group.bench_function("get_many_100", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (fx, loader) = (&fx, &loader);
            async move {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let cache = fresh_cache(fx).await;
                    let start = Instant::now();
                    let values = black_box(cache.get_many(bulk_keys, loader).await.unwrap());
                    elapsed += start.elapsed();
                    assert!(values.iter().all(Option::is_some));
                    let stats = cache.stats();
                    assert_eq!(stats.l2_hits, BULK as u64 + 1, "{stats:?}");
                }
                elapsed
            }
        });
    });

    // Not a goal: the floor under get_many_100, raw redis-rs on the same 100 values.
    let bulk_raw_keys = &fx.raw_keys[..BULK];
    group.bench_function("mget_raw_100", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = fx.manager.clone();
            async move {
                let mut mget = redis::cmd("MGET");
                for key in bulk_raw_keys {
                    mget.arg(key.as_str());
                }
                let values: Vec<Option<Vec<u8>>> = mget.query_async(&mut conn).await.unwrap();
                let values: Vec<Arc<Payload>> = values
                    .into_iter()
                    .map(|b| Arc::new(serde_json::from_slice(&b.unwrap()).unwrap()))
                    .collect();
                black_box(values)
            }
        });
    });

    group.bench_function("get_sequential_100", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (fx, loader) = (&fx, &loader);
            async move {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let cache = fresh_cache(fx).await;
                    let start = Instant::now();
                    for key in bulk_keys {
                        black_box(cache.get_or_load_from(key, loader).await.unwrap().unwrap());
                    }
                    elapsed += start.elapsed();
                    let stats = cache.stats();
                    assert_eq!(stats.l2_hits, BULK as u64 + 1, "{stats:?}");
                }
                elapsed
            }
        });
    });

    group.finish();

    assert_eq!(calls.load(Ordering::Relaxed), 0, "the loader ran");
    assert_eq!(l1_cache.stats().loads, 0, "{:?}", l1_cache.stats());
    drop(server);
}

criterion_group!(benches, tiered_get);
criterion_main!(benches);
