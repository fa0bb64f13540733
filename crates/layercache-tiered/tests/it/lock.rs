//! The distributed lock is held until the holder's value is in L2: the processes waiting on the
//! lock look for the value there, so a lock freed while the L2 store is still on its way lets
//! one of them take it, miss L2 and load again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{Backend, Entry, Key, LockStore, Namespace, Result, async_trait};
use layercache_redis::RedisBackend;
use layercache_stampede::LockOptions;
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_tiered::TieredCache;
use tokio::sync::{Notify, Semaphore};

/// A generous bound on steps that must finish: past it the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

/// Redis as L2, with conditional stores (a load's store) held until the test opens the gate.
#[derive(Debug)]
struct GatedStores {
    inner: RedisBackend,
    gate: Semaphore,
    held: Notify,
}

impl GatedStores {
    async fn pass(&self) {
        self.held.notify_one();
        let _ = self.gate.acquire().await.map(|permit| permit.forget());
    }
}

#[async_trait]
impl Backend<Option<String>> for GatedStores {
    async fn get(&self, key: &Key) -> Result<Option<Entry<Option<String>>>> {
        self.inner.get(key).await
    }
    async fn set(&self, key: &Key, entry: Entry<Option<String>>) -> Result<()> {
        self.inner.set(key, entry).await
    }
    async fn delete(&self, key: &Key) -> Result<bool> {
        Backend::<Option<String>>::delete(&self.inner, key).await
    }
    async fn set_if_newer(&self, key: &Key, entry: Entry<Option<String>>) -> Result<bool> {
        self.pass().await;
        self.inner.set_if_newer(key, entry).await
    }
    async fn set_many_if_newer(
        &self,
        items: Vec<(Key, Entry<Option<String>>)>,
    ) -> Result<Vec<bool>> {
        self.pass().await;
        self.inner.set_many_if_newer(items).await
    }
    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        Backend::<Option<String>>::clear(&self.inner, namespace).await
    }
    fn name(&self) -> &'static str {
        "gated-stores"
    }
}

/// Redis's lock store, telling when an attempt to take a lock found it held.
#[derive(Debug)]
struct WatchedLocks {
    inner: Arc<dyn LockStore>,
    refused: AtomicU64,
    refusal: Notify,
}

#[async_trait]
impl LockStore for WatchedLocks {
    async fn try_acquire(&self, key: &Key, token: &str, lease: Duration) -> Result<bool> {
        let taken = self.inner.try_acquire(key, token, lease).await?;
        if !taken {
            self.refused.fetch_add(1, Ordering::SeqCst);
            self.refusal.notify_one();
        }
        Ok(taken)
    }
    async fn extend(&self, key: &Key, token: &str, lease: Duration) -> Result<bool> {
        self.inner.extend(key, token, lease).await
    }
    async fn release(&self, key: &Key, token: &str) -> Result<bool> {
        self.inner.release(key, token).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_freed_only_once_the_holders_value_is_in_l2() {
    let server = RedisServer::start();
    let redis = RedisBackend::connect(server.url()).await.unwrap();
    let l2 = Arc::new(GatedStores {
        inner: redis.clone(),
        gate: Semaphore::new(0),
        held: Notify::new(),
    });
    let locks = Arc::new(WatchedLocks {
        inner: Arc::new(redis.lock_store()),
        refused: AtomicU64::new(0),
        refusal: Notify::new(),
    });
    // Two processes' caches: each its own L1, the same L2 and locks.
    let instance = |name: &str| {
        TieredCache::<String>::builder()
            .name(name)
            .l2_backend(Arc::clone(&l2) as Arc<dyn Backend<Option<String>>>)
            .lock_store(Arc::clone(&locks) as Arc<dyn LockStore>)
            .distributed_lock(LockOptions::default().max_wait(BOUND))
            .build()
            .unwrap()
    };
    let (a, b) = (instance("a"), instance("b"));
    let key = unique_space().namespace("lock").unwrap().key("k").unwrap();
    let loads = Arc::new(AtomicU64::new(0));
    let load = |loads: Arc<AtomicU64>| {
        move |_: Key| async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some("v".to_owned()))
        }
    };

    // A loads under the lock and is served at once (from its L1); its L2 store is held.
    let held = l2.held.notified();
    let got = tokio::time::timeout(BOUND, a.get_or_load(&key, load(Arc::clone(&loads))))
        .await
        .expect("A is served without waiting for L2");
    assert_eq!(got.unwrap().as_deref(), Some("v"));
    tokio::time::timeout(BOUND, held)
        .await
        .expect("A's store reached L2");

    // B misses L1 and L2 and finds the lock held: it waits for A's value.
    let refused = locks.refusal.notified();
    let b_read = tokio::spawn({
        let (b, key, loads) = (b.clone(), key.clone(), Arc::clone(&loads));
        async move { b.get_or_load(&key, load(loads)).await }
    });
    tokio::time::timeout(BOUND, refused)
        .await
        .expect("B found the lock held (freed early, B would have taken it and loaded)");

    // A's store lands; B is served A's value from L2.
    l2.gate.add_permits(1_000);
    let got = tokio::time::timeout(BOUND, b_read)
        .await
        .expect("B is served")
        .unwrap();
    assert_eq!(got.unwrap().as_deref(), Some("v"));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "one load for both processes"
    );
    assert_eq!(b.stats().lock_waits_served, 1, "{:?}", b.stats());
}
