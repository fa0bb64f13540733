//! The distributed lock, against real Redis: the store's primitives, release on every path,
//! several OS processes on one key, and a holder killed mid-load.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use layercache_core::{
    Backend, EntryOptions, ErrorKind, Key, Loader, LockStore, Result, async_trait,
};
use layercache_redis::{DEFAULT_LOCK_PREFIX, RedisBackend, RedisLockStore};
use layercache_stampede::{DistributedLock, GuardedCache, LockOptions, OnLockTimeout};
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use redis::AsyncCommands;

const CHILD_ROLE: &str = "LAYERCACHE_STAMPEDE_CHILD_ROLE";
const CHILD_URL: &str = "LAYERCACHE_STAMPEDE_CHILD_URL";
const CHILD_KEY: &str = "LAYERCACHE_STAMPEDE_CHILD_KEY";

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn redis_backend(url: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .command_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap()
}

fn guarded(backend: &RedisBackend, options: LockOptions) -> GuardedCache<String> {
    let lock = DistributedLock::new(backend.lock_store(), options).unwrap();
    GuardedCache::builder(Arc::new(backend.clone()) as Arc<dyn Backend<String>>)
        .options(EntryOptions::new(Duration::from_secs(60)))
        .lock(lock)
        .build()
        .unwrap()
}

async fn lock_exists(url: &str, key: &Key) -> bool {
    raw(url)
        .await
        .exists(format!("{DEFAULT_LOCK_PREFIX}{key}"))
        .await
        .unwrap()
}

async fn eventually_unlocked(url: &str, key: &Key) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock_exists(url, key).await {
        assert!(
            Instant::now() < deadline,
            "the lock of {key} was never released"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn the_store_takes_extends_and_releases_by_token_only() {
    let server = RedisServer::start();
    let backend = redis_backend(&server.url()).await;
    let store: RedisLockStore = backend.lock_store();
    let key = Key::new("resource").unwrap();
    let lease = Duration::from_secs(5);
    assert!(store.try_acquire(&key, "a", lease).await.unwrap());
    assert!(!store.try_acquire(&key, "b", lease).await.unwrap());
    assert!(!store.extend(&key, "b", lease).await.unwrap());
    assert!(
        store
            .extend(&key, "a", Duration::from_secs(30))
            .await
            .unwrap()
    );
    let pttl: i64 = raw(&server.url())
        .await
        .pttl(format!("{DEFAULT_LOCK_PREFIX}resource"))
        .await
        .unwrap();
    assert!(pttl > 25_000, "extended lease, PTTL {pttl}");
    assert!(!store.release(&key, "b").await.unwrap());
    // The scripts are loaded again after SCRIPT FLUSH (EVALSHA answers NOSCRIPT).
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw(&server.url()).await)
        .await
        .unwrap();
    assert!(store.release(&key, "a").await.unwrap());
    assert!(!store.release(&key, "a").await.unwrap());
    assert!(store.try_acquire(&key, "b", lease).await.unwrap());
}

struct FailingLoader;

#[async_trait]
impl Loader<String> for FailingLoader {
    async fn load(&self, _key: &Key) -> Result<Option<String>> {
        Err(layercache_core::Error::loader("source down"))
    }
}

struct PanickingLoader;

#[async_trait]
impl Loader<String> for PanickingLoader {
    async fn load(&self, _key: &Key) -> Result<Option<String>> {
        panic!("loader bug")
    }
}

struct PendingLoader(tokio::sync::Notify);

#[async_trait]
impl Loader<String> for PendingLoader {
    async fn load(&self, _key: &Key) -> Result<Option<String>> {
        self.0.notify_one();
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_released_on_error_panic_and_cancellation() {
    let server = RedisServer::start();
    let url = server.url();
    let backend = redis_backend(&url).await;
    let cache = guarded(&backend, LockOptions::default());
    let ns = unique_space().namespace("release").unwrap();

    let key = ns.key("error").unwrap();
    let err = cache
        .get_or_load(&key, &Arc::new(FailingLoader))
        .await
        .unwrap_err();
    assert_eq!(err.message(), "source down");
    assert!(!lock_exists(&url, &key).await, "released after an error");

    let key = ns.key("panic").unwrap();
    let err = cache
        .get_or_load(&key, &Arc::new(PanickingLoader))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    eventually_unlocked(&url, &key).await;

    // Without single-flight the load runs in the caller's own future: dropping it must release.
    let inline = GuardedCache::builder(Arc::new(backend.clone()) as Arc<dyn Backend<String>>)
        .single_flight(false)
        .lock(DistributedLock::new(backend.lock_store(), LockOptions::default()).unwrap())
        .build()
        .unwrap();
    let key = ns.key("cancel").unwrap();
    let loader = Arc::new(PendingLoader(tokio::sync::Notify::new()));
    let task = {
        let (inline, key, loader) = (inline.clone(), key.clone(), loader.clone());
        tokio::spawn(async move { inline.get_or_load(&key, &loader).await })
    };
    loader.0.notified().await;
    assert!(lock_exists(&url, &key).await, "held while loading");
    task.abort();
    let _ = task.await;
    eventually_unlocked(&url, &key).await;
}

/// Counts loads in this process.
struct SlowLoader {
    calls: AtomicU64,
    delay: Duration,
}

#[async_trait]
impl Loader<String> for SlowLoader {
    async fn load(&self, key: &Key) -> Result<Option<String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Ok(Some(format!("value of {key}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_keeps_a_long_load_locked_past_its_lease() {
    let server = RedisServer::start();
    let backend = redis_backend(&server.url()).await;
    let options = LockOptions::default()
        .lease(Duration::from_millis(300))
        .max_wait(Duration::from_secs(5));
    // Two caches stand for two processes: their single-flights are separate.
    let (a, b) = (
        guarded(&backend, options.clone()),
        guarded(&backend, options),
    );
    let loader = Arc::new(SlowLoader {
        calls: AtomicU64::new(0),
        delay: Duration::from_millis(1_200),
    });
    let key = unique_space()
        .namespace("watchdog")
        .unwrap()
        .key("k")
        .unwrap();
    let url = server.url();
    let (ra, rb) = tokio::join!(a.get_or_load(&key, &loader), async {
        // b starts once a holds the lock.
        while !lock_exists(&url, &key).await {
            tokio::task::yield_now().await;
        }
        b.get_or_load(&key, &loader).await
    });
    assert_eq!(ra.unwrap(), rb.unwrap());
    assert_eq!(
        loader.calls.load(Ordering::SeqCst),
        1,
        "the lease was extended, so b never loaded"
    );
    assert_eq!(b.stats().lock_waits_served, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_does_what_the_configuration_says_after_max_wait() {
    let server = RedisServer::start();
    let backend = redis_backend(&server.url()).await;
    let ns = unique_space().namespace("timeout").unwrap();
    let store = backend.lock_store();
    let loader = Arc::new(SlowLoader {
        calls: AtomicU64::new(0),
        delay: Duration::ZERO,
    });
    let options = LockOptions::default()
        .max_wait(Duration::from_millis(200))
        .poll(Duration::from_millis(10), Duration::from_millis(50));

    // Someone else holds the lock and never fills the cache.
    let fail_key = ns.key("fail").unwrap();
    assert!(
        store
            .try_acquire(&fail_key, "other", Duration::from_secs(30))
            .await
            .unwrap()
    );
    let fail = guarded(&backend, options.clone().on_timeout(OnLockTimeout::Fail));
    let started = Instant::now();
    let err = fail.get_or_load(&fail_key, &loader).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Lock, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(loader.calls.load(Ordering::SeqCst), 0);

    let load_key = ns.key("load").unwrap();
    assert!(
        store
            .try_acquire(&load_key, "other", Duration::from_secs(30))
            .await
            .unwrap()
    );
    let load = guarded(&backend, options.on_timeout(OnLockTimeout::Load));
    assert!(
        load.get_or_load(&load_key, &loader)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(loader.calls.load(Ordering::SeqCst), 1);
    assert_eq!(load.stats().lock_timeouts, 1);
}

/// Runs this test binary again as a child process in `role`.
fn spawn_child(test: &str, role: &str, url: &str, key: &Key) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(CHILD_URL, url)
        .env(CHILD_KEY, key.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn child_role() -> Option<(String, String, Key)> {
    let role = std::env::var(CHILD_ROLE).ok()?;
    let url = std::env::var(CHILD_URL).unwrap();
    let key = Key::new(std::env::var(CHILD_KEY).unwrap()).unwrap();
    Some((role, url, key))
}

/// Counts its loads in Redis, across processes.
struct RedisCountingLoader {
    counter: redis::aio::MultiplexedConnection,
    delay: Duration,
}

#[async_trait]
impl Loader<String> for RedisCountingLoader {
    async fn load(&self, key: &Key) -> Result<Option<String>> {
        let n: u64 = self
            .counter
            .clone()
            .incr(format!("loads:{key}"), 1)
            .await
            .unwrap();
        tokio::time::sleep(self.delay).await;
        Ok(Some(format!("value of {key} from load {n}")))
    }
}

const FOUR_PROCESSES: &str = "lock::four_processes_of_250_callers_make_one_load";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_of_250_callers_make_one_load() {
    if let Some((_, url, key)) = child_role() {
        // A child: wait until all four are ready, then 250 concurrent callers.
        let mut conn = raw(&url).await;
        let _: u64 = conn.incr(format!("ready:{key}"), 1).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while conn
            .get::<_, Option<u64>>(format!("ready:{key}"))
            .await
            .unwrap()
            < Some(4)
        {
            assert!(
                Instant::now() < deadline,
                "the other processes never got ready"
            );
            tokio::task::yield_now().await;
        }
        let backend = redis_backend(&url).await;
        let cache = guarded(
            &backend,
            LockOptions::default().max_wait(Duration::from_secs(10)),
        );
        let loader = Arc::new(RedisCountingLoader {
            counter: conn.clone(),
            delay: Duration::from_millis(300),
        });
        let tasks: Vec<_> = (0..250)
            .map(|_| {
                let (cache, key, loader) = (cache.clone(), key.clone(), loader.clone());
                tokio::spawn(async move { cache.get_or_load(&key, &loader).await })
            })
            .collect();
        let (mut ok, mut failed) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok(Some(_)) => ok += 1,
                _ => failed += 1,
            }
        }
        println!("CHILD ok={ok} failed={failed}");
        return;
    }

    let server = RedisServer::start();
    let url = server.url();
    let key = unique_space()
        .namespace("procs")
        .unwrap()
        .key("cold")
        .unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| spawn_child(FOUR_PROCESSES, "caller", &url, &key))
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("CHILD ok=250 failed=0"),
            "child output:\n{stdout}"
        );
    }
    let loads: u64 = raw(&url).await.get(format!("loads:{key}")).await.unwrap();
    assert_eq!(
        loads, 1,
        "exactly one load across 4 processes × 250 callers"
    );
}

const KILLED_HOLDER: &str = "lock::a_killed_holder_frees_the_lock_after_its_lease";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_the_lock_after_its_lease() {
    let lease = Duration::from_millis(1_000);
    let max_wait = Duration::from_secs(3);
    if let Some((_, url, key)) = child_role() {
        // The holder: takes the lock, says so, and loads forever (until SIGKILL).
        let backend = redis_backend(&url).await;
        let cache = guarded(&backend, LockOptions::default().lease(lease));
        let conn = raw(&url).await;
        struct Forever(redis::aio::MultiplexedConnection);
        #[async_trait]
        impl Loader<String> for Forever {
            async fn load(&self, key: &Key) -> Result<Option<String>> {
                let _: () = self
                    .0
                    .clone()
                    .set(format!("loading:{key}"), 1)
                    .await
                    .unwrap();
                std::future::pending().await
            }
        }
        let _ = cache.get_or_load(&key, &Arc::new(Forever(conn))).await;
        unreachable!("the holder's load never finishes");
    }

    let server = RedisServer::start();
    let url = server.url();
    let key = unique_space()
        .namespace("killed")
        .unwrap()
        .key("k")
        .unwrap();
    let mut holder = spawn_child(KILLED_HOLDER, "holder", &url, &key);
    let mut conn = raw(&url).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !conn
        .exists::<_, bool>(format!("loading:{key}"))
        .await
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "the holder never started loading"
        );
        tokio::task::yield_now().await;
    }
    assert!(lock_exists(&url, &key).await);
    holder.kill().unwrap(); // SIGKILL: no destructor, no release.
    holder.wait().unwrap();

    let backend = redis_backend(&url).await;
    let cache = guarded(
        &backend,
        LockOptions::default().lease(lease).max_wait(max_wait),
    );
    let loader = Arc::new(SlowLoader {
        calls: AtomicU64::new(0),
        delay: Duration::ZERO,
    });
    let started = Instant::now();
    let value = cache.get_or_load(&key, &loader).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(value.as_deref(), Some(format!("value of {key}").as_str()));
    assert_eq!(
        loader.calls.load(Ordering::SeqCst),
        1,
        "this process loaded once the lease ran out"
    );
    assert!(waited <= lease + max_wait, "waited {waited:?}");
    assert_eq!(
        cache.stats().lock_timeouts,
        0,
        "the lock was taken before max_wait"
    );
}
