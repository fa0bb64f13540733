//! One test per symptom of issue 8 (the runtime redesign): each failed on the old runtime.
//!
//! Symptoms 6 (write-through stripes) and 10 (single-flight) are covered elsewhere.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use layercache_core::{
    Backend, Clock, Entry, EntryOptions, Error, ErrorKind, Key, Loader, ManualClock, Namespace,
    Result, SystemClock, async_trait,
};
use layercache_redis::RedisBackend;
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::{TieredCache, WarmOutcome};

use crate::raw_get;
use tokio::sync::Notify;

/// A generous bound on steps that must finish: past it the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

type L2 = Arc<dyn Backend<Option<String>>>;

/// Polls `condition` until it holds, failing the test after 10 s.
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bounds a step that must finish.
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

/// Counts its calls.
#[derive(Default)]
struct Counted {
    calls: AtomicU64,
}

impl Counted {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

// --- (1) ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_no_negative_caching_loads_an_absent_key_on_every_read() {
    let server = RedisServer::start();
    let cache: TieredCache<String> = TieredCache::builder()
        .redis_url(server.url())
        .no_negative_caching()
        .build()
        .unwrap();
    let key = unique_space().namespace("s1").unwrap().key("k").unwrap();
    let source = Arc::new(Counted::default());
    for _ in 0..2 {
        let source = Arc::clone(&source);
        let value = cache
            .get_or_load(&key, move |_key| async move {
                source.calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(None::<String>)
            })
            .await
            .unwrap();
        assert_eq!(value, None);
        // Whatever the cache sent to L2 has landed before the next read.
        cache.shutdown().await.unwrap();
    }
    assert_eq!(source.calls(), 2, "2 reads of an absent key: 2 loads");
    assert_eq!(raw_get(&server.url(), &key).await, None, "nothing in L2");
}

// --- (2) ---------------------------------------------------------------------------------------

/// An L2 whose next `get`, once armed, holds the value it read until released.
#[derive(Debug)]
struct PausingGet {
    inner: RedisBackend,
    armed: AtomicBool,
    paused: Notify,
    release: Notify,
}

#[async_trait]
impl Backend<Option<String>> for PausingGet {
    async fn get(&self, key: &Key) -> Result<Option<Entry<Option<String>>>> {
        let found = Backend::<Option<String>>::get(&self.inner, key).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.paused.notify_one();
            self.release.notified().await;
        }
        found
    }

    async fn set(&self, key: &Key, entry: Entry<Option<String>>) -> Result<()> {
        self.inner.set(key, entry).await
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        Backend::<Option<String>>::delete(&self.inner, key).await
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        Backend::<Option<String>>::clear(&self.inner, namespace).await
    }

    fn name(&self) -> &'static str {
        "pausing-get"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_a_delete_wins_over_an_l2_read_in_flight() {
    let server = RedisServer::start();
    let redis = RedisBackend::connect(server.url()).await.unwrap();
    let key = unique_space().namespace("s2").unwrap().key("k").unwrap();
    // "old" is in L2, written by another process; this process's L1 does not have it.
    let old = EntryOptions::new(Duration::from_secs(60))
        .entry(Some("old".to_owned()), SystemClock.now(), Duration::ZERO)
        .unwrap();
    redis.set(&key, old).await.unwrap();
    let l2 = Arc::new(PausingGet {
        inner: redis,
        armed: AtomicBool::new(true),
        paused: Notify::new(),
        release: Notify::new(),
    });
    let cache: TieredCache<String> = TieredCache::builder()
        .l2_backend(Arc::clone(&l2) as L2)
        .build()
        .unwrap();

    let loads = Arc::new(AtomicU64::new(0));
    let read = tokio::spawn({
        let (cache, key, loads) = (cache.clone(), key.clone(), Arc::clone(&loads));
        async move {
            cache
                .get_or_load(&key, move |_key| async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Error>(Some("loaded".to_owned()))
                })
                .await
        }
    });
    // The read has "old" in hand; the delete runs to completion meanwhile.
    bounded("the L2 read", l2.paused.notified()).await;
    bounded("the delete", cache.delete(&key)).await.unwrap();
    l2.release.notify_one();
    let raced = bounded("the read", read).await.unwrap().unwrap();
    println!("the read that raced the delete returned {raced:?}");

    assert_eq!(
        cache.get(&key).await.unwrap(),
        None,
        "the delete returned before: the old value must not be back"
    );
    assert_eq!(raw_get(&server.url(), &key).await, None, "not in L2 either");
    let after = cache
        .get_or_load(&key, |_key| async {
            Ok::<_, Error>(Some("new".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(after.as_deref(), Some("new"));
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("new"));
    cache.shutdown().await.unwrap();
}

// --- (3) ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_loader_that_never_returns_is_cut_by_the_hard_timeout() {
    let clock = ManualClock::starting_now();
    let cache: TieredCache<String> = TieredCache::builder()
        .clock(clock.clone())
        .options(
            EntryOptions::new(Duration::from_secs(10))
                .with_stale_ttl(Duration::from_secs(600))
                .with_fail_safe(Duration::from_secs(30))
                .with_hard_timeout(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    let key = Key::new("held").unwrap();
    let first = cache
        .get_or_load(&key, |_key| async { Ok::<_, Error>(Some("v1".to_owned())) })
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some("v1"));

    // Stale now: the hung loader is cut and the stale value served.
    clock.advance(Duration::from_secs(20));
    let hung = bounded(
        "a read whose loader hangs",
        cache.get_or_load(&key, |_key| {
            std::future::pending::<std::result::Result<Option<String>, Error>>()
        }),
    )
    .await;
    assert_eq!(hung.unwrap().as_deref(), Some("v1"), "the stale value");

    // The key is not blocked: past the fail-safe throttle a working loader runs and lands.
    clock.advance(Duration::from_secs(31));
    let next = bounded(
        "the next read",
        cache.get_or_load(&key, |_key| async { Ok::<_, Error>(Some("v2".to_owned())) }),
    )
    .await;
    assert_eq!(next.unwrap().as_deref(), Some("v2"));

    // Without a stale value: a Timeout error, not a hang, and the key is free afterwards.
    let cold = Key::new("cold").unwrap();
    let err = bounded(
        "a cold read whose loader hangs",
        cache.get_or_load(&cold, |_key| {
            std::future::pending::<std::result::Result<Option<String>, Error>>()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let loaded = bounded(
        "a read after the timeout",
        cache.get_or_load(&cold, |_key| async {
            Ok::<_, Error>(Some("cold v1".to_owned()))
        }),
    )
    .await;
    assert_eq!(loaded.unwrap().as_deref(), Some("cold v1"));
    bounded("shutdown", cache.shutdown()).await.unwrap();
    assert_eq!(cache.in_flight(), (0, 0, 0));
}

// --- (4) ---------------------------------------------------------------------------------------

/// An L2 whose writes wait behind a gate the test opens, and which counts its write calls and the
/// keys they carry.
#[derive(Debug)]
struct CountingSet {
    inner: RedisBackend,
    open: tokio::sync::watch::Sender<bool>,
    calls: AtomicUsize,
    keys: AtomicUsize,
}

impl CountingSet {
    async fn arrive(&self, keys: usize) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.keys.fetch_add(keys, Ordering::SeqCst);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}

#[async_trait]
impl Backend<Option<String>> for CountingSet {
    async fn get(&self, key: &Key) -> Result<Option<Entry<Option<String>>>> {
        Backend::<Option<String>>::get(&self.inner, key).await
    }

    async fn set(&self, key: &Key, entry: Entry<Option<String>>) -> Result<()> {
        self.arrive(1).await;
        self.inner.set(key, entry).await
    }

    async fn set_many(&self, items: Vec<(Key, Entry<Option<String>>)>) -> Result<()> {
        self.arrive(items.len()).await;
        self.inner.set_many(items).await
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        Backend::<Option<String>>::delete(&self.inner, key).await
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        Backend::<Option<String>>::clear(&self.inner, namespace).await
    }

    fn name(&self) -> &'static str {
        "counting-set"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_l2_writes_of_different_keys_run_in_parallel() {
    const WRITES: usize = 64;
    let server = RedisServer::start();
    let (open, _) = tokio::sync::watch::channel(false);
    let l2 = Arc::new(CountingSet {
        inner: RedisBackend::connect(server.url()).await.unwrap(),
        open,
        calls: AtomicUsize::new(0),
        keys: AtomicUsize::new(0),
    });
    let cache: TieredCache<String> = TieredCache::builder()
        .l2_backend(Arc::clone(&l2) as L2)
        .build()
        .unwrap();
    let ns = unique_space().namespace("s4").unwrap();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..WRITES {
        let (cache, key) = (cache.clone(), ns.key(i).unwrap());
        writes.spawn(async move { cache.set(&key, format!("v{i}")).await });
    }
    // While L2 holds the first writes, every other write queues up: none waits for another
    // key's round trip to be queued.
    eventually("all 64 writes pending", async || {
        cache.stats().l2_pending_writes == WRITES as u64
    })
    .await;
    l2.open.send_replace(true);
    bounded("64 sets", async {
        while let Some(done) = writes.join_next().await {
            done.unwrap().unwrap();
        }
    })
    .await;
    let (calls, keys) = (
        l2.calls.load(Ordering::SeqCst),
        l2.keys.load(Ordering::SeqCst),
    );
    assert_eq!(keys, WRITES, "every key written once");
    // Serialized writes make one call per key; queued writes leave together in a few pipelines.
    assert!(calls <= 16, "{calls} L2 write calls for {WRITES} keys");
    for i in [0, 17, 63] {
        let key = ns.key(i).unwrap();
        assert!(raw_get(&server.url(), &key).await.is_some(), "{key} in L2");
    }
    cache.shutdown().await.unwrap();
}

// --- (5) ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_a_delete_while_l2_is_down_is_an_error_and_lands_once_l2_is_back() {
    // Persistence on (fsync per write), so the key is still there after the crash and restart:
    // only the retried delete can remove it.
    let server = RedisServer::builder()
        .config("appendonly", "yes")
        .config("appendfsync", "always")
        .start();
    let url = server.url();
    let cache: TieredCache<String> = TieredCache::builder()
        .redis_url(url.as_str())
        .build()
        .unwrap();
    let ns = unique_space().namespace("s5").unwrap();
    let (key, control) = (ns.key("k").unwrap(), ns.key("control").unwrap());
    cache.set(&key, "v".to_owned()).await.unwrap();
    cache.set(&control, "kept".to_owned()).await.unwrap();
    assert!(raw_get(&url, &key).await.is_some());

    server.stop();
    let err = bounded("a delete with L2 down", cache.delete(&key))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{:?}: {err}",
        err.kind()
    );
    assert_eq!(cache.get(&key).await.unwrap(), None, "gone from L1 at once");

    server.restart();
    assert!(
        raw_get(&url, &control).await.is_some(),
        "the data survived the restart (else this test proves nothing)"
    );
    // A delete leaves a tombstone in L2 (ADR 0012): the value is gone.
    eventually("the retried delete lands in L2", async || {
        raw_get(&url, &key)
            .await
            .is_none_or(|bytes| layercache_core::envelope::is_tombstone(&bytes))
    })
    .await;
    bounded("shutdown", cache.shutdown()).await.unwrap();
    assert_eq!(cache.in_flight(), (0, 0, 0));
    assert_eq!(cache.get(&key).await.unwrap(), None);
}

// --- (7) ---------------------------------------------------------------------------------------

/// A batch loader: answers `v<n> of <key>`, hangs forever while `hang`, and has no row for keys
/// ending in an odd digit while `gaps`.
#[derive(Default)]
struct Batch {
    calls: AtomicU64,
    hang: AtomicBool,
    gaps: AtomicBool,
}

#[async_trait]
impl Loader<String> for Batch {
    async fn load(&self, key: &Key) -> Result<Option<String>> {
        Ok(self.load_many(std::slice::from_ref(key)).await?.remove(0))
    }

    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Option<String>>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let gaps = self.gaps.load(Ordering::SeqCst);
        Ok(keys
            .iter()
            .map(|key| {
                let odd = key.as_str().ends_with(['1', '3', '5', '7', '9'].as_slice());
                (!(gaps && odd)).then(|| format!("v{n} of {key}"))
            })
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_get_many_honours_the_hard_timeout_and_fail_safe_and_warm_reports_absences() {
    let clock = ManualClock::starting_now();
    let cache: TieredCache<String> = TieredCache::builder()
        .clock(clock.clone())
        .options(
            EntryOptions::new(Duration::from_secs(10))
                .with_stale_ttl(Duration::from_secs(600))
                .with_fail_safe(Duration::from_secs(30))
                .with_hard_timeout(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    let source = Arc::new(Batch::default());
    let ns = unique_space().namespace("s7").unwrap();
    let keys: Vec<Key> = (0..5).map(|i| ns.key(format!("a{i}")).unwrap()).collect();

    // Nothing cached and the batch hangs: a Timeout error, not a hang.
    source.hang.store(true, Ordering::SeqCst);
    let err = bounded("a hung batch", cache.get_many(&keys, &source))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");

    // The keys are not blocked: a working batch loads them.
    source.hang.store(false, Ordering::SeqCst);
    let loaded = bounded("a batch after the timeout", cache.get_many(&keys, &source))
        .await
        .unwrap();
    let expected: Vec<Option<String>> = keys.iter().map(|k| Some(format!("v2 of {k}"))).collect();
    assert_eq!(loaded, expected);

    // Stale now, and the batch hangs: fail-safe serves the stale values.
    clock.advance(Duration::from_secs(20));
    source.hang.store(true, Ordering::SeqCst);
    let stale = bounded(
        "a hung batch with stale values",
        cache.get_many(&keys, &source),
    )
    .await
    .unwrap();
    assert_eq!(stale, expected, "the stale values");

    // Warm-up reports the rows the source does not have as absent.
    source.hang.store(false, Ordering::SeqCst);
    source.gaps.store(true, Ordering::SeqCst);
    let warm_keys: Vec<Key> = (0..10).map(|i| ns.key(format!("w{i}")).unwrap()).collect();
    let report = bounded("warm", cache.warm(&warm_keys, &source)).await;
    assert_eq!(report.items.len(), 10);
    assert_eq!((report.loaded(), report.absent()), (5, 5), "{report:?}");
    assert_eq!(report.failed().count(), 0);
    for (i, (key, outcome)) in report.items.iter().enumerate() {
        assert_eq!(key, &warm_keys[i]);
        if i % 2 == 1 {
            assert!(matches!(outcome, WarmOutcome::Absent), "{key}: {outcome:?}");
        } else {
            assert!(matches!(outcome, WarmOutcome::Loaded), "{key}: {outcome:?}");
        }
    }
}

// --- (8) ---------------------------------------------------------------------------------------

#[tokio::test]
async fn s8_fail_safe_or_a_soft_timeout_without_a_stale_ttl_is_a_config_error() {
    let ttl = Duration::from_secs(60);
    let invalid = [
        EntryOptions::new(ttl).with_fail_safe(Duration::from_secs(5)),
        EntryOptions::new(ttl).with_soft_timeout(Duration::from_millis(100)),
    ];
    for options in invalid {
        assert_eq!(
            options.validate().unwrap_err().kind(),
            ErrorKind::Config,
            "{options:?}"
        );
        let err = TieredCache::<String>::builder()
            .options(options.clone())
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{options:?}: {err}");
        // Per call too, before anything is loaded.
        let cache: TieredCache<String> = TieredCache::builder().build().unwrap();
        let loads = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&loads);
        let err = cache
            .get_or_load_with(&Key::new("k").unwrap(), &options, move |_key| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(Some("v".to_owned()))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{options:?}: {err}");
        assert_eq!(loads.load(Ordering::SeqCst), 0);
    }
    // With a stale TTL both are fine.
    let valid = EntryOptions::new(ttl)
        .with_stale_ttl(Duration::from_secs(600))
        .with_fail_safe(Duration::from_secs(5))
        .with_soft_timeout(Duration::from_millis(100));
    valid.validate().unwrap();
    TieredCache::<String>::builder()
        .options(valid)
        .build()
        .unwrap();
}

// --- (9) ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_duration_max_as_hard_timeout_and_max_wait_means_unbounded() {
    let unbounded = EntryOptions::new(Duration::from_secs(60)).with_hard_timeout(Duration::MAX);
    let cache: TieredCache<String> = TieredCache::builder()
        .options(unbounded.clone())
        .max_wait(Duration::MAX)
        .build()
        .unwrap();
    let key = Key::new("k").unwrap();
    let entered = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let loads = Arc::new(AtomicU64::new(0));

    let leader = tokio::spawn({
        let (cache, key, entered, gate, loads) = (
            cache.clone(),
            key.clone(),
            Arc::clone(&entered),
            Arc::clone(&gate),
            Arc::clone(&loads),
        );
        async move {
            cache
                .get_or_load(&key, move |_key| async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    entered.notify_one();
                    gate.notified().await;
                    Ok::<_, Error>(Some("v".to_owned()))
                })
                .await
        }
    });
    bounded("the load starts", entered.notified()).await;
    // A second caller joins the load in flight and waits for it (max_wait = Duration::MAX): one
    // poll takes it to its wait, since the key has no L2.
    let mut follower = pin!(cache.get_or_load_with(&key, &unbounded, |_key| async {
        Ok::<_, Error>(Some("second loader".to_owned()))
    }));
    let first_poll = std::future::poll_fn(|cx| Poll::Ready(follower.as_mut().poll(cx))).await;
    assert!(first_poll.is_pending(), "the follower waits for the leader");
    gate.notify_one();
    let led = bounded("the leader", leader).await.unwrap().unwrap();
    let followed = bounded("the follower", follower).await.unwrap();
    assert_eq!(led.as_deref(), Some("v"));
    assert_eq!(followed.as_deref(), Some("v"));
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // A miss with the per-call Duration::MAX completes too, and so does an unbounded shutdown.
    let other = Key::new("other").unwrap();
    let value = cache
        .get_or_load_with(&other, &unbounded, |_key| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Error>(Some("w".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("w"));
    cache.shutdown_within(Duration::MAX).await.unwrap();
}

// --- (11) --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_no_bookkeeping_is_left_after_2000_keys_once_shut_down() {
    const KEYS: usize = 2_000;
    const TASKS: usize = 64;
    let server = RedisServer::start();
    let cache: TieredCache<String> = TieredCache::builder()
        .redis_url(server.url())
        .l1_max_entries(100)
        .build()
        .unwrap();
    let ns = unique_space().namespace("s11").unwrap();
    let loads = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (cache, ns, loads) = (cache.clone(), ns.clone(), Arc::clone(&loads));
        tasks.spawn(async move {
            for i in (t..KEYS).step_by(TASKS) {
                let key = ns.key(i).unwrap();
                let loads = Arc::clone(&loads);
                let value = cache
                    .get_or_load(&key, move |key| async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Error>(Some(format!("value of {key}")))
                    })
                    .await
                    .unwrap();
                assert_eq!(value, Some(format!("value of {key}")));
            }
        });
    }
    bounded("2,000 loads", async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    })
    .await;
    assert_eq!(loads.load(Ordering::SeqCst), KEYS as u64);
    bounded("shutdown", cache.shutdown()).await.unwrap();
    assert_eq!(
        cache.in_flight(),
        (0, 0, 0),
        "flights, version-table keys, keys with pending L2 writes"
    );
}

// --- (12) --------------------------------------------------------------------------------------

/// A loader the test can hold: counts calls; while `hold`, signals `entered` and waits for `gate`.
#[derive(Default)]
struct Gated {
    calls: AtomicU64,
    hold: AtomicBool,
    entered: Notify,
    gate: Notify,
}

impl Gated {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn read_gated(cache: &TieredCache<String>, key: &Key, source: &Arc<Gated>) -> String {
    let source = Arc::clone(source);
    let read = cache.get_or_load(key, move |_key| async move {
        let n = source.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if source.hold.load(Ordering::SeqCst) {
            source.entered.notify_one();
            source.gate.notified().await;
        }
        Ok::<_, Error>(Some(format!("v{n}")))
    });
    bounded("a read", read).await.unwrap().unwrap()
}

/// Waits until `cache` has no flight left (its refresh landed).
async fn settled(cache: &TieredCache<String>) {
    eventually("the refresh lands", async || cache.in_flight().0 == 0).await;
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_eager_refresh_runs_once_per_ttl_period_even_for_pre_refresh_snapshots() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let build = || {
        TieredCache::<String>::builder()
            .redis_url(server.url())
            .clock(clock.clone())
            .options(
                EntryOptions::new(Duration::from_secs(10))
                    .with_stale_ttl(Duration::from_secs(60))
                    .with_eager_refresh(0.5),
            )
            .build()
            .unwrap()
    };
    // Two processes sharing L2.
    let (a, b) = (build(), build());
    let key = unique_space().namespace("s12").unwrap().key("k").unwrap();
    let source = Arc::new(Gated::default());

    assert_eq!(read_gated(&a, &key, &source).await, "v1");
    a.shutdown().await.unwrap();
    assert_eq!(read_gated(&b, &key, &source).await, "v1", "an L2 hit");
    assert_eq!(source.calls(), 1);

    // Past half the TTL: the next read of a starts one refresh, held in the loader.
    clock.advance(Duration::from_secs(6));
    source.hold.store(true, Ordering::SeqCst);
    assert_eq!(read_gated(&a, &key, &source).await, "v1");
    bounded("the refresh starts", source.entered.notified()).await;
    for _ in 0..20 {
        assert_eq!(read_gated(&a, &key, &source).await, "v1");
    }
    assert_eq!(source.calls(), 2, "one refresh while it runs");
    source.hold.store(false, Ordering::SeqCst);
    source.gate.notify_one();
    settled(&a).await;

    // Right after the refresh landed: no reader starts another load.
    for _ in 0..20 {
        assert_eq!(read_gated(&a, &key, &source).await, "v2");
    }
    // b still holds the pre-refresh snapshot (v1, due for a refresh): its refresh finds v2 in L2
    // and does not load again.
    assert_eq!(read_gated(&b, &key, &source).await, "v1");
    settled(&b).await;
    assert_eq!(read_gated(&b, &key, &source).await, "v2");
    for _ in 0..20 {
        read_gated(&a, &key, &source).await;
        read_gated(&b, &key, &source).await;
    }
    assert_eq!(
        source.calls(),
        2,
        "exactly one refresh in the first TTL period"
    );

    // The next period: one more refresh.
    clock.advance(Duration::from_secs(6));
    assert_eq!(read_gated(&a, &key, &source).await, "v2");
    settled(&a).await;
    assert_eq!(read_gated(&a, &key, &source).await, "v3");
    assert_eq!(read_gated(&b, &key, &source).await, "v2");
    settled(&b).await;
    for _ in 0..20 {
        assert_eq!(read_gated(&a, &key, &source).await, "v3");
        assert_eq!(read_gated(&b, &key, &source).await, "v3");
    }
    assert_eq!(source.calls(), 3, "exactly one refresh per TTL period");
}
