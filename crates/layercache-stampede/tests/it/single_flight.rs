//! Single-flight: coalescing, cancellation, panics and bounded waits in one process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{ErrorKind, Key, Loader, Result, async_trait};
use layercache_stampede::{GuardedCache, SingleFlight};
use tokio::sync::{Notify, oneshot};

use crate::{CountingLoader, moka};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_callers_on_a_cold_key_make_one_load() {
    let cache = GuardedCache::builder(moka()).build().unwrap();
    let loader = CountingLoader::new(Duration::from_millis(100));
    let key = Key::new("cold").unwrap();
    let mut tasks = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let (cache, loader, key) = (cache.clone(), loader.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            cache.get_or_load(&key, &loader).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().as_deref(), Some("cold#1"));
    }
    assert_eq!(loader.calls(), 1);
    let stats = cache.stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.flights.led, 1);
    assert_eq!(stats.hits + stats.misses, 10_000);
    assert_eq!(stats.flights.coalesced, stats.misses - 1, "{stats:?}");
}

/// A loader that signals when it starts and finishes when told to.
struct GatedLoader {
    started: Notify,
    release: Notify,
    calls: AtomicU64,
}

impl GatedLoader {
    fn new() -> Arc<Self> {
        Arc::new(GatedLoader {
            started: Notify::new(),
            release: Notify::new(),
            calls: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl Loader<String> for GatedLoader {
    async fn load(&self, _key: &Key) -> Result<Option<String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.notify_one();
        self.release.notified().await;
        Ok(Some("loaded".to_owned()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_the_value_when_the_leader_is_dropped_mid_load() {
    let cache = GuardedCache::builder(moka()).build().unwrap();
    let loader = GatedLoader::new();
    let key = Key::new("k").unwrap();

    let leader = {
        let (cache, loader, key) = (cache.clone(), loader.clone(), key.clone());
        tokio::spawn(async move { cache.get_or_load(&key, &loader).await })
    };
    loader.started.notified().await;
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, loader, key) = (cache.clone(), loader.clone(), key.clone());
            tokio::spawn(async move { cache.get_or_load(&key, &loader).await })
        })
        .collect();
    // Wait until every follower has joined the flight, then drop the leader's caller.
    while cache.stats().flights.coalesced < 10 {
        tokio::task::yield_now().await;
    }
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    loader.release.notify_one();

    for follower in followers {
        assert_eq!(follower.await.unwrap().unwrap().as_deref(), Some("loaded"));
    }
    assert_eq!(loader.calls.load(Ordering::SeqCst), 1);
    // The load also filled the cache: the next call is a hit.
    let hits = cache.stats().hits;
    assert_eq!(
        cache.get_or_load(&key, &loader).await.unwrap().as_deref(),
        Some("loaded")
    );
    assert_eq!(cache.stats().hits, hits + 1);
}

struct PanickyLoader {
    calls: AtomicU64,
}

#[async_trait]
impl Loader<String> for PanickyLoader {
    async fn load(&self, _key: &Key) -> Result<Option<String>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            panic!("the source exploded");
        }
        Ok(Some("second time lucky".to_owned()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_errors_every_waiter_and_does_not_poison_the_key() {
    let cache = GuardedCache::builder(moka()).build().unwrap();
    let loader = Arc::new(PanickyLoader {
        calls: AtomicU64::new(0),
    });
    let key = Key::new("k").unwrap();
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let (cache, loader, key) = (cache.clone(), loader.clone(), key.clone());
            tokio::spawn(async move { cache.get_or_load(&key, &loader).await })
        })
        .collect();
    for waiter in waiters {
        let err = waiter.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Loader, "{err}");
    }
    assert_eq!(loader.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.get_or_load(&key, &loader).await.unwrap().as_deref(),
        Some("second time lucky")
    );
    assert_eq!(loader.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_reaches_every_waiter_and_is_not_cached() {
    let flights = SingleFlight::<u32>::new();
    let key = Key::new("k").unwrap();
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let first = {
        let (flights, key) = (flights.clone(), key.clone());
        tokio::spawn(async move {
            flights
                .run(&key, async move {
                    let _ = gate_rx.await;
                    Err(layercache_core::Error::loader("db down"))
                })
                .await
        })
    };
    while !flights.is_in_flight(&key) {
        tokio::task::yield_now().await;
    }
    let second = {
        let (flights, key) = (flights.clone(), key.clone());
        tokio::spawn(async move { flights.run(&key, async { Ok(1) }).await })
    };
    while flights.stats().coalesced < 1 {
        tokio::task::yield_now().await;
    }
    gate_tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap_err().message(), "db down");
    assert_eq!(second.await.unwrap().unwrap_err().message(), "db down");
    assert_eq!(flights.run(&key, async { Ok(2) }).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_bounded_and_the_load_still_lands() {
    let cache = GuardedCache::builder(moka())
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let loader = GatedLoader::new();
    let key = Key::new("slow").unwrap();
    let err = cache.get_or_load(&key, &loader).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(cache.is_loading(&key));
    loader.release.notify_one();
    while cache.is_loading(&key) {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        cache.get_or_load(&key, &loader).await.unwrap().as_deref(),
        Some("loaded")
    );
    assert_eq!(loader.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn invalid_options_are_config_errors() {
    let err = GuardedCache::<String>::builder(moka())
        .options(layercache_core::EntryOptions::new(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(layercache_stampede::EarlyExpiry::new(0.0).is_err());
    assert!(layercache_stampede::EarlyExpiry::new(f64::NAN).is_err());
}

#[test]
fn public_types_are_send_and_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<GuardedCache<String>>();
    is_send_sync::<SingleFlight<String>>();
    is_send_sync::<layercache_stampede::DistributedLock>();
    is_send_sync::<layercache_stampede::LockGuard>();
    is_send_sync::<layercache_stampede::EarlyExpiry>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_wins_over_a_load_that_started_before_it() {
    let backend = moka();
    let cache = GuardedCache::builder(backend.clone()).build().unwrap();
    let old = GatedLoader::new();
    let key = Key::new("k").unwrap();
    let early_reader = {
        let (cache, old, key) = (cache.clone(), old.clone(), key.clone());
        tokio::spawn(async move { cache.get_or_load(&key, &old).await })
    };
    old.started.notified().await;

    // The invalidation returns while the old load is still running...
    cache.invalidate(&key).await.unwrap();
    // ...so a caller from now on does not join the old flight: it loads anew.
    let fresh = CountingLoader::new(Duration::ZERO);
    assert_eq!(
        cache.get_or_load(&key, &fresh).await.unwrap().as_deref(),
        Some("k#1")
    );
    assert_eq!(fresh.calls(), 1);

    old.release.notify_one();
    assert_eq!(
        early_reader.await.unwrap().unwrap().as_deref(),
        Some("loaded")
    );
    // The old load did not overwrite the newer value.
    assert_eq!(backend.get(&key).await.unwrap().unwrap().value, "k#1");
    assert_eq!(cache.stats().stores_skipped, 1);
}
