//! `single_flight` and `stampede`: what the stampede guards cost on a hit, and how they hold up
//! when a thousand callers miss the same key at once — each against its raw baseline.
//!
//! `single_flight` (the hit path of one key holding the 1 KiB [`Payload`]):
//! - `hit_direct`: `MokaBackend::<Payload>::get` through `Arc<dyn Backend<Payload>>`, no guards.
//! - `hit_guarded`: the same key through `TieredCache::get_or_load_from` (L1 only), with
//!   single-flight on and XFetch (`EarlyExpiry::default()`). The entry carries a 1 ms load cost and
//!   an hour's TTL, so XFetch does its arithmetic on every hit but never fires; the loader is never
//!   called (checked after the run through the cache's stats).
//!
//! `stampede` (1,000 concurrent callers — `tokio::spawn`ed tasks, all joined — on a cold key whose
//! load takes 1 ms, `tokio::time::sleep`; every iteration uses a fresh cold key, built before the
//! clock starts, so only the spawns, the calls and the joins are timed):
//! - `cold_1000`: `TieredCache::get_or_load_from`, L1 only (single-flight + XFetch).
//! - `cold_1000_moka_raw`: raw `moka::future::Cache::try_get_with`, which coalesces too.
//!
//! See `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark harness"
)]

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use benches::Payload;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use layercache_core::{Backend, Clock, EntryOptions, Key, KeySpace, SystemClock, loader_fn};
use layercache_moka::{DEFAULT_MAX_ENTRIES, MokaBackend};
use layercache_stampede::EarlyExpiry;
use layercache_tiered::TieredCache;

/// Long enough that nothing expires (and XFetch never fires) during the run.
const TTL: Duration = Duration::from_secs(3600);
/// The load time of the stampede's loader, and the load cost recorded in the hit's entry.
const LOAD: Duration = Duration::from_millis(1);
/// Concurrent callers per stampede.
const CALLERS: usize = 1_000;

/// The guarded in-process cache as the ids use it: a `TieredCache` with L1 only (single-flight,
/// XFetch on, an hour's TTL).
fn guarded() -> TieredCache<Payload> {
    TieredCache::builder()
        .l1_max_entries(DEFAULT_MAX_ENTRIES)
        .options(EntryOptions::new(TTL))
        .early_expiry(EarlyExpiry::default())
        .build()
        .expect("guarded cache")
}

fn single_flight(c: &mut Criterion) {
    let rt = benches::runtime();
    let payload = Payload::new(42);
    let key = KeySpace::new("bench")
        .expect("key space")
        .namespace("single_flight")
        .expect("namespace")
        .key("hot")
        .expect("key");

    let moka: Arc<dyn Backend<Payload>> =
        Arc::new(MokaBackend::<Payload>::with_max_entries(DEFAULT_MAX_ENTRIES).expect("moka"));
    let cache = guarded();
    // Never called: the key is present and fresh for the whole run.
    let loads = Arc::new(AtomicU64::new(0));
    let loader = {
        let loads = Arc::clone(&loads);
        Arc::new(loader_fn(move |_key: Key| {
            loads.fetch_add(1, Ordering::Relaxed);
            async { Ok(None::<Payload>) }
        }))
    };

    rt.block_on(async {
        let entry = EntryOptions::new(TTL)
            .entry(payload.clone(), SystemClock.now(), LOAD)
            .expect("entry");
        moka.set(&key, entry).await.expect("moka set");
        cache.set(&key, payload.clone()).await.expect("cache set");
        // Both ids must measure a hit of the same value.
        let hit = moka.get(&key).await.expect("moka get");
        assert_eq!(hit.map(|e| e.value).as_ref(), Some(&payload));
        let hit = cache
            .get_or_load_from(&key, &loader)
            .await
            .expect("guarded get");
        assert_eq!(hit.as_ref(), Some(&payload));
    });

    let mut group = c.benchmark_group("single_flight");
    group
        .measurement_time(benches::measurement_time(Duration::from_secs(4)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));

    group.bench_function("hit_direct", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka.get(black_box(&key)).await.unwrap()) });
    });

    group.bench_function("hit_guarded", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                cache
                    .get_or_load_from(black_box(&key), &loader)
                    .await
                    .unwrap(),
            )
        });
    });

    group.finish();

    let stats = cache.stats();
    assert_eq!(stats.loads, 0, "the loader ran on a hit: {stats:?}");
    assert_eq!(loads.load(Ordering::Relaxed), 0, "the loader ran on a hit");
    assert_eq!(stats.refreshes, 0, "XFetch fired: {stats:?}");
    assert_eq!(stats.misses, 0, "a guarded read missed: {stats:?}");
    assert!(stats.hits > 0, "{stats:?}");
}

fn stampede(c: &mut Criterion) {
    let rt = benches::runtime();
    let payload = Arc::new(Payload::new(7));
    let ns = KeySpace::new("bench")
        .expect("key space")
        .namespace("stampede")
        .expect("namespace");

    // layercache: the guarded in-process cache, its loader sleeping LOAD.
    let cache = guarded();
    let loader = {
        let payload = Arc::clone(&payload);
        Arc::new(loader_fn(move |_key: Key| {
            let payload = Arc::clone(&payload);
            async move {
                tokio::time::sleep(LOAD).await;
                Ok(Some(Payload::clone(&payload)))
            }
        }))
    };

    // Raw moka: try_get_with coalesces the callers of one key; the same loader, inline.
    let raw: moka::future::Cache<String, Payload> = moka::future::Cache::builder()
        .max_capacity(DEFAULT_MAX_ENTRIES)
        .build();
    let raw_loads = Arc::new(AtomicU64::new(0));

    let mut group = c.benchmark_group("stampede");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(30)
        .measurement_time(benches::measurement_time(Duration::from_secs(6)))
        .warm_up_time(benches::warm_up_time(Duration::from_secs(1)));

    // Each iteration takes a fresh cold key: the counters number them across warm-up and samples.
    let mut guarded_keys = 0_u64;
    group.bench_function("cold_1000", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let first = guarded_keys;
            guarded_keys += iters;
            let (cache, loader, ns) = (cache.clone(), Arc::clone(&loader), ns.clone());
            async move {
                let mut elapsed = Duration::ZERO;
                for n in first..first + iters {
                    let key = ns.key(format!("cold-{n}")).expect("key");
                    let keys = vec![key; CALLERS];
                    let start = Instant::now();
                    let tasks: Vec<_> = keys
                        .into_iter()
                        .map(|key| {
                            let (cache, loader) = (cache.clone(), Arc::clone(&loader));
                            tokio::spawn(async move { cache.get_or_load_from(&key, &loader).await })
                        })
                        .collect();
                    for task in tasks {
                        black_box(task.await.unwrap().unwrap().unwrap());
                    }
                    elapsed += start.elapsed();
                }
                elapsed
            }
        });
    });

    let mut raw_keys = 0_u64;
    group.bench_function("cold_1000_moka_raw", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let first = raw_keys;
            raw_keys += iters;
            let (raw, payload, raw_loads, ns) = (
                raw.clone(),
                Arc::clone(&payload),
                Arc::clone(&raw_loads),
                ns.clone(),
            );
            async move {
                let mut elapsed = Duration::ZERO;
                for n in first..first + iters {
                    let key = ns.key(format!("raw-{n}")).expect("key").as_str().to_owned();
                    let keys = vec![key; CALLERS];
                    let start = Instant::now();
                    let tasks: Vec<_> = keys
                        .into_iter()
                        .map(|key| {
                            let (raw, payload, raw_loads) =
                                (raw.clone(), Arc::clone(&payload), Arc::clone(&raw_loads));
                            tokio::spawn(async move {
                                raw.try_get_with(key, async move {
                                    raw_loads.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(LOAD).await;
                                    Ok::<_, Infallible>(Payload::clone(&payload))
                                })
                                .await
                            })
                        })
                        .collect();
                    for task in tasks {
                        black_box(task.await.unwrap().unwrap());
                    }
                    elapsed += start.elapsed();
                }
                elapsed
            }
        });
    });

    group.finish();

    // Coalescing is the point: one load per cold key. A caller that missed L1 just before the
    // leader stored and starts a flight just after it landed finds the value in L1 (its leader
    // reads L1 first), so it loads nothing; allow 1 % of extra loads all the same.
    let stats = cache.stats();
    let raw_loads = raw_loads.load(Ordering::Relaxed);
    eprintln!(
        "stampede: cold_1000 {} loads for {guarded_keys} cold keys ({} callers coalesced); \
         cold_1000_moka_raw {raw_loads} loads for {raw_keys} cold keys",
        stats.loads, stats.coalesced
    );
    assert!(stats.loads >= guarded_keys && stats.loads * 100 <= guarded_keys * 101);
    assert!(raw_loads >= raw_keys && raw_loads * 100 <= raw_keys * 101);
}

criterion_group!(benches, single_flight, stampede);
criterion_main!(benches);
