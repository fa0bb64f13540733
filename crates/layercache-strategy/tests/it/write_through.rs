//! Write-through against real Redis and SQLite: no stale window, failures handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use layercache_core::{
    Backend, Entry, EntryOptions, Error, ErrorKind, Key, Namespace, Result, async_trait,
};
use layercache_moka::MokaBackend;
use layercache_redis::RedisBackend;
use layercache_strategy::{CacheAside, WriteThrough};
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_testkit::sqlite::{Product, Products};

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
    let cache = CacheAside::builder(backend.clone())
        .options(EntryOptions::new(Duration::from_secs(300)))
        .build()
        .unwrap();
    let store = WriteThrough::new(cache, products.clone(), products.clone());
    let ns = unique_space().namespace("wt").unwrap();
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..KEYS)
            .map(|i| ns.key(&format!("p{i}")).unwrap())
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

    let mut mismatches = 0;
    let mut cached = 0;
    for (i, key) in keys.iter().enumerate() {
        let source = products.get_direct(&format!("p{i}")).await.unwrap();
        if let Some(entry) = backend.get(key).await.unwrap() {
            cached += 1;
            if entry.value != source {
                mismatches += 1;
                eprintln!("{key}: cache {:?} source {source:?}", entry.value);
            }
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
        CacheAside::builder(backend.clone()).build().unwrap(),
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
async fn a_failed_cache_write_removes_the_key_and_is_reported() {
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
        CacheAside::builder(backend.clone() as Arc<dyn Backend<Option<Product>>>)
            .build()
            .unwrap(),
        products.clone(),
        products.clone(),
    );
    let key = Key::new("products:p1").unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().name, "original");

    backend.fail_sets.store(true, Ordering::SeqCst);
    store
        .put(&key, Product::new("p1", "updated", 2))
        .await
        .unwrap();
    assert_eq!(
        products.get_direct("p1").await.unwrap().unwrap().name,
        "updated"
    );
    assert!(
        backend.inner.get(&key).await.unwrap().is_none(),
        "no stale value stays in the cache"
    );
    assert_eq!(store.stats().cache_write_failures, 1);

    backend.fail_sets.store(false, Ordering::SeqCst);
    assert_eq!(store.get(&key).await.unwrap().unwrap().name, "updated");
}
