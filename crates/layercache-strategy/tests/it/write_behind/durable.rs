//! Durable write-behind: the journal is a Redis Stream; a killed process loses nothing it
//! acknowledged; a failing source loses nothing either.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache_core::{
    Backend, ErrorKind, Key, KeySpace, Namespace, Result, WriteJournal, Writer, async_trait,
};
use layercache_redis::{RedisBackend, RedisWriteJournal, RedisWriteJournalBuilder};
use layercache_strategy::{QueueFull, WhenFull, WriteBehind};
use layercache_testkit::conformance::unique_space;
use layercache_testkit::sqlite::{Product, Products};
use layercache_testkit::{RedisCluster, RedisServer};

use super::{Gated, Letters, collect, eventually, moka, print_stats, product, redis_cache, source};

const CHILD_ROLE: &str = "LAYERCACHE_WB_CHILD_ROLE";
const CHILD_REDIS: &str = "LAYERCACHE_WB_CHILD_REDIS";
const CHILD_DB: &str = "LAYERCACHE_WB_CHILD_DB";
const CHILD_PREFIX: &str = "LAYERCACHE_WB_CHILD_PREFIX";
const STREAM: &str = "wb:journal";

/// Where the journal and the cache live: one server, or a Redis Cluster (the same code; only the
/// connection settings change).
#[derive(Clone, Debug)]
enum Shared {
    Server(String),
    Cluster(Vec<String>),
}

impl Shared {
    fn server(server: &RedisServer) -> Self {
        Shared::Server(server.url())
    }

    fn cluster(cluster: &RedisCluster) -> Self {
        Shared::Cluster(cluster.urls())
    }

    /// How a child process is told (see [`from_env`](Self::from_env)).
    fn to_env(&self) -> String {
        match self {
            Shared::Server(url) => format!("server {url}"),
            Shared::Cluster(nodes) => format!("cluster {}", nodes.join(",")),
        }
    }

    fn from_env(text: &str) -> Self {
        match text.split_once(' ') {
            Some(("server", url)) => Shared::Server(url.to_owned()),
            Some(("cluster", nodes)) => {
                Shared::Cluster(nodes.split(',').map(str::to_owned).collect())
            }
            _ => panic!("{CHILD_REDIS}={text}"),
        }
    }

    fn journal_builder(&self, stream: &str) -> RedisWriteJournalBuilder {
        let builder = match self {
            Shared::Server(url) => RedisWriteJournal::builder(url, stream),
            Shared::Cluster(nodes) => {
                RedisWriteJournal::cluster_builder(nodes.iter().cloned(), stream)
            }
        };
        builder
            .command_timeout(Duration::from_secs(2))
            .max_block(Duration::from_millis(200))
    }

    async fn journal(&self, stream: &str) -> RedisWriteJournal {
        self.journal_builder(stream).connect().await.unwrap()
    }

    /// A Redis cache of products.
    async fn cache(&self) -> Arc<dyn Backend<Product>> {
        match self {
            Shared::Server(url) => redis_cache(url).await,
            Shared::Cluster(nodes) => Arc::new(
                RedisBackend::cluster_builder(nodes.iter().cloned())
                    .command_timeout(Duration::from_secs(2))
                    .connect()
                    .await
                    .unwrap(),
            ),
        }
    }
}

async fn journal(url: &str, stream: &str) -> RedisWriteJournal {
    Shared::Server(url.to_owned()).journal(stream).await
}

/// A durable write-behind tuned for tests: short blocks and batches, quick takeover.
async fn durable(
    journal: RedisWriteJournal,
    cache: Arc<dyn Backend<Product>>,
    writer: Arc<dyn Writer<Product>>,
    claim_idle: Duration,
) -> layercache_core::Result<(WriteBehind<Product>, RedisWriteJournal)> {
    let wb = WriteBehind::builder(cache, writer)
        .max_delay(Duration::from_millis(5))
        .max_retries(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(4))
        .durable(Arc::new(journal.clone()))
        .claim_idle(claim_idle)
        .claim_interval(Duration::from_millis(50))
        .read_block(Duration::from_millis(50))
        .build()?;
    Ok((wb, journal))
}

/// Writes the first batch, then hangs on every later call: its worker keeps a batch pending.
struct StallAfterFirst {
    inner: Products,
    calls: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Writer<Product> for StallAfterFirst {
    async fn write(&self, key: &Key, value: &Product) -> Result<()> {
        self.write_many(&[(key.clone(), value.clone())]).await
    }
    async fn remove(&self, key: &Key) -> Result<()> {
        self.inner.remove(key).await
    }
    async fn write_many(&self, items: &[(Key, Product)]) -> Result<()> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            std::future::pending::<()>().await;
        }
        self.inner.write_many(items).await
    }
}

const WRITES: usize = 10_000;
const KILL_AFTER: usize = 2_000;
const KILLED: &str = "write_behind::durable::a_killed_writer_loses_nothing_it_acknowledged";
const KILLED_CLUSTER: &str =
    "write_behind::durable::a_killed_writer_loses_nothing_it_acknowledged_on_a_cluster";

/// The child: 4 tasks put the 10,000 products (one key each) and print `ACK <id>` once `put`
/// has returned `Ok`; then it waits to be killed.
async fn child(redis: Shared, db: String, prefix: String) {
    let ns = KeySpace::new(&prefix)
        .unwrap()
        .namespace("products")
        .unwrap();
    let products = Products::open(&db)
        .await
        .unwrap()
        .with_namespace(ns.clone());
    let writer = Arc::new(StallAfterFirst {
        inner: products,
        calls: Default::default(),
    });
    let (wb, _journal) = durable(
        redis.journal(STREAM).await,
        redis.cache().await,
        writer,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let (wb, ns) = (wb.clone(), ns.clone());
            tokio::spawn(async move {
                for i in (t..WRITES).step_by(4) {
                    wb.put(&ns.key(i).unwrap(), product(i, 0)).await.unwrap();
                    println!("ACK {i}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!("ALL ACKNOWLEDGED");
    std::future::pending::<()>().await;
}

/// Runs the child's part when this process is one; `true` then.
async fn run_child() -> bool {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return false;
    };
    assert_eq!(role, "writer");
    let var = |name| std::env::var(name).unwrap();
    let redis = Shared::from_env(&var(CHILD_REDIS));
    child(redis, var(CHILD_DB), var(CHILD_PREFIX)).await;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_loses_nothing_it_acknowledged() {
    if !run_child().await {
        let server = RedisServer::start();
        killed_writer(&Shared::server(&server), KILLED).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_loses_nothing_it_acknowledged_on_a_cluster() {
    if !run_child().await {
        let cluster = RedisCluster::replicated();
        killed_writer(&Shared::cluster(&cluster), KILLED_CLUSTER).await;
    }
}

/// The writer (a child process running `test`) is SIGKILLed after 2,000 acknowledged puts; a
/// new worker takes over its journal; every acknowledged put reaches the source.
async fn killed_writer(redis: &Shared, test: &str) {
    let space = unique_space();
    let ns = space.namespace("products").unwrap();
    let products = source(&ns).await;

    let mut writer = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, "writer")
        .env(CHILD_REDIS, redis.to_env())
        .env(CHILD_DB, products.path())
        .env(CHILD_PREFIX, space.prefix())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let stdout = writer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line
                .strip_prefix("ACK ")
                .and_then(|i| i.parse::<usize>().ok())
            {
                let _ = tx.send(id);
            }
        }
    });
    let mut acknowledged = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.len() < KILL_AFTER {
        let id = tokio::time::timeout_at(deadline.into(), acks.recv())
            .await
            .expect("the writer acknowledged too few puts in time")
            .expect("the writer ended before it was killed");
        acknowledged.insert(id);
    }
    writer.kill().unwrap(); // SIGKILL
    writer.wait().unwrap();
    reader.join().unwrap();
    while let Ok(id) = acks.try_recv() {
        acknowledged.insert(id);
    }

    let taker_journal = redis.journal(STREAM).await;
    let pending = taker_journal.pending().await.unwrap();
    let backlog = taker_journal.backlog().await.unwrap();
    let written_by_child = products.count().await.unwrap();
    println!(
        "killed after {} acknowledged puts: {written_by_child} rows written by the child, \
         {} entries in the journal, {pending} of them pending for the dead worker",
        acknowledged.len(),
        backlog.entries
    );
    assert!(pending > 0, "the dead worker had a batch in flight");
    assert!(backlog.entries > 0);

    // A new worker takes over: stale pending entries through XAUTOCLAIM, the rest by reading.
    let (wb, _) = durable(
        redis.journal(STREAM).await,
        moka(),
        Arc::new(products.clone()),
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(60), wb.flush())
        .await
        .expect("the takeover finished in time")
        .unwrap();
    let stats = wb.stats();
    print_stats("takeover", &stats);
    assert!(stats.claimed >= pending, "{} claimed", stats.claimed);
    assert_eq!(taker_journal.backlog().await.unwrap().entries, 0);

    let mut lost = Vec::new();
    for &id in &acknowledged {
        if products.get_direct(&id.to_string()).await.unwrap() != Some(product(id, 0)) {
            lost.push(id);
        }
    }
    println!(
        "{} acknowledged, {} lost, {} rows in the source",
        acknowledged.len(),
        lost.len(),
        products.count().await.unwrap()
    );
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    wb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_loses_nothing_and_an_old_retry_never_overwrites_a_newer_write() {
    let server = RedisServer::start();
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    let letters = Letters::default();
    let journal = journal(&server.url(), STREAM).await;
    let wb = WriteBehind::builder(moka(), Arc::new(products.clone()))
        .max_delay(Duration::from_millis(5))
        .max_retries(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(4))
        .dead_letter(collect(&letters))
        .durable(Arc::new(journal.clone()))
        .claim_idle(Duration::from_millis(1_500))
        .claim_interval(Duration::from_millis(50))
        .read_block(Duration::from_millis(50))
        .build()
        .unwrap();
    let (one, two) = (ns.key("1").unwrap(), ns.key("2").unwrap());

    products.make_read_only().await.unwrap();
    wb.put(&one, product(1, 0)).await.unwrap();
    wb.put(&two, product(2, 0)).await.unwrap();
    // Flush returns once both are dead-lettered; they stay pending in the journal.
    wb.flush().await.unwrap();
    assert!(letters.lock().unwrap().len() >= 2);
    assert_eq!(journal.pending().await.unwrap(), 2);
    assert_eq!(products.count().await.unwrap(), 0);

    products.make_writable().await.unwrap();
    wb.put(&two, product(2, 1)).await.unwrap();
    wb.flush().await.unwrap();
    assert_eq!(products.get_direct("2").await.unwrap(), Some(product(2, 1)));
    // The old, dead-lettered write of key 2 was superseded; the one of key 1 is taken over
    // again once idle, and written.
    eventually(
        Duration::from_secs(10),
        "the dead-lettered write is retried",
        || async { products.get_direct("1").await.unwrap() == Some(product(1, 0)) },
    )
    .await;
    eventually(Duration::from_secs(10), "the journal is empty", || async {
        journal.backlog().await.unwrap().entries == 0
    })
    .await;
    assert_eq!(products.get_direct("2").await.unwrap(), Some(product(2, 1)));
    let stats = wb.stats();
    print_stats("durable, failing source", &stats);
    assert!(stats.claimed >= 1);
    assert!(stats.retries >= 2 && stats.dead_letters >= 2);
    wb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_rejects_or_waits_and_an_unreachable_one_refuses_the_write() {
    let server = RedisServer::start();
    let ns = unique_space().namespace("products").unwrap();
    let products = source(&ns).await;
    let (gated, gate) = Gated::new(products.clone(), false);
    let cache = moka();
    let journal = journal(&server.url(), STREAM).await;
    let build = |when_full| {
        WriteBehind::builder(
            Arc::clone(&cache),
            gated.clone() as Arc<dyn Writer<Product>>,
        )
        .capacity(3)
        .max_delay(Duration::from_millis(5))
        .when_full(when_full)
        .durable(Arc::new(journal.clone()))
        .read_block(Duration::from_millis(50))
        .build()
        .unwrap()
    };
    let reject = build(WhenFull::Reject);
    for i in 0..3 {
        reject
            .put(&ns.key(i).unwrap(), product(i, 0))
            .await
            .unwrap();
    }
    let err = reject
        .put(&ns.key("3").unwrap(), product(3, 0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(QueueFull::matches(&err), "{err}");
    let wait = build(WhenFull::Wait {
        max: Some(Duration::from_millis(100)),
    });
    let err = wait
        .put(&ns.key("3").unwrap(), product(3, 0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(QueueFull::matches(&err));
    assert!(cache.get(&ns.key("3").unwrap()).await.unwrap().is_none());

    gate.send(true).unwrap();
    reject.flush().await.unwrap();
    assert_eq!(products.count().await.unwrap(), 3);
    wait.put(&ns.key("3").unwrap(), product(3, 0))
        .await
        .unwrap();
    wait.flush().await.unwrap();
    assert_eq!(products.get_direct("3").await.unwrap(), Some(product(3, 0)));

    // Redis does not answer: the put fails within its bound and the cache is left without the
    // value (the append may land later, so the old value is removed rather than kept).
    let key = ns.key("4").unwrap();
    wait.put(&key, product(4, 0)).await.unwrap();
    wait.flush().await.unwrap();
    server.pause();
    let started = Instant::now();
    let err = wait.put(&key, product(4, 1)).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually(
        Duration::from_secs(5),
        "the cache forgets the key",
        || async { cache.get(&key).await.unwrap().is_none() },
    )
    .await;
    server.resume();
    reject.shutdown().await.unwrap();
    wait.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_throughput_on_the_write_through_workload() {
    const PUTS: usize = 10_000;
    const KEYS: usize = 1_000;
    let server = RedisServer::start();
    let ns: Namespace = unique_space().namespace("products").unwrap();
    let keys: Vec<Key> = (0..KEYS).map(|i| ns.key(i).unwrap()).collect();
    let products = source(&ns).await;
    let (wb, journal) = durable(
        journal(&server.url(), STREAM).await,
        redis_cache(&server.url()).await,
        Arc::new(products.clone()),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let started = Instant::now();
    for n in 0..PUTS {
        let (i, round) = (n % KEYS, n / KEYS);
        wb.put(&keys[i], product(i, round)).await.unwrap();
    }
    let acknowledged = started.elapsed();
    wb.flush().await.unwrap();
    let flushed = started.elapsed();
    let stats = wb.stats();
    print_stats("throughput (durable)", &stats);
    println!(
        "{PUTS} durable puts over {KEYS} keys, one caller (debug build): {:.0}/s acknowledged \
         ({acknowledged:?}), all in the source after {flushed:?}; source write calls {}",
        PUTS as f64 / acknowledged.as_secs_f64(),
        products.stats().write_calls()
    );
    assert_eq!(journal.backlog().await.unwrap().entries, 0);
    let rows = products.all().await.unwrap();
    assert_eq!(rows.len(), KEYS);
    for row in rows {
        let i: usize = row.id.parse().unwrap();
        assert_eq!(row, product(i, PUTS / KEYS - 1));
    }
    wb.shutdown().await.unwrap();
}
