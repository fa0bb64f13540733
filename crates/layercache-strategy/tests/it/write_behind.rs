//! Write-behind against real parts: a Redis cache from the testkit, a SQLite `products` table.
//! The durable mode (Redis Stream journal, a killed process) is in `write_behind/durable.rs`.

mod durable;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use layercache_core::{
    Backend, Entry, EntryOptions, Error, ErrorKind, Key, Namespace, Result, Writer, async_trait,
};
use layercache_moka::MokaBackend;
use layercache_redis::RedisBackend;
use layercache_strategy::{QueueFull, WhenFull, WriteBehind, WriteBehindStats};
use layercache_testkit::RedisServer;
use layercache_testkit::conformance::unique_space;
use layercache_testkit::sqlite::{Product, Products};
use tokio::sync::{Notify, watch};

pub(crate) fn moka() -> Arc<dyn Backend<Product>> {
    Arc::new(MokaBackend::<Product>::builder().build().unwrap())
}

pub(crate) async fn redis_cache(url: &str) -> Arc<dyn Backend<Product>> {
    Arc::new(
        RedisBackend::builder(url)
            .command_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap(),
    )
}

pub(crate) async fn source(ns: &Namespace) -> Products {
    Products::create().await.unwrap().with_namespace(ns.clone())
}

pub(crate) fn product(id: usize, round: usize) -> Product {
    Product::new(
        id.to_string(),
        format!("product {id} round {round}"),
        round as i64,
    )
    .with_version(round as i64)
}

/// Polls `check` until it holds, failing after `within`.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn print_stats(what: &str, s: &WriteBehindStats) {
    println!(
        "{what}: accepted={} coalesced={} batches={} mean_batch={:.1} max_batch={} written={} \
         source_calls={} retries={} failures={} dead_letters={} claimed={} depth={} lag={:?}",
        s.accepted,
        s.coalesced,
        s.batches,
        s.mean_batch(),
        s.max_batch,
        s.written,
        s.source_calls,
        s.retries,
        s.failures,
        s.dead_letters,
        s.claimed,
        s.queue_depth,
        s.lag
    );
}

/// A writer in front of `Products` that holds every call until its gate opens, and says when a
/// call has entered.
pub(crate) struct Gated {
    inner: Products,
    gate: watch::Receiver<bool>,
    pub(crate) entered: Notify,
}

impl Gated {
    pub(crate) fn new(inner: Products, open: bool) -> (Arc<Self>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(open);
        let gated = Arc::new(Gated {
            inner,
            gate: rx,
            entered: Notify::new(),
        });
        (gated, tx)
    }

    async fn pass(&self) {
        self.entered.notify_one();
        let mut gate = self.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
    }
}

#[async_trait]
impl Writer<Product> for Gated {
    async fn write(&self, key: &Key, value: &Product) -> Result<()> {
        self.pass().await;
        self.inner.write(key, value).await
    }
    async fn remove(&self, key: &Key) -> Result<()> {
        self.pass().await;
        self.inner.remove(key).await
    }
    async fn write_many(&self, items: &[(Key, Product)]) -> Result<()> {
        self.pass().await;
        self.inner.write_many(items).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_writes_over_a_thousand_keys_leave_the_last_value() {
    const KEYS: usize = 1_000;
    const WRITES: usize = 100_000;
    const ROUNDS: usize = WRITES / KEYS;
    const TASKS: usize = 16;
    let server = RedisServer::start();
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    let cache = redis_cache(&server.url()).await;
    let wb = WriteBehind::builder(Arc::clone(&cache), Arc::new(products.clone()))
        .build()
        .unwrap();
    let keys: Arc<Vec<Key>> = Arc::new((0..KEYS).map(|i| ns.key(i).unwrap()).collect());

    let started = Instant::now();
    // Each task owns the keys i ≡ t (mod TASKS) and writes them round after round, so the last
    // value of every key is round ROUNDS - 1.
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (wb, keys) = (wb.clone(), Arc::clone(&keys));
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    for i in (t..KEYS).step_by(TASKS) {
                        wb.put(&keys[i], product(i, round)).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let acknowledged = started.elapsed();
    wb.flush().await.unwrap();
    let flushed = started.elapsed();

    let stats = wb.stats();
    print_stats("100k writes", &stats);
    println!(
        "100k writes over 1k keys: {:.0} puts/s acknowledged ({acknowledged:?}), flushed after {flushed:?}; source {:?}",
        WRITES as f64 / acknowledged.as_secs_f64(),
        products.stats()
    );
    assert_eq!(stats.accepted, WRITES as u64);
    assert_eq!(stats.queue_depth, 0);
    assert_eq!(stats.dead_letters, 0);
    let source_stats = products.stats();
    assert!(
        source_stats.write_calls() <= stats.batches,
        "{} source write calls for {} batches",
        source_stats.write_calls(),
        stats.batches
    );
    assert_eq!(source_stats.rows_written, stats.written);
    assert!(stats.max_batch <= 100);

    // The source holds exactly the last value of each key, and so does the cache.
    assert_eq!(products.count().await.unwrap(), KEYS as u64);
    let rows = products.all().await.unwrap();
    let mismatches = rows
        .iter()
        .filter(|row| {
            let i: usize = row.id.parse().unwrap();
            **row != product(i, ROUNDS - 1)
        })
        .count();
    assert_eq!(mismatches, 0);
    let cached = cache.get_many(&keys).await.unwrap();
    for (i, entry) in cached.into_iter().enumerate() {
        assert_eq!(entry.unwrap().value, product(i, ROUNDS - 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_last_write_of_a_key_reaches_the_source_and_deletes_do() {
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    let cache = moka();
    products.insert(&product(9, 0)).await.unwrap();
    let wb = WriteBehind::builder(Arc::clone(&cache), Arc::new(products.clone()))
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    let (a, b, gone) = (
        ns.key("1").unwrap(),
        ns.key("2").unwrap(),
        ns.key("9").unwrap(),
    );
    for round in 0..3 {
        wb.put(&a, product(1, round)).await.unwrap();
    }
    wb.put(&b, product(2, 0)).await.unwrap();
    wb.delete(&b).await.unwrap();
    wb.delete(&gone).await.unwrap();
    // The cache is updated at once, the source not yet.
    assert_eq!(cache.get(&a).await.unwrap().unwrap().value, product(1, 2));
    assert!(cache.get(&b).await.unwrap().is_none());
    assert_eq!(products.stats().write_calls(), 0);
    assert_eq!(wb.stats().queue_depth, 3);

    wb.flush().await.unwrap();
    let stats = wb.stats();
    assert_eq!((stats.accepted, stats.coalesced, stats.batches), (6, 3, 1));
    let s = products.stats();
    assert_eq!((s.write_many_calls, s.rows_written, s.removes), (1, 1, 2));
    assert_eq!(products.get_direct("1").await.unwrap(), Some(product(1, 2)));
    assert_eq!(products.get_direct("2").await.unwrap(), None);
    assert_eq!(products.get_direct("9").await.unwrap(), None);
    assert_eq!(wb.stats().queue_depth, 0);
}

/// A write-behind whose worker is stuck writing a first batch, with a full queue behind it.
async fn stuck(
    when_full: WhenFull,
) -> (
    WriteBehind<Product>,
    watch::Sender<bool>,
    Namespace,
    Products,
) {
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    let (gated, gate) = Gated::new(products.clone(), false);
    let wb = WriteBehind::builder(moka(), gated.clone())
        .capacity(4)
        .batch_size(2)
        .when_full(when_full)
        .build()
        .unwrap();
    for i in 0..2 {
        wb.put(&ns.key(i).unwrap(), product(i, 0)).await.unwrap();
    }
    gated.entered.notified().await;
    for i in 2..6 {
        wb.put(&ns.key(i).unwrap(), product(i, 0)).await.unwrap();
    }
    assert_eq!(wb.stats().queue_depth, 6, "4 queued + 2 being written");
    (wb, gate, ns, products)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_rejects_with_a_typed_error() {
    let (wb, gate, ns, products) = stuck(WhenFull::Reject).await;
    let err = wb
        .put(&ns.key("6").unwrap(), product(6, 0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_temporary());
    assert!(QueueFull::matches(&err), "{err}");
    assert!(
        wb.cache()
            .get(&ns.key("6").unwrap())
            .await
            .unwrap()
            .is_none(),
        "a refused write leaves the cache alone"
    );
    // A key already queued takes no more space.
    wb.put(&ns.key("3").unwrap(), product(3, 1)).await.unwrap();
    assert_eq!(wb.stats().rejected, 1);
    gate.send(true).unwrap();
    wb.flush().await.unwrap();
    assert_eq!(products.count().await.unwrap(), 6);
    assert_eq!(products.get_direct("3").await.unwrap(), Some(product(3, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_writers_wait_for_space() {
    let bounded = WhenFull::Wait {
        max: Some(Duration::from_millis(100)),
    };
    let (wb, _gate, ns, _products) = stuck(bounded).await;
    let started = Instant::now();
    let err = wb
        .put(&ns.key("6").unwrap(), product(6, 0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(QueueFull::matches(&err));
    assert!(started.elapsed() >= Duration::from_millis(100));

    let (wb, gate, ns, products) = stuck(WhenFull::Wait { max: None }).await;
    let mut waiting = tokio::spawn({
        let (wb, key) = (wb.clone(), ns.key("6").unwrap());
        async move { wb.put(&key, product(6, 0)).await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut waiting)
            .await
            .is_err(),
        "the put waits while the queue is full"
    );
    gate.send(true).unwrap();
    waiting.await.unwrap().unwrap();
    wb.flush().await.unwrap();
    assert_eq!(products.get_direct("6").await.unwrap(), Some(product(6, 0)));
    assert_eq!(wb.stats().rejected, 0);
}

pub(crate) type Letters = Arc<Mutex<Vec<(Key, Option<Product>, ErrorKind, u32)>>>;

pub(crate) fn collect(
    letters: &Letters,
) -> impl Fn(layercache_strategy::DeadLetter<'_, Product>) + use<> {
    let letters = Arc::clone(letters);
    move |letter| {
        letters.lock().unwrap().push((
            letter.key.clone(),
            letter.value.cloned(),
            letter.error.kind(),
            letter.attempts,
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_source_is_retried_then_dead_lettered_and_recovers() {
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    let cache = moka();
    let letters = Letters::default();
    let wb = WriteBehind::builder(Arc::clone(&cache), Arc::new(products.clone()))
        .max_retries(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(4))
        .dead_letter(collect(&letters))
        .build()
        .unwrap();
    products.make_read_only().await.unwrap();
    let keys: Vec<Key> = (0..3).map(|i| ns.key(i).unwrap()).collect();
    for (i, key) in keys.iter().enumerate() {
        wb.put(key, product(i, 0)).await.unwrap();
    }
    wb.flush().await.unwrap();

    let stats = wb.stats();
    print_stats("read-only source", &stats);
    assert_eq!(
        (stats.retries, stats.dead_letters, stats.written),
        (3, 3, 0)
    );
    // 4 attempts of the batch, then each write once on its own.
    assert_eq!(stats.failures, 4 + 3);
    let letters = letters.lock().unwrap().clone();
    assert_eq!(letters.len(), 3);
    for (i, (key, value, kind, attempts)) in letters.iter().enumerate() {
        assert_eq!(key, &keys[i]);
        assert_eq!(value.as_ref(), Some(&product(i, 0)));
        assert_eq!((*kind, *attempts), (ErrorKind::Loader, 5));
    }
    // The cache does not keep values the source never got.
    eventually(Duration::from_secs(5), "dead letters evicted", || async {
        cache
            .get_many(&keys)
            .await
            .unwrap()
            .iter()
            .all(Option::is_none)
    })
    .await;

    products.make_writable().await.unwrap();
    wb.put(&keys[0], product(0, 1)).await.unwrap();
    wb.flush().await.unwrap();
    assert_eq!(products.get_direct("0").await.unwrap(), Some(product(0, 1)));
}

/// Fails its first `fail` calls (temporary errors), and panics on a product named "poison".
struct Flaky {
    inner: Products,
    fail: AtomicU64,
}

#[async_trait]
impl Writer<Product> for Flaky {
    async fn write(&self, key: &Key, value: &Product) -> Result<()> {
        assert_ne!(value.name, "poison", "poisoned write");
        self.inner.write(key, value).await
    }
    async fn remove(&self, key: &Key) -> Result<()> {
        self.inner.remove(key).await
    }
    async fn write_many(&self, items: &[(Key, Product)]) -> Result<()> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::loader("flaky").set_temporary(true));
        }
        assert!(
            items.iter().all(|(_, p)| p.name != "poison"),
            "poisoned batch"
        );
        self.inner.write_many(items).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_are_retried_and_a_panicking_writer_is_a_failure() {
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    let letters = Letters::default();
    let flaky = Arc::new(Flaky {
        inner: products.clone(),
        fail: AtomicU64::new(2),
    });
    let wb = WriteBehind::builder(moka(), flaky)
        .backoff(Duration::from_millis(1), Duration::from_millis(4))
        .dead_letter(collect(&letters))
        .build()
        .unwrap();
    wb.put(&ns.key("1").unwrap(), product(1, 0)).await.unwrap();
    wb.flush().await.unwrap();
    let stats = wb.stats();
    assert_eq!((stats.retries, stats.failures, stats.written), (2, 2, 1));
    assert_eq!(products.get_direct("1").await.unwrap(), Some(product(1, 0)));

    // A panic in write_many sinks no good write: the batch is retried write by write.
    let mut poison = product(2, 0);
    poison.name = "poison".into();
    wb.put(&ns.key("2").unwrap(), poison).await.unwrap();
    wb.put(&ns.key("3").unwrap(), product(3, 0)).await.unwrap();
    wb.flush().await.unwrap();
    assert_eq!(products.get_direct("3").await.unwrap(), Some(product(3, 0)));
    assert_eq!(products.get_direct("2").await.unwrap(), None);
    let letters = letters.lock().unwrap().clone();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, ns.key("2").unwrap());
    assert_eq!(letters[0].2, ErrorKind::Loader);
    let stats = wb.stats();
    assert_eq!(stats.retries, 2, "a panic is permanent: no retry");

    // The worker lives on.
    wb.put(&ns.key("4").unwrap(), product(4, 0)).await.unwrap();
    wb.flush().await.unwrap();
    assert_eq!(products.get_direct("4").await.unwrap(), Some(product(4, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_dropping_the_last_handle_drains_too() {
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    let wb = WriteBehind::builder(moka(), Arc::new(products.clone()))
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    for i in 0..10 {
        wb.put(&ns.key(i).unwrap(), product(i, 0)).await.unwrap();
    }
    wb.shutdown().await.unwrap();
    assert_eq!(products.count().await.unwrap(), 10);
    let err = wb
        .put(&ns.key("x").unwrap(), product(0, 0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    wb.shutdown().await.unwrap();

    let wb = WriteBehind::builder(moka(), Arc::new(products.clone()))
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    wb.put(&ns.key("10").unwrap(), product(10, 0))
        .await
        .unwrap();
    drop(wb);
    eventually(Duration::from_secs(5), "drained after drop", || async {
        products.count().await.unwrap() == 11
    })
    .await;
}

/// A cache whose `set` waits until told, to cancel a put in the middle of it.
#[derive(Debug)]
struct SlowSet {
    inner: Arc<dyn Backend<Product>>,
    entered: Arc<Notify>,
}

#[async_trait]
impl Backend<Product> for SlowSet {
    async fn get(&self, key: &Key) -> Result<Option<Entry<Product>>> {
        self.inner.get(key).await
    }
    async fn set(&self, _key: &Key, _entry: Entry<Product>) -> Result<()> {
        self.entered.notify_one();
        std::future::pending().await
    }
    async fn delete(&self, key: &Key) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        self.inner.clear(namespace).await
    }
    fn name(&self) -> &'static str {
        "slow-set"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_cancelled_during_the_cache_update_leaves_no_stale_value() {
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    let inner = moka();
    let key = ns.key("1").unwrap();
    let old = EntryOptions::default()
        .entry(
            product(1, 0),
            layercache_core::Timestamp::from_millis(u64::MAX / 4),
            Duration::ZERO,
        )
        .unwrap();
    inner.set(&key, old).await.unwrap();
    let entered = Arc::new(Notify::new());
    let cache = Arc::new(SlowSet {
        inner: Arc::clone(&inner),
        entered: Arc::clone(&entered),
    });
    let wb = WriteBehind::builder(cache, Arc::new(products.clone()))
        .build()
        .unwrap();
    let put = tokio::spawn({
        let (wb, key) = (wb.clone(), key.clone());
        async move { wb.put(&key, product(1, 1)).await }
    });
    entered.notified().await;
    put.abort();
    assert!(put.await.unwrap_err().is_cancelled());
    eventually(
        Duration::from_secs(5),
        "the old value is removed",
        || async { inner.get(&key).await.unwrap().is_none() },
    )
    .await;
    wb.flush().await.unwrap();
    assert_eq!(products.get_direct("1").await.unwrap(), Some(product(1, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_against_write_through_on_the_same_workload() {
    const PUTS: usize = 10_000;
    const KEYS: usize = 1_000;
    let server = RedisServer::start();
    let cache = redis_cache(&server.url()).await;
    let ns = unique_space().namespace("products").unwrap();
    let keys: Vec<Key> = (0..KEYS).map(|i| ns.key(i).unwrap()).collect();
    let options = EntryOptions::default();

    // Write-through style: the source, then the cache, per put.
    let products = source(&ns).await;
    let started = Instant::now();
    for n in 0..PUTS {
        let (i, round) = (n % KEYS, n / KEYS);
        products.write(&keys[i], &product(i, round)).await.unwrap();
        let entry = options
            .entry(
                product(i, round),
                layercache_core::Timestamp::from_millis(0)
                    + Duration::from_secs(u64::from(u32::MAX)),
                Duration::ZERO,
            )
            .unwrap();
        cache.set(&keys[i], entry).await.unwrap();
    }
    let sync = started.elapsed();

    let products = source(&ns).await;
    let wb = WriteBehind::builder(Arc::clone(&cache), Arc::new(products.clone()))
        .build()
        .unwrap();
    let started = Instant::now();
    for n in 0..PUTS {
        let (i, round) = (n % KEYS, n / KEYS);
        wb.put(&keys[i], product(i, round)).await.unwrap();
    }
    let behind = started.elapsed();
    wb.flush().await.unwrap();
    let behind_flushed = started.elapsed();
    let stats = wb.stats();
    print_stats("throughput (memory)", &stats);
    println!(
        "{PUTS} puts over {KEYS} keys, one caller (debug build): write-through {:.0}/s ({sync:?}); \
         write-behind {:.0}/s acknowledged ({behind:?}), all in the source after {behind_flushed:?}; \
         source write calls {} vs {PUTS}",
        PUTS as f64 / sync.as_secs_f64(),
        PUTS as f64 / behind.as_secs_f64(),
        products.stats().write_calls(),
    );
    assert_eq!(products.count().await.unwrap(), KEYS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_tiered_cache_its_writes_are_the_cache_own_and_win_over_older_loads() {
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    products.insert(&product(1, 0)).await.unwrap();
    let cache = layercache_tiered::TieredCache::<Product>::builder()
        .build()
        .unwrap();
    let wb = WriteBehind::builder(Arc::new(cache.as_backend()), Arc::new(products.clone()))
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    let key = ns.key("1").unwrap();

    // A read of the cache loads round 0 from the source, slowly...
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn({
        let (cache, source) = (cache.clone(), products.clone());
        let key = key.clone();
        async move {
            cache
                .get_or_load(&key, move |key: Key| async move {
                    let old = source.get_direct(source.id_of(&key)?).await?;
                    let _ = read_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, Error>(old)
                })
                .await
        }
    });
    read_rx.await.unwrap();
    // ...while a write-behind put lands in the cache at once, before the source has it.
    wb.put(&key, product(1, 1)).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(product(1, 1)));
    release_tx.send(()).unwrap();
    assert_eq!(reader.await.unwrap().unwrap(), Some(product(1, 0)));
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Some(product(1, 1)),
        "the older load did not overwrite the put"
    );

    wb.flush().await.unwrap();
    assert_eq!(products.get_direct("1").await.unwrap(), Some(product(1, 1)));
    wb.delete(&key).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), None);
    wb.shutdown().await.unwrap();
    assert_eq!(products.get_direct("1").await.unwrap(), None);
    assert_eq!(cache.in_flight(), (0, 0, 0));
}
