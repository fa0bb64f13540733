//! The cache across OS processes, on one server and on a replicated Redis Cluster (the same test
//! bodies; only the connection settings change):
//!
//! - invalidation wins: a second process with a deliberately slow loader reads and loads the keys
//!   this process writes and deletes; L2 must never hold a version older than a write or delete
//!   that completed (the conditional store and the tombstone, ADR 0012);
//! - the distributed lock: 4 processes of 250 callers each read one cold key; the loader runs
//!   exactly once.
//!
//! The tests run their own binary again as the other processes (the environment tells them so).

use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache_core::{JsonCodec, Key, envelope};
use layercache_stampede::LockOptions;
use layercache_testkit::conformance::unique_space;
use layercache_testkit::history::{History, Op};
use layercache_tiered::TieredCache;
use redis::AsyncCommands;
use tokio::sync::Mutex;

use crate::shape::{Redis, Shape};

const KEYS: u64 = 20;
const RUN: Duration = Duration::from_secs(3);
/// A generous bound on what must end: past it the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(60);
/// Set in a child process: what it does (`slow-loader` or `stampede`) and on which keys.
const CHILD_ROLE: &str = "LAYERCACHE_TEST_PROCESS_ROLE";
const CHILD_SCOPE: &str = "LAYERCACHE_TEST_PROCESS_SCOPE";

/// This test binary again, running only `test` as `role` on `redis`, with `scope` as its keys.
fn child(test: &str, role: &str, redis: &Redis, scope: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .envs(redis.env())
        .env(CHILD_ROLE, role)
        .env(CHILD_SCOPE, scope)
        .kill_on_drop(true);
    command
}

/// In a child process: its Redis, role and scope.
fn child_role() -> Option<(Redis, String, String)> {
    let role = std::env::var(CHILD_ROLE).ok()?;
    let scope = std::env::var(CHILD_SCOPE).unwrap();
    Some((Redis::from_env().unwrap(), role, scope))
}

/// Runs a child's role; `true` when this process is a child (and its test body is done).
async fn run_child() -> bool {
    let Some((redis, role, scope)) = child_role() else {
        return false;
    };
    match role.as_str() {
        "slow-loader" => slow_loader(redis, scope).await,
        "stampede" => stampede_caller(redis, scope).await,
        other => panic!("unknown child role {other}"),
    }
    true
}

/// A child's stdout and stderr, once it exited successfully.
fn succeeded(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "a child process failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn source_key(scope: &str, i: u64) -> String {
    format!("source:{scope}{i}")
}

/// The second process: reads every key through a cache without L1 (so that every miss loads),
/// with a loader that reads the source and then takes 20–80 ms.
async fn slow_loader(redis: Redis, scope: String) {
    let cache: TieredCache<u64> = TieredCache::builder()
        .name("slow-loader")
        .redis(redis.backend(Duration::from_secs(5)).await)
        .without_l1()
        .build()
        .unwrap();
    let source = redis.conn().await;
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut reads = 0;
    while started.elapsed() < RUN {
        let i = rng.u64(0..KEYS);
        let key = Key::new(format!("{scope}{i}")).unwrap();
        let (mut source, scope) = (source.clone(), scope.clone());
        let pause = Duration::from_millis(rng.u64(20..=80));
        cache
            .get_or_load(&key, move |_key: Key| async move {
                let version: Option<u64> = source.get(source_key(&scope, i)).await?;
                tokio::time::sleep(pause).await;
                Ok::<_, redis::RedisError>(Some(version.unwrap_or(0)))
            })
            .await
            .unwrap();
        reads += 1;
    }
    cache.shutdown().await.unwrap();
    let stats = cache.stats();
    println!(
        "slow loader: {reads} reads, {} loads, {} L2 stores refused",
        stats.loads, stats.l2_stores_refused
    );
}

const SLOW_LOADER: &str =
    "processes::a_slow_loader_in_a_second_process_never_overwrites_l2_with_an_older_load";
const SLOW_LOADER_CLUSTER: &str = "processes::a_slow_loader_in_a_second_process_never_overwrites_l2_with_an_older_load_on_a_cluster";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loader_in_a_second_process_never_overwrites_l2_with_an_older_load() {
    if !run_child().await {
        slow_loader_race(Shape::Server, SLOW_LOADER).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loader_in_a_second_process_never_overwrites_l2_with_an_older_load_on_a_cluster() {
    if !run_child().await {
        slow_loader_race(Shape::Cluster, SLOW_LOADER_CLUSTER).await;
    }
}

async fn slow_loader_race(shape: Shape, test: &str) {
    let redis = Redis::start(shape);
    let namespace = unique_space().namespace("processes").unwrap();
    let scope = namespace.scope().to_owned();
    let child = tokio::spawn(child(test, "slow-loader", &redis, &scope).output());

    // This process writes and deletes (cache-aside: the source, then the cache), serialized per
    // key as applications do, and watches L2 raw.
    let cache: TieredCache<u64> = TieredCache::builder()
        .name("writer")
        .redis(redis.backend(Duration::from_secs(5)).await)
        .build()
        .unwrap();
    let history = Arc::new(History::new());
    let writers: Arc<Vec<Mutex<()>>> = Arc::new((0..KEYS).map(|_| Mutex::new(())).collect());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..2u64 {
        let (cache, history, writers, scope) = (
            cache.clone(),
            Arc::clone(&history),
            Arc::clone(&writers),
            scope.clone(),
        );
        let mut source = redis.conn().await;
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            while started.elapsed() < RUN {
                let i = rng.u64(0..KEYS);
                let key = Key::new(format!("{scope}{i}")).unwrap();
                let _writer = writers[i as usize].lock().await;
                let start = history.tick();
                if rng.bool() {
                    let version: u64 = source.incr(source_key(&scope, i), 1).await.unwrap();
                    cache.set(&key, version).await.unwrap();
                    history.record(Op::write(i as u32, start, history.tick(), version));
                } else {
                    let floor: Option<u64> = source.get(source_key(&scope, i)).await.unwrap();
                    cache.delete(&key).await.unwrap();
                    history.record(Op::invalidate(
                        i as u32,
                        start,
                        history.tick(),
                        floor.unwrap_or(0),
                    ));
                }
            }
        });
    }
    for t in 0..2u64 {
        let (history, scope) = (Arc::clone(&history), scope.clone());
        let mut l2 = redis.conn().await;
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(100 + t);
            while started.elapsed() < RUN {
                let i = rng.u64(0..KEYS);
                let start = history.tick();
                let raw: Option<Vec<u8>> = l2.get(format!("{scope}{i}")).await.unwrap();
                let end = history.tick();
                // A value, or nothing (absent or a tombstone).
                let seen = raw.and_then(|bytes| {
                    envelope::decode::<_, Option<u64>>(&JsonCodec, &bytes)
                        .ok()
                        .and_then(|entry| entry.value)
                });
                // Nothing (absent, or a delete's tombstone) is what L2 rightly holds after a
                // delete: only values are judged.
                if seen.is_some() {
                    history.record(Op::read(i as u32, start, end, seen));
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let stdout = succeeded(&child.await.unwrap().unwrap());
    let line = stdout
        .lines()
        .find_map(|l| l.find("slow loader:").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("the slow loader said nothing: {stdout}"));
    eprintln!("processes ({shape:?}): {line}");
    let refused: u64 = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" L2 stores refused"))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let report = history.check();
    eprintln!(
        "processes ({shape:?}): {} operations, {} raw L2 reads, {} violation(s)",
        report.operations,
        report.reads,
        report.violations.len()
    );
    report.assert_clean();
    // The race happened: the slow loads met newer writes and deletes, and L2 refused them.
    assert!(refused > 0, "{line}");
}

const PROCESSES: u64 = 4;
const CALLERS: usize = 250;
/// How long the one load takes: the other processes meet it in flight.
const LOAD_TIME: Duration = Duration::from_millis(300);

/// A stampede child: one cache with the distributed lock; once all four processes are ready,
/// 250 concurrent callers read the cold key. The loader counts its calls in Redis.
async fn stampede_caller(redis: Redis, scope: String) {
    let key = Key::new(format!("{scope}cold")).unwrap();
    let cache: TieredCache<String> = TieredCache::builder()
        .name("stampede")
        .redis(redis.backend(Duration::from_secs(5)).await)
        // No waiter gives up on the holder (it would load): the wait is bounded all the same.
        .distributed_lock(LockOptions::default().max_wait(BOUND))
        .build()
        .unwrap();
    let mut conn = redis.conn().await;
    let ready = format!("ready:{scope}");
    let _: u64 = conn.incr(&ready, 1).await.unwrap();
    let started = Instant::now();
    while conn.get::<_, Option<u64>>(&ready).await.unwrap() < Some(PROCESSES) {
        assert!(
            started.elapsed() < BOUND,
            "the other processes never got ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (cache, key, conn, scope) =
                (cache.clone(), key.clone(), conn.clone(), scope.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, move |key: Key| async move {
                        let mut conn = conn;
                        let n: u64 = conn.incr(format!("loads:{scope}"), 1).await?;
                        // The load's work.
                        tokio::time::sleep(LOAD_TIME).await;
                        Ok::<_, redis::RedisError>(Some(format!("value of {key} from load {n}")))
                    })
                    .await
            })
        })
        .collect();
    let mut values = std::collections::BTreeSet::new();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(Some(value)) => {
                ok += 1;
                values.insert(value);
            }
            other => {
                failed += 1;
                eprintln!("a caller got {other:?}");
            }
        }
    }
    let stats = cache.stats();
    println!(
        "CHILD ok={ok} failed={failed} values={values:?} loads={} lock_waits_served={}",
        stats.loads, stats.lock_waits_served
    );
}

const STAMPEDE: &str = "processes::four_processes_of_250_callers_make_one_load";
const STAMPEDE_CLUSTER: &str =
    "processes::four_processes_of_250_callers_make_one_load_on_a_cluster";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_of_250_callers_make_one_load() {
    if !run_child().await {
        stampede(Shape::Server, STAMPEDE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_of_250_callers_make_one_load_on_a_cluster() {
    if !run_child().await {
        stampede(Shape::Cluster, STAMPEDE_CLUSTER).await;
    }
}

async fn stampede(shape: Shape, test: &str) {
    let redis = Redis::start(shape);
    let scope = unique_space()
        .namespace("stampede")
        .unwrap()
        .scope()
        .to_owned();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| tokio::spawn(child(test, "stampede", &redis, &scope).output()))
        .collect();
    let key = format!("{scope}cold");
    let value = format!("\"value of {key} from load 1\"");
    for child in children {
        let stdout = succeeded(&child.await.unwrap().unwrap());
        let line = stdout
            .lines()
            .find_map(|l| l.find("CHILD ").map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("a caller process said nothing: {stdout}"));
        eprintln!("stampede ({shape:?}): {line}");
        assert!(
            line.starts_with(&format!("CHILD ok={CALLERS} failed=0 values={{{value}}}")),
            "every caller got the one loaded value: {line}"
        );
    }
    let loads: u64 = redis
        .conn()
        .await
        .get(format!("loads:{scope}"))
        .await
        .unwrap();
    assert_eq!(
        loads, 1,
        "exactly one load across {PROCESSES} processes × {CALLERS} callers"
    );
}
