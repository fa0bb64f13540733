//! Invalidation wins across OS processes: a second process with a deliberately slow loader reads
//! and loads the keys this process writes and deletes; L2 must never hold a version older than a
//! write or delete that completed (the conditional store and the tombstone, ADR 0012).
//!
//! The test runs its own binary again as the second process (the environment tells it so).

use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache_core::{JsonCodec, Key, envelope};
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_testkit::history::{History, Op};
use layercache_tiered::TieredCache;
use tokio::sync::Mutex;

use crate::redis_conn;

const KEYS: u64 = 20;
const RUN: Duration = Duration::from_secs(3);
/// Set in the second process: the Redis URL, the key scope, and how long to run.
const CHILD_URL: &str = "LAYERCACHE_TEST_SLOW_LOADER_URL";
const CHILD_SCOPE: &str = "LAYERCACHE_TEST_SLOW_LOADER_SCOPE";
const TEST_NAME: &str =
    "processes::a_slow_loader_in_a_second_process_never_overwrites_l2_with_an_older_load";

fn source_key(scope: &str, i: u64) -> String {
    format!("source:{scope}{i}")
}

/// The second process: reads every key through a cache without L1 (so that every miss loads),
/// with a loader that reads the source and then takes 20–80 ms.
async fn slow_loader(url: String, scope: String) {
    let cache: TieredCache<u64> = TieredCache::builder()
        .name("slow-loader")
        .redis_url(url.as_str())
        .without_l1()
        .l2_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let source = redis_conn(&url).await;
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
                let version: Option<u64> = redis::cmd("GET")
                    .arg(source_key(&scope, i))
                    .query_async(&mut source)
                    .await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loader_in_a_second_process_never_overwrites_l2_with_an_older_load() {
    if let (Ok(url), Ok(scope)) = (std::env::var(CHILD_URL), std::env::var(CHILD_SCOPE)) {
        return slow_loader(url, scope).await;
    }
    let server = RedisServer::start();
    let url = server.url();
    let namespace = unique_space().namespace("processes").unwrap();
    let scope = namespace.scope().to_owned();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_URL, &url)
        .env(CHILD_SCOPE, &scope)
        .kill_on_drop(true)
        .output();
    let child = tokio::spawn(child);

    // This process writes and deletes (cache-aside: the source, then the cache), serialized per
    // key as applications do, and watches L2 raw.
    let cache: TieredCache<u64> = TieredCache::builder()
        .name("writer")
        .redis_url(url.as_str())
        .l2_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let history = Arc::new(History::new());
    let writers: Arc<Vec<Mutex<()>>> = Arc::new((0..KEYS).map(|_| Mutex::new(())).collect());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..2u64 {
        let (cache, history, writers, url, scope) = (
            cache.clone(),
            Arc::clone(&history),
            Arc::clone(&writers),
            url.clone(),
            scope.clone(),
        );
        tasks.spawn(async move {
            let mut source = redis_conn(&url).await;
            let mut rng = fastrand::Rng::with_seed(t);
            while started.elapsed() < RUN {
                let i = rng.u64(0..KEYS);
                let key = Key::new(format!("{scope}{i}")).unwrap();
                let _writer = writers[i as usize].lock().await;
                let start = history.tick();
                if rng.bool() {
                    let version: u64 = redis::cmd("INCR")
                        .arg(source_key(&scope, i))
                        .query_async(&mut source)
                        .await
                        .unwrap();
                    cache.set(&key, version).await.unwrap();
                    history.record(Op::write(i as u32, start, history.tick(), version));
                } else {
                    let floor: Option<u64> = redis::cmd("GET")
                        .arg(source_key(&scope, i))
                        .query_async(&mut source)
                        .await
                        .unwrap();
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
        let (history, url, scope) = (Arc::clone(&history), url.clone(), scope.clone());
        tasks.spawn(async move {
            let mut l2 = redis_conn(&url).await;
            let mut rng = fastrand::Rng::with_seed(100 + t);
            while started.elapsed() < RUN {
                let i = rng.u64(0..KEYS);
                let start = history.tick();
                let raw: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(format!("{scope}{i}"))
                    .query_async(&mut l2)
                    .await
                    .unwrap();
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
    let output = child.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the slow loader failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("slow loader:").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("the slow loader said nothing: {stdout}"));
    eprintln!("processes: {line}");
    let refused: u64 = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" L2 stores refused"))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let report = history.check();
    eprintln!(
        "processes: {} operations, {} raw L2 reads, {} violation(s)",
        report.operations,
        report.reads,
        report.violations.len()
    );
    report.assert_clean();
    // The race happened: the slow loads met newer writes and deletes, and L2 refused them.
    assert!(refused > 0, "{line}");
}
