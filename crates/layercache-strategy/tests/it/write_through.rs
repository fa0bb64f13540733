//! Write-through against real Redis and SQLite: no stale window, failures handled, and a slow
//! source write blocks nobody else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{
    Backend, Entry, EntryOptions, Error, ErrorKind, Key, Loader, Namespace, Result, Writer,
    async_trait,
};
use layercache_moka::MokaBackend;
use layercache_redis::RedisBackend;
use layercache_strategy::WriteThrough;
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_testkit::sqlite::{Product, Products};
use layercache_tiered::TieredCache;
use tokio::sync::{Notify, watch};

const KEYS: usize = 100;
const OPS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_reads_and_writes_leave_no_stale_value() {
    let server = RedisServer::start();
    let products = Arc::new(Products::create().await.unwrap());
    let backend: Arc<dyn Backend<Option<Product>>> = Arc::new(
        RedisBackend::builder(server.url())
            .command_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap(),
    );
    let cache = TieredCache::builder()
        .l2_backend(backend.clone())
        .l2_timeout(Duration::from_secs(2))
        .options(EntryOptions::new(Duration::from_secs(300)))
        .build()
        .unwrap();
    let store = WriteThrough::new(cache, products.clone(), products.clone());
    let ns = unique_space().namespace("wt").unwrap();
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..KEYS)
            .map(|i| ns.key(format!("p{i}")).unwrap())
            .collect(),
    );
    for (i, key) in keys.iter().enumerate() {
        products
            .insert(&Product::new(format!("p{i}"), "v0", 0))
            .await
            .unwrap();
        store.get(key).await.unwrap();
    }

    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let (store, keys) = (store.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            for n in 0..OPS / 16 {
                let i = rng.usize(..KEYS);
                if rng.bool() {
                    let product = Product::new(
                        format!("p{i}"),
                        format!("t{t} n{n}"),
                        (t * 100_000 + n as u64) as i64,
                    );
                    store.put(&keys[i], product).await.unwrap();
                } else {
                    store.get(&keys[i]).await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    store.cache().shutdown().await.unwrap();

    let mut mismatches = 0;
    let mut cached = 0;
    for (i, key) in keys.iter().enumerate() {
        let source = products.get_direct(&format!("p{i}")).await.unwrap();
        if let Some(entry) = backend.get(key).await.unwrap() {
            cached += 1;
            if entry.value != source {
                mismatches += 1;
                eprintln!("{key}: L2 {:?} source {source:?}", entry.value);
            }
        }
        // What a reader of this process sees (L1 first).
        if let Some(value) = store.cache().get(key).await.unwrap()
            && Some(&value) != source.as_ref()
        {
            mismatches += 1;
            eprintln!("{key}: cache {value:?} source {source:?}");
        }
    }
    let stats = store.stats();
    println!(
        "writes {}, cached keys {cached}, mismatches {mismatches}; {:?}",
        stats.writes,
        store.cache().stats()
    );
    assert_eq!(mismatches, 0);
    assert!(cached >= KEYS / 2, "most keys are cached: {cached}");
    assert!(stats.writes > 4_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_source_write_leaves_the_cache_untouched() {
    let products = Arc::new(Products::create().await.unwrap());
    products
        .insert(&Product::new("p1", "original", 1))
        .await
        .unwrap();
    let backend: Arc<dyn Backend<Option<Product>>> =
        Arc::new(MokaBackend::builder().build().unwrap());
    let store = WriteThrough::new(
        TieredCache::builder()
            .l2_backend(backend.clone())
            .build()
            .unwrap(),
        products.clone(),
        products.clone(),
    );
    let key = Key::new("products:p1").unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().name, "original");

    products.make_read_only().await.unwrap();
    let err = store
        .put(&key, Product::new("p1", "rejected", 2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader, "{err}");
    assert_eq!(store.get(&key).await.unwrap().unwrap().name, "original");
    assert_eq!(
        products.get_direct("p1").await.unwrap().unwrap().name,
        "original"
    );
    assert_eq!(store.stats().source_errors, 1);
    let err = store.delete(&key).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert!(
        backend.get(&key).await.unwrap().is_some(),
        "a failed delete leaves the cache too"
    );
    assert_eq!(
        store.cache().get(&key).await.unwrap().unwrap().name,
        "original"
    );
    assert_eq!(store.stats().source_errors, 2);
    assert_eq!(
        products.stats().loads,
        1,
        "served from the cache throughout"
    );
}

/// A cache whose writes fail on demand (deletes still work), standing in for a Redis hiccup.
#[derive(Debug)]
struct FlakyWrites {
    inner: MokaBackend<Option<Product>>,
    fail_sets: AtomicBool,
}

#[async_trait]
impl Backend<Option<Product>> for FlakyWrites {
    async fn get(&self, key: &Key) -> Result<Option<Entry<Option<Product>>>> {
        self.inner.get(key).await
    }
    async fn set(&self, key: &Key, entry: Entry<Option<Product>>) -> Result<()> {
        if self.fail_sets.load(Ordering::SeqCst) {
            return Err(Error::unavailable("cache write refused"));
        }
        self.inner.set(key, entry).await
    }
    async fn delete(&self, key: &Key) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        self.inner.clear(namespace).await
    }
    fn name(&self) -> &'static str {
        "flaky"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cache_write_is_reported_and_leaves_no_stale_value() {
    let products = Arc::new(Products::create().await.unwrap());
    products
        .insert(&Product::new("p1", "original", 1))
        .await
        .unwrap();
    let backend = Arc::new(FlakyWrites {
        inner: MokaBackend::builder().build().unwrap(),
        fail_sets: AtomicBool::new(false),
    });
    let store = WriteThrough::new(
        TieredCache::builder()
            .l2_backend(backend.clone() as Arc<dyn Backend<Option<Product>>>)
            .pending_l2_writes(100, Duration::from_millis(10))
            .build()
            .unwrap(),
        products.clone(),
        products.clone(),
    );
    let key = Key::new("products:p1").unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().name, "original");

    backend.fail_sets.store(true, Ordering::SeqCst);
    let err = store
        .put(&key, Product::new("p1", "updated", 2))
        .await
        .unwrap_err();
    println!("reported: {err}");
    assert_eq!(
        products.get_direct("p1").await.unwrap().unwrap().name,
        "updated",
        "the source has the write"
    );
    assert_eq!(store.stats().cache_write_failures, 1);
    // No tier serves the old value: L1 has the new one, and L2's old copy is removed.
    assert_ne!(
        store.get(&key).await.unwrap().map(|p| p.name).as_deref(),
        Some("original")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backend
        .inner
        .get(&key)
        .await
        .unwrap()
        .is_some_and(|e| e.value.is_some_and(|p| p.name == "original"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stale L2 copy was never removed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    backend.fail_sets.store(false, Ordering::SeqCst);
    assert_eq!(store.get(&key).await.unwrap().unwrap().name, "updated");
}

/// A writer in front of `Products` whose first `write` waits until released, and says when it
/// entered.
struct BlockedWriter {
    inner: Arc<Products>,
    entered: Notify,
    release: watch::Sender<bool>,
}

impl BlockedWriter {
    fn new(inner: Arc<Products>) -> Arc<Self> {
        Arc::new(BlockedWriter {
            inner,
            entered: Notify::new(),
            release: watch::channel(false).0,
        })
    }
}

#[async_trait]
impl Writer<Product> for BlockedWriter {
    async fn write(&self, key: &Key, value: &Product) -> Result<()> {
        self.entered.notify_one();
        let _ = self.release.subscribe().wait_for(|open| *open).await;
        self.inner.write(key, value).await
    }
    async fn remove(&self, key: &Key) -> Result<()> {
        self.inner.remove(key).await
    }
}

/// Bounds a step that must not wait on anything blocked, so that a regression fails instead of
/// hanging; generous, it is no latency budget.
async fn unblocked<T>(what: &str, step: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), step)
        .await
        .unwrap_or_else(|_| panic!("{what} waited on the blocked source write"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_source_write_does_not_block_reads_of_other_keys() {
    let products = Arc::new(Products::create().await.unwrap());
    for i in 0..3 {
        products
            .insert(&Product::new(format!("p{i}"), format!("v{i}"), i))
            .await
            .unwrap();
    }
    let l2: Arc<dyn Backend<Option<Product>>> = Arc::new(MokaBackend::builder().build().unwrap());
    let writer = BlockedWriter::new(products.clone());
    let store = WriteThrough::new(
        TieredCache::builder().l2_backend(l2).build().unwrap(),
        products.clone(),
        writer.clone(),
    );
    let cache = store.cache().clone();
    let [p0, p1, p2] = ["p0", "p1", "p2"].map(|id| Key::new(format!("products:{id}")).unwrap());
    assert_eq!(store.get(&p1).await.unwrap().unwrap().name, "v1");

    let put = tokio::spawn({
        let (store, p0) = (store.clone(), p0.clone());
        async move { store.put(&p0, Product::new("p0", "new", 10)).await }
    });
    writer.entered.notified().await;

    // While the put waits on the source: a cached key, a miss that loads, and a plain read.
    let cached = unblocked("a read of a cached key", store.get(&p1)).await;
    assert_eq!(cached.unwrap().unwrap().name, "v1");
    let loaded = unblocked("a load of another key", store.get(&p2)).await;
    assert_eq!(loaded.unwrap().unwrap().name, "v2");
    let plain = unblocked("cache.get of another key", cache.get(&p2)).await;
    assert_eq!(plain.unwrap().unwrap().name, "v2");
    let other = unblocked(
        "a write of another key",
        store.cache().set(&p1, Product::new("p1", "set", 1)),
    )
    .await;
    other.unwrap();
    assert!(!put.is_finished(), "the put is still blocked at the source");

    writer.release.send_replace(true);
    put.await.unwrap().unwrap();
    assert_eq!(cache.get(&p0).await.unwrap().unwrap().name, "new");
    assert_eq!(store.get(&p0).await.unwrap().unwrap().name, "new");
}

/// A loader in front of `Products` whose first load reads the source, says so, and returns what
/// it read only once released.
struct SlowLoader {
    inner: Arc<Products>,
    calls: AtomicU64,
    read: Notify,
    release: watch::Sender<bool>,
}

#[async_trait]
impl Loader<Product> for SlowLoader {
    async fn load(&self, key: &Key) -> Result<Option<Product>> {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let value = self.inner.load(key).await?;
        if first {
            self.read.notify_one();
            let _ = self.release.subscribe().wait_for(|open| *open).await;
        }
        Ok(value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_read_the_old_value_before_a_put_does_not_cache_it() {
    let products = Arc::new(Products::create().await.unwrap());
    products
        .insert(&Product::new("p1", "old", 1))
        .await
        .unwrap();
    let l2: Arc<dyn Backend<Option<Product>>> = Arc::new(MokaBackend::builder().build().unwrap());
    let loader = Arc::new(SlowLoader {
        inner: products.clone(),
        calls: AtomicU64::new(0),
        read: Notify::new(),
        release: watch::channel(false).0,
    });
    let store = WriteThrough::new(
        TieredCache::builder()
            .l2_backend(l2.clone())
            .build()
            .unwrap(),
        loader.clone(),
        products.clone(),
    );
    let key = Key::new("products:p1").unwrap();

    // A read misses and its load reads "old" from the source...
    let reader = tokio::spawn({
        let (store, key) = (store.clone(), key.clone());
        async move { store.get(&key).await }
    });
    loader.read.notified().await;
    // ...then a put changes the source and the cache, and returns...
    store.put(&key, Product::new("p1", "new", 2)).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().name, "new");
    // ...and only then does the old load finish.
    loader.release.send_replace(true);
    let early = reader.await.unwrap().unwrap();
    assert_eq!(early.unwrap().name, "old", "the read that began first");

    let cached = store.cache().get(&key).await.unwrap();
    assert_ne!(
        cached.as_ref().map(|p| p.name.as_str()),
        Some("old"),
        "the old load did not overwrite the put"
    );
    if let Some(entry) = l2.get(&key).await.unwrap() {
        assert_ne!(entry.value.map(|p| p.name).as_deref(), Some("old"), "L2");
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().name, "new");
    store.cache().shutdown().await.unwrap();
    assert_eq!(store.cache().in_flight(), (0, 0, 0));
}
