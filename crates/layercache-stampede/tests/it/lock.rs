//! The distributed lock, against real Redis: the store's primitives, release on every path, the
//! watchdog, several OS processes on one key, and a holder killed while holding it. (How
//! `TieredCache` waits for another process's value is tested in `layercache-tiered`.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use layercache_core::{ErrorKind, Key, LockStore};
use layercache_redis::{DEFAULT_LOCK_PREFIX, RedisBackend, RedisLockStore};
use layercache_stampede::{DistributedLock, LockGuard, LockOptions};
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

fn lock(backend: &RedisBackend, options: LockOptions) -> DistributedLock {
    DistributedLock::new(backend.lock_store(), options).unwrap()
}

/// Takes the lock of `key`, polling with the lock's backoff; fails after `within`.
async fn acquire(lock: &DistributedLock, key: &Key, within: Duration) -> LockGuard {
    let deadline = Instant::now() + within;
    let mut backoff = lock.backoff();
    loop {
        if let Some(guard) = lock.try_lock(key).await.unwrap() {
            return guard;
        }
        assert!(Instant::now() < deadline, "never got the lock of {key}");
        tokio::time::sleep(backoff.next_pause()).await;
    }
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

/// A store that is never reached: for the checks made before any command.
#[derive(Debug)]
struct Unreachable;

#[layercache_core::async_trait]
impl LockStore for Unreachable {
    async fn try_acquire(
        &self,
        _key: &Key,
        _token: &str,
        _lease: Duration,
    ) -> layercache_core::Result<bool> {
        unreachable!("no command expected")
    }
    async fn extend(
        &self,
        _key: &Key,
        _token: &str,
        _lease: Duration,
    ) -> layercache_core::Result<bool> {
        unreachable!("no command expected")
    }
    async fn release(&self, _key: &Key, _token: &str) -> layercache_core::Result<bool> {
        unreachable!("no command expected")
    }
}

#[test]
fn invalid_options_are_config_errors_and_the_backoff_doubles_with_jitter() {
    for options in [
        LockOptions::default().lease(Duration::from_millis(29)),
        LockOptions::default().poll(Duration::ZERO, Duration::from_millis(10)),
        LockOptions::default().poll(Duration::from_millis(20), Duration::from_millis(10)),
    ] {
        let err = DistributedLock::new(Unreachable, options.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{options:?}");
    }

    let lock = DistributedLock::new(
        Unreachable,
        LockOptions::default().poll(Duration::from_millis(10), Duration::from_millis(50)),
    )
    .unwrap();
    for _ in 0..100 {
        let mut backoff = lock.backoff();
        for base in [10u64, 20, 40, 50, 50, 50] {
            let pause = backoff.next_pause();
            let base = Duration::from_millis(base);
            assert!(
                pause >= base / 2 && pause <= base * 3 / 2,
                "pause {pause:?} around {base:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_released_on_release_drop_panic_and_cancellation() {
    let server = RedisServer::start();
    let url = server.url();
    let backend = redis_backend(&url).await;
    // Two locks on one store stand for two processes.
    let (ours, theirs) = (
        lock(&backend, LockOptions::default()),
        lock(&backend, LockOptions::default()),
    );
    let ns = unique_space().namespace("release").unwrap();

    let key = ns.key("release").unwrap();
    let guard = ours.try_lock(&key).await.unwrap().expect("a free key");
    assert!(lock_exists(&url, &key).await);
    assert!(theirs.try_lock(&key).await.unwrap().is_none(), "exclusive");
    assert!(guard.release().await.unwrap(), "still ours");
    assert!(!lock_exists(&url, &key).await, "released at once");
    let guard = theirs.try_lock(&key).await.unwrap().expect("free again");
    assert!(guard.release().await.unwrap());

    // Dropped on an error path: released in the background.
    let key = ns.key("drop").unwrap();
    let guard = ours.try_lock(&key).await.unwrap().unwrap();
    drop(guard);
    eventually_unlocked(&url, &key).await;

    // Held by a task that panics.
    let key = ns.key("panic").unwrap();
    let task = {
        let (ours, key) = (ours.clone(), key.clone());
        tokio::spawn(async move {
            let _guard = ours.try_lock(&key).await.unwrap().unwrap();
            panic!("loader bug");
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    eventually_unlocked(&url, &key).await;

    // Held by a task that is cancelled mid-work.
    let key = ns.key("cancel").unwrap();
    let holding = std::sync::Arc::new(tokio::sync::Notify::new());
    let task = {
        let (ours, key, holding) = (ours.clone(), key.clone(), holding.clone());
        tokio::spawn(async move {
            let _guard = ours.try_lock(&key).await.unwrap().unwrap();
            holding.notify_one();
            std::future::pending::<()>().await;
        })
    };
    holding.notified().await;
    assert!(lock_exists(&url, &key).await, "held while working");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    eventually_unlocked(&url, &key).await;

    // A guard whose lock was lost (here: deleted behind its back, as an expired lease would be)
    // does not release the new holder's lock.
    let key = ns.key("lost").unwrap();
    let stale = ours.try_lock(&key).await.unwrap().unwrap();
    let _: () = raw(&url)
        .await
        .del(format!("{DEFAULT_LOCK_PREFIX}{key}"))
        .await
        .unwrap();
    let current = theirs
        .try_lock(&key)
        .await
        .unwrap()
        .expect("free after the loss");
    assert!(!stale.release().await.unwrap(), "no longer ours");
    assert!(lock_exists(&url, &key).await, "the new holder keeps it");
    assert!(current.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_keeps_a_long_hold_locked_past_its_lease() {
    let server = RedisServer::start();
    let url = server.url();
    let backend = redis_backend(&url).await;
    let lease = Duration::from_secs(1);
    let options = LockOptions::default().lease(lease);
    let (holder, other) = (lock(&backend, options.clone()), lock(&backend, options));
    let key = unique_space()
        .namespace("watchdog")
        .unwrap()
        .key("k")
        .unwrap();
    let guard = holder.try_lock(&key).await.unwrap().unwrap();
    // A long load: three leases.
    let started = Instant::now();
    while started.elapsed() < lease * 3 {
        assert!(
            other.try_lock(&key).await.unwrap().is_none(),
            "the lease was extended, so nobody else took the lock"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pttl: i64 = raw(&url)
        .await
        .pttl(format!("{DEFAULT_LOCK_PREFIX}{key}"))
        .await
        .unwrap();
    assert!(pttl > 0, "PTTL {pttl}");
    assert!(guard.release().await.unwrap(), "still ours after 3 leases");
    assert!(other.try_lock(&key).await.unwrap().is_some());
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

const FOUR_PROCESSES: &str = "lock::four_processes_never_hold_one_key_at_once";
const TASKS_PER_PROCESS: u64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_hold_one_key_at_once() {
    if let Some((_, url, key)) = child_role() {
        // A child: wait until all four are ready, then 25 tasks each take the lock once, counting
        // the holders in Redis while they hold it.
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
        let lock = lock(
            &backend,
            LockOptions::default().poll(Duration::from_millis(2), Duration::from_millis(20)),
        );
        let tasks: Vec<_> = (0..TASKS_PER_PROCESS)
            .map(|_| {
                let (lock, key, mut conn) = (lock.clone(), key.clone(), conn.clone());
                tokio::spawn(async move {
                    let guard = acquire(&lock, &key, Duration::from_secs(60)).await;
                    let holders: u64 = conn.incr(format!("holders:{key}"), 1).await.unwrap();
                    if holders != 1 {
                        let _: u64 = conn.incr(format!("overlaps:{key}"), 1).await.unwrap();
                    }
                    // The work done under the lock.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let _: i64 = conn.decr(format!("holders:{key}"), 1).await.unwrap();
                    let _: u64 = conn.incr(format!("holds:{key}"), 1).await.unwrap();
                    guard.release().await.unwrap()
                })
            })
            .collect();
        let mut released = 0;
        for task in tasks {
            released += u64::from(task.await.unwrap());
        }
        println!("CHILD released={released}");
        return;
    }

    let server = RedisServer::start();
    let url = server.url();
    let key = unique_space()
        .namespace("procs")
        .unwrap()
        .key("one")
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
            stdout.contains(&format!("CHILD released={TASKS_PER_PROCESS}")),
            "every holder released its own lock:\n{stdout}"
        );
    }
    let mut conn = raw(&url).await;
    let holds: u64 = conn.get(format!("holds:{key}")).await.unwrap();
    let overlaps: Option<u64> = conn.get(format!("overlaps:{key}")).await.unwrap();
    assert_eq!(
        holds,
        4 * TASKS_PER_PROCESS,
        "every task held the lock once"
    );
    assert_eq!(overlaps, None, "never two holders at once");
    assert!(!lock_exists(&url, &key).await);
}

const KILLED_HOLDER: &str = "lock::a_killed_holder_frees_the_lock_after_its_lease";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_the_lock_after_its_lease() {
    let lease = Duration::from_secs(3);
    if let Some((_, url, key)) = child_role() {
        // The holder: takes the lock, says so, and works forever (until SIGKILL).
        let backend = redis_backend(&url).await;
        let lock = lock(&backend, LockOptions::default().lease(lease));
        let _guard = lock.try_lock(&key).await.unwrap().expect("a free key");
        let _: () = raw(&url)
            .await
            .set(format!("holding:{key}"), 1)
            .await
            .unwrap();
        std::future::pending::<()>().await;
        unreachable!("the holder never finishes");
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
        .exists::<_, bool>(format!("holding:{key}"))
        .await
        .unwrap()
    {
        assert!(Instant::now() < deadline, "the holder never took the lock");
        tokio::task::yield_now().await;
    }
    holder.kill().unwrap(); // SIGKILL: no destructor, no release.
    holder.wait().unwrap();

    let backend = redis_backend(&url).await;
    let lock = lock(
        &backend,
        LockOptions::default()
            .lease(lease)
            .poll(Duration::from_millis(10), Duration::from_millis(100)),
    );
    assert!(
        lock.try_lock(&key).await.unwrap().is_none(),
        "the dead holder's lease still runs"
    );
    // Once its lease runs out (no watchdog extends it any more), the lock is free.
    let guard = acquire(&lock, &key, Duration::from_secs(30)).await;
    assert!(guard.release().await.unwrap());
}
