//! Memory: a stream of distinct keys through a small L1 leaves nothing behind — no landed flights,
//! no version-table entries, no pending writes — and the process's peak memory stays near what L1
//! can hold, also when the runtime that ran the loads is dropped.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use layercache_core::Namespace;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::TieredCache;
use tokio::sync::Notify;

const TASKS: usize = 64;
/// Distinct keys loaded, once each.
#[cfg(not(debug_assertions))]
const KEYS: usize = 1_000_000;
#[cfg(debug_assertions)]
const KEYS: usize = 50_000;
const VALUE_BYTES: usize = 64 * 1024;
const L1_ENTRIES: u64 = 100;
/// The bound on the growth of the peak resident set over the loads.
///
/// L1 holds 100 × 64 KiB = 6.4 MiB. On top of it: the 64 loads in flight, each with a few copies
/// of its value alive at once (the loader's, L1's, the caller's: ~12 MiB), the entries L1 has
/// taken but not yet evicted (its maintenance runs in batches), and the allocator's per-thread
/// arenas. 64 MiB is ten times L1's share, and still far below what a leak of landed flights or
/// of version-table entries would show: the code before the redesign held ~1 GiB here.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

/// Set in the child process that runs a test alone (see [`in_own_process`]).
const CHILD: &str = "LAYERCACHE_TIERED_MEMORY_CHILD";

/// Runs `body` in a fresh process that runs this test alone, so that the peak resident set it
/// measures is its own, not that of the tests running beside it in this binary.
fn in_own_process(test: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let name = format!("memory::{test}");
    let output = Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "{name} failed in its own process:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its own process:\n{stdout}"
    );
}

/// The peak resident set of this process so far, in KiB (`VmHWM` of `/proc/self/status`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .map(|kib| kib.trim().parse().unwrap())
        .expect("VmHWM in /proc/self/status")
}

fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn l1_only() -> TieredCache<Vec<u8>> {
    TieredCache::builder()
        .name("memory")
        .l1_max_entries(L1_ENTRIES)
        .build()
        .unwrap()
}

/// Loads keys `0..KEYS` of `namespace` once each, from `TASKS` tasks; every value is
/// `VALUE_BYTES` bytes of ones (not zeros: a zeroed allocation may never be touched, and an
/// untouched page does not count in the resident set).
async fn load_all(cache: &TieredCache<Vec<u8>>, namespace: &Namespace) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (cache, namespace) = (cache.clone(), namespace.clone());
            tokio::spawn(async move {
                for i in (t..KEYS).step_by(TASKS) {
                    let key = namespace.key(i).unwrap();
                    let value = cache
                        .get_or_load(&key, |_key| async move {
                            Ok::<_, layercache_core::Error>(Some(vec![1u8; VALUE_BYTES]))
                        })
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(value.len(), VALUE_BYTES);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[test]
fn distinct_keys_through_a_small_l1_leave_nothing_behind_and_memory_stays_bounded() {
    in_own_process(
        "distinct_keys_through_a_small_l1_leave_nothing_behind_and_memory_stays_bounded",
        || {
            let cache = l1_only();
            let space = unique_space();

            // One runtime for the whole run: idle afterwards, nothing is left in flight.
            let before = peak_rss_kib();
            let runtime = new_runtime();
            runtime.block_on(async {
                load_all(&cache, &space.namespace("first").unwrap()).await;
                assert_eq!(cache.in_flight(), (0, 0, 0));
            });
            let after = peak_rss_kib();
            let growth = after.saturating_sub(before);
            eprintln!(
                "memory: {KEYS} distinct keys of {} KiB through an L1 of {L1_ENTRIES} entries: \
                 peak RSS {before} KiB before, {after} KiB after, growth {growth} KiB (bound \
                 {MAX_GROWTH_KIB} KiB; L1 holds {} KiB)",
                VALUE_BYTES / 1024,
                L1_ENTRIES * VALUE_BYTES as u64 / 1024,
            );
            assert!(
                growth < MAX_GROWTH_KIB,
                "peak RSS grew by {growth} KiB over the loads"
            );
            drop(runtime);
            assert_eq!(cache.in_flight(), (0, 0, 0));

            // Again, on a fresh runtime dropped as soon as the last load returned: the cache
            // outlives it, with nothing left in flight.
            let runtime = new_runtime();
            runtime.block_on(load_all(&cache, &space.namespace("second").unwrap()));
            drop(runtime);
            assert_eq!(cache.in_flight(), (0, 0, 0));
            let end = peak_rss_kib();
            let growth = end.saturating_sub(before);
            eprintln!(
                "memory: after a second run on a runtime dropped right after its last load: \
                 peak RSS {end} KiB, growth {growth} KiB since the start"
            );
            assert!(
                growth < MAX_GROWTH_KIB,
                "peak RSS grew by {growth} KiB over both runs"
            );
        },
    );
}

/// Drops `runtime` on another thread and fails if that takes longer than `limit` (a deadlock: the
/// thread is left behind, the test fails instead of hanging the suite).
fn drop_within(runtime: tokio::runtime::Runtime, limit: Duration) {
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(runtime);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(limit)
        .expect("dropping the runtime did not finish: deadlocked");
}

/// A read on a runtime that is shutting down: its flight's task cannot start, and is dropped on
/// the spot, inside the spawn. That must fail the read (or serve it), not deadlock — the flight
/// table's lock is held while the flight is spawned, and dropping the flight takes it again.
#[test]
fn a_read_on_a_runtime_that_shut_down_does_not_deadlock() {
    let cache = l1_only();
    let key = unique_space()
        .namespace("shut-down")
        .unwrap()
        .key("k")
        .unwrap();
    let runtime = new_runtime();
    let handle = runtime.handle().clone();
    drop(runtime);

    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn({
        let cache = cache.clone();
        move || {
            let _entered = handle.enter();
            let read = cache.get_or_load(&key, |_key| async move {
                Ok::<_, layercache_core::Error>(Some(vec![1u8; 16]))
            });
            let mut read = std::pin::pin!(read);
            let polled = read
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
            let _ = done.send(polled.is_ready());
        }
    });
    let ready = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the read deadlocked");
    assert!(ready, "the read waits for a flight that cannot run");
    assert_eq!(cache.in_flight(), (0, 0, 0));
}

#[test]
fn a_runtime_dropped_while_loads_run_leaves_nothing_in_flight() {
    let cache = l1_only();
    let namespace = unique_space().namespace("dropped").unwrap();
    let keys: Vec<_> = (0..TASKS).map(|i| namespace.key(i).unwrap()).collect();

    let runtime = new_runtime();
    let started = Arc::new(AtomicUsize::new(0));
    let all_started = Arc::new(Notify::new());
    runtime.block_on(async {
        for key in &keys {
            // Two callers per key: one leads the load, the other waits on it.
            for _ in 0..2 {
                let (cache, key) = (cache.clone(), key.clone());
                let (started, all_started) = (Arc::clone(&started), Arc::clone(&all_started));
                tokio::spawn(async move {
                    cache
                        .get_or_load(&key, move |_key| async move {
                            if started.fetch_add(1, Ordering::SeqCst) + 1 == TASKS {
                                all_started.notify_one();
                            }
                            // A load that never finishes: the runtime goes away under it.
                            std::future::pending::<()>().await;
                            Ok::<_, layercache_core::Error>(Some(vec![1u8; 16]))
                        })
                        .await
                });
            }
        }
        all_started.notified().await;
    });
    assert_eq!(started.load(Ordering::SeqCst), TASKS, "one load per key");
    // Some callers may still be on their first poll, joining or starting flights, while the
    // runtime shuts down.
    drop_within(runtime, Duration::from_secs(30));
    assert_eq!(cache.in_flight(), (0, 0, 0));

    // The cache still works on another runtime: the keys load again, nothing waits on a flight
    // of the dropped one.
    let runtime = new_runtime();
    runtime.block_on(async {
        for key in &keys {
            let value = cache
                .get_or_load(key, |_key| async move {
                    Ok::<_, layercache_core::Error>(Some(vec![2u8; 16]))
                })
                .await
                .unwrap();
            assert_eq!(value, Some(vec![2u8; 16]));
        }
        assert_eq!(cache.in_flight(), (0, 0, 0));
    });
}
