//! Linearizability in one process: concurrent loads, writes, deletes and clears of a few hot
//! keys, against real Redis and a versioned source, recorded and checked with the test kit's
//! history checker.
//!
//! Each key of the source holds a version that only grows. A load reads the source's version at
//! its start and then takes a while (so by the time it stores, a write may have superseded what it
//! read: the version table must drop that store). The history checker then asserts that no read
//! returned a version older than a write or invalidation that completed before the read started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use layercache_core::{Key, Namespace};
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_testkit::history::{History, Op};
use layercache_tiered::TieredCache;
use tokio::sync::RwLock;

const TASKS: usize = 32;
const KEYS: usize = 100;
/// Operations in all, over all tasks.
#[cfg(not(debug_assertions))]
const OPERATIONS: usize = 100_000;
#[cfg(debug_assertions)]
const OPERATIONS: usize = 20_000;
/// How long a load takes, after it read the source: a range in milliseconds.
#[cfg(not(debug_assertions))]
const LOAD_MS: (u64, u64) = (10, 50);
#[cfg(debug_assertions)]
const LOAD_MS: (u64, u64) = (1, 5);

/// A small seeded PRNG (SplitMix64): the test needs no randomness crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The source of truth: per key, a version that a write bumps under the key's lock.
struct VersionedSource {
    versions: Vec<Mutex<u64>>,
}

impl VersionedSource {
    fn new(keys: usize) -> Self {
        VersionedSource {
            versions: (0..keys).map(|_| Mutex::new(0)).collect(),
        }
    }

    /// Writes the source: the key's next version.
    fn bump(&self, key: usize) -> u64 {
        let mut version = self.versions[key].lock().unwrap();
        *version += 1;
        *version
    }

    /// The key's current version.
    fn current(&self, key: usize) -> u64 {
        *self.versions[key].lock().unwrap()
    }
}

/// What the tasks share.
struct World {
    /// The instances: each operation runs on one picked at random.
    caches: Vec<TieredCache<u64>>,
    source: Arc<VersionedSource>,
    keys: Vec<Key>,
    namespace: Namespace,
    history: History,
    /// Per key: a cache-aside writer holds it exclusively across its source write and its cache
    /// set; write-through writers hold it shared. A cache-aside `set` cannot order itself against
    /// another writer of the key (`A` writes v1, `B` writes v2 and sets v2, then `A` sets v1: the
    /// cache holds v1 for good). That is cache-aside's own race, which no cache can fix, so
    /// applications serialize such writers (a row lock); write-through writers still race each
    /// other freely, which is what `set_after` resolves.
    writers: Vec<RwLock<()>>,
    loads: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct Counts {
    reads: u64,
    write_throughs: u64,
    write_through_raced: u64,
    sets: u64,
    deletes: u64,
    clears: u64,
}

async fn run_task(world: Arc<World>, seed: u64, operations: usize) -> Counts {
    let mut rng = Rng(seed);
    let mut counts = Counts::default();
    let h = &world.history;
    // Across instances, write-through writers of a key race at the source the way cache-aside
    // writers do (one instance's claim cannot see another's): serialize them like those.
    let shared_write_through = world.caches.len() == 1;
    let fail = |what: &str, error: layercache_core::Error| {
        // The first few are printed: a failed call is left out of the history, so it must be rare.
        if world.failures.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("linearizable: a {what} failed: {error:?}");
        }
    };
    for _ in 0..operations {
        let index = rng.below(KEYS as u64) as usize;
        let id = index as u32;
        let key = &world.keys[index];
        let cache = &world.caches[rng.below(world.caches.len() as u64) as usize];
        match rng.below(100) {
            // ~60%: a read through the cache, loading from the source on a miss.
            0..60 => {
                let source = Arc::clone(&world.source);
                let pause = Duration::from_millis(LOAD_MS.0 + rng.below(LOAD_MS.1 - LOAD_MS.0 + 1));
                let world_for_load = Arc::clone(&world);
                let start = h.tick();
                let result = cache
                    .get_or_load(key, move |_key: Key| async move {
                        world_for_load.loads.fetch_add(1, Ordering::Relaxed);
                        // Read the source first, then take a while: by the time this load stores,
                        // a write may have made its value outdated.
                        let version = source.current(index);
                        tokio::time::sleep(pause).await;
                        Ok::<_, layercache_core::Error>(Some(version))
                    })
                    .await;
                let end = h.tick();
                match result {
                    Ok(seen) => {
                        h.record(Op::read(id, start, end, seen));
                        counts.reads += 1;
                    }
                    Err(error) => fail("read", error),
                }
            }
            // ~15%: a write-through, by hand: claim the key, write the source, write the cache.
            60..75 => {
                let (_shared, _exclusive) = if shared_write_through {
                    (Some(world.writers[index].read().await), None)
                } else {
                    (None, Some(world.writers[index].write().await))
                };
                let start = h.tick();
                let intent = cache.begin_write(key);
                let version = world.source.bump(index);
                let result = cache.set_after(intent, Some(version)).await;
                let end = h.tick();
                match result {
                    Ok(stored) => {
                        h.record(Op::write(id, start, end, version));
                        counts.write_throughs += 1;
                        counts.write_through_raced += u64::from(!stored);
                    }
                    Err(error) => fail("write-through", error),
                }
            }
            // ~10%: a cache-aside write: the source, then the cache.
            75..85 => {
                let _writer = world.writers[index].write().await;
                let start = h.tick();
                let version = world.source.bump(index);
                let result = cache.set(key, version).await;
                let end = h.tick();
                match result {
                    Ok(()) => {
                        h.record(Op::write(id, start, end, version));
                        counts.sets += 1;
                    }
                    Err(error) => fail("set", error),
                }
            }
            // ~10%: a delete; no read that starts after it may see less than the source held
            // when it began.
            85..95 => {
                let start = h.tick();
                let floor = world.source.current(index);
                let result = cache.delete(key).await;
                let end = h.tick();
                match result {
                    Ok(_) => {
                        h.record(Op::invalidate(id, start, end, floor));
                        counts.deletes += 1;
                    }
                    Err(error) => fail("delete", error),
                }
            }
            // ~5%: a clear of the whole namespace: an invalidation of every key.
            _ => {
                let start = h.tick();
                let floors: Vec<u64> = (0..KEYS).map(|k| world.source.current(k)).collect();
                let result = cache.clear(&world.namespace).await;
                let end = h.tick();
                match result {
                    Ok(_) => {
                        for (k, floor) in floors.into_iter().enumerate() {
                            h.record(Op::invalidate(k as u32, start, end, floor));
                        }
                        counts.clears += 1;
                    }
                    Err(error) => fail("clear", error),
                }
            }
        }
    }
    counts
}

/// The delay bound the multi-instance runs hold a transport to: a read that starts this long after
/// a write or invalidation on another instance returned must see it. (Measured p99 on loopback
/// is a few milliseconds; the bound leaves room for a loaded 2-core CI machine.)
const LAG: Duration = Duration::from_millis(250);

fn builder(url: &str, name: &str) -> layercache_tiered::TieredCacheBuilder<u64> {
    TieredCache::builder()
        .name(name)
        .redis_url(url)
        // The history leaves failed calls out, so none may fail: a busy CI machine must not turn
        // a slow round trip into a failed write (faults have tests of their own).
        .l2_timeout(Duration::from_secs(5))
}

/// Runs the workload over `caches` and checks the history (with `lag` between instances).
async fn run_and_check(what: &str, caches: Vec<TieredCache<u64>>, history: History, lag: Duration) {
    let namespace = unique_space().namespace("linearizable").unwrap();
    let keys = (0..KEYS).map(|i| namespace.key(i).unwrap()).collect();
    let world = Arc::new(World {
        caches,
        source: Arc::new(VersionedSource::new(KEYS)),
        keys,
        namespace,
        history,
        writers: (0..KEYS).map(|_| RwLock::new(())).collect(),
        loads: AtomicU64::new(0),
        failures: AtomicU64::new(0),
    });

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let world = Arc::clone(&world);
            tokio::spawn(run_task(world, 0x5EED_0000 + t as u64, OPERATIONS / TASKS))
        })
        .collect();
    let mut counts = Counts::default();
    for task in tasks {
        let c = task.await.unwrap();
        counts.reads += c.reads;
        counts.write_throughs += c.write_throughs;
        counts.write_through_raced += c.write_through_raced;
        counts.sets += c.sets;
        counts.deletes += c.deletes;
        counts.clears += c.clears;
    }
    let ran = started.elapsed();

    let report = world.history.check_with_lag(lag);
    let failures = world.failures.load(Ordering::Relaxed);
    eprintln!(
        "linearizable ({what}, {} instance(s), lag {lag:?}): {} operations in {ran:?} ({} reads, \
         {} loads, {} write-throughs of which {} raced, {} sets, {} deletes, {} clears, \
         {failures} failed calls); history of {} operations ({} reads) checked in {:?}: {} \
         violation(s)",
        world.caches.len(),
        OPERATIONS / TASKS * TASKS,
        counts.reads,
        world.loads.load(Ordering::Relaxed),
        counts.write_throughs,
        counts.write_through_raced,
        counts.sets,
        counts.deletes,
        counts.clears,
        report.operations,
        report.reads,
        report.elapsed,
        report.violations.len(),
    );
    for cache in &world.caches {
        let s = cache.stats();
        eprintln!(
            "  {}: {} invalidations sent, {} received, {} L2 stores refused",
            cache.name(),
            s.invalidations_sent,
            s.invalidations_received,
            s.l2_stores_refused
        );
    }
    report.assert_clean();
    // Redis runs locally and nothing fails it: every call succeeds, so the history is complete.
    assert_eq!(failures, 0, "calls failed");
    assert_eq!(report.reads as u64, counts.reads);
    // The race the version table must win did happen: loads ran while the keys were written.
    assert!(world.loads.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_writes_deletes_and_clears_never_serve_an_outdated_version() {
    let server = RedisServer::start();
    let cache = builder(&server.url(), "linearizable").build().unwrap();
    run_and_check("one process", vec![cache], History::new(), Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_the_memory_transport_serve_nothing_older_than_the_lag() {
    let server = RedisServer::start();
    let transport = layercache_core::MemoryTransport::new();
    let caches = ["a", "b", "c"]
        .iter()
        .map(|name| {
            builder(&server.url(), name)
                .invalidation(transport.clone())
                .build()
                .unwrap()
        })
        .collect();
    run_and_check("memory transport", caches, History::timed(), LAG).await;
}

/// Three instances over the Redis at `url`, each with a transport of its own from `make`,
/// connected before this returns.
async fn three_instances<T>(
    url: &str,
    make: impl Fn() -> T,
    connected: impl AsyncFn(&T) -> bool,
) -> Vec<TieredCache<u64>>
where
    T: layercache_core::InvalidationTransport + Clone + 'static,
{
    let mut caches = Vec::new();
    for name in ["a", "b", "c"] {
        let transport = make();
        caches.push(
            builder(url, name)
                .invalidation(transport.clone())
                .build()
                .unwrap(),
        );
        assert!(connected(&transport).await, "the transport connected");
    }
    caches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_the_pubsub_backplane_serve_nothing_older_than_the_lag() {
    use layercache_redis::RedisPubSub;
    let server = RedisServer::start();
    let url = server.url();
    let make = || {
        RedisPubSub::builder(&url)
            .channel("linearizable")
            .build()
            .unwrap()
    };
    let connected = async |t: &RedisPubSub| t.wait_connected(Duration::from_secs(10)).await;
    let caches = three_instances(&url, make, connected).await;
    run_and_check("pub/sub backplane", caches, History::timed(), LAG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_client_tracking_serve_nothing_older_than_the_lag() {
    use layercache_redis::RedisTracking;
    let server = RedisServer::start();
    let url = server.url();
    let make = || RedisTracking::builder(&url).build().unwrap();
    let connected = async |t: &RedisTracking| t.wait_connected(Duration::from_secs(10)).await;
    let caches = three_instances(&url, make, connected).await;
    run_and_check("client tracking", caches, History::timed(), LAG).await;
}
