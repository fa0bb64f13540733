//! Durable write-behind: puts land in the cache (Redis) at once and in the database (SQLite, in a
//! temporary file) later, in batches; every put is journaled in a Redis Stream before it returns,
//! so a crash loses nothing that was acknowledged.
//!
//! Needs a Redis at `REDIS_URL` (default `redis://127.0.0.1:6379/`). Run it with
//! `cargo run --release --example write_behind`. It ends with a measurement of put throughput:
//! write-through (the database, then the cache, per put) against write-behind, in memory and
//! durable, on the same workload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::redis::{RedisBackend, RedisWriteJournal};
use layercache::strategy::{WriteBehind, WriteBehindStats};
use layercache::{
    Backend, Clock, EntryOptions, Key, KeySpace, Namespace, SystemClock, WriteJournal, Writer,
};
use layercache_testkit::sqlite::{Product, Products};

const STREAM: &str = "layercache-example:write-behind";
const PUTS: usize = 10_000;

const KEYS: usize = 1_000;

fn product(id: usize, round: usize) -> Product {
    Product::new(
        id.to_string(),
        format!("product #{id}"),
        1_000 + round as i64,
    )
    .with_version(round as i64)
}

fn batches(stats: &WriteBehindStats) -> String {
    format!(
        "{} batches (mean {:.1}, max {} writes), {} writes coalesced away",
        stats.batches,
        stats.mean_batch(),
        stats.max_batch,
        stats.coalesced
    )
}

async fn write_behind(
    cache: &Arc<dyn Backend<Product>>,
    db: &Products,
    journal: Option<&RedisWriteJournal>,
) -> layercache::Result<WriteBehind<Product>> {
    let builder = WriteBehind::builder(Arc::clone(cache), Arc::new(db.clone()))
        .options(EntryOptions::new(Duration::from_secs(300)))
        .dead_letter(|letter| eprintln!("dead letter: {} ({})", letter.key, letter.error));
    match journal {
        Some(journal) => builder.durable(Arc::new(journal.clone())).build(),
        None => builder.build(),
    }
}

/// Where a measured put goes.
#[derive(Clone)]
enum Target {
    /// The cache only: the floor every variant pays.
    Cache(Arc<dyn Backend<Product>>),
    /// The database, then the cache.
    WriteThrough(Arc<dyn Backend<Product>>, Products),
    /// A write-behind.
    Behind(WriteBehind<Product>),
}

impl Target {
    async fn put(&self, key: &Key, value: Product) -> layercache::Result<()> {
        let entry = |value| {
            EntryOptions::new(Duration::from_secs(300)).entry(
                value,
                SystemClock.now(),
                Duration::ZERO,
            )
        };
        match self {
            Target::Cache(cache) => cache.set(key, entry(value)?).await,
            Target::WriteThrough(cache, db) => {
                db.write(key, &value).await?;
                cache.set(key, entry(value)?).await
            }
            Target::Behind(wb) => wb.put(key, value).await,
        }
    }
}

/// 10,000 puts over 1,000 keys from `callers` concurrent callers (caller c puts the keys
/// ≡ c mod callers, round after round): puts per second acknowledged.
async fn measure(ns: &Namespace, target: &Target, callers: usize) -> layercache::Result<f64> {
    let keys: Arc<Vec<Key>> = Arc::new((0..KEYS).map(|i| ns.key(i)).collect::<Result<_, _>>()?);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (target, keys) = (target.clone(), Arc::clone(&keys));
            tokio::spawn(async move {
                for round in 0..PUTS / KEYS {
                    for id in (c..KEYS).step_by(callers) {
                        target.put(&keys[id], product(id, round)).await?;
                    }
                }
                Ok::<_, layercache::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| layercache::Error::unavailable(e.to_string()))??;
    }
    Ok(PUTS as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> layercache::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let redis = RedisBackend::connect(url.as_str()).await?;
    let cache: Arc<dyn Backend<Product>> = Arc::new(redis);
    let ns = KeySpace::new("layercache-example")?.namespace("wb-products")?;
    let db = Products::create().await?.with_namespace(ns.clone());
    println!("database: {}", db.path().display());

    // The journal: a Redis Stream with one consumer group. Entries a previous run left pending
    // (had it been killed) are taken over by this run's worker.
    let journal = RedisWriteJournal::connect(url.as_str(), STREAM).await?;
    let wb = write_behind(&cache, &db, Some(&journal)).await?;

    let key = ns.key("42")?;
    let started = Instant::now();
    wb.put(&key, product(42, 1)).await?;
    println!(
        "put {key} in {:?}: journaled in {STREAM}, cached; database has it: {}",
        started.elapsed(),
        db.get_direct("42").await?.is_some()
    );
    for round in 2..=5 {
        wb.put(&key, product(42, round)).await?;
    }
    let cached = cache.get(&key).await?.map(|e| e.value.version);
    println!("4 more puts of {key}: the cache has version {cached:?}");
    wb.flush().await?;
    println!(
        "flushed after {:?}: database has version {:?}; journal backlog {}",
        started.elapsed(),
        db.get_direct("42").await?.map(|p| p.version),
        journal.backlog().await?.entries
    );
    wb.delete(&key).await?;
    wb.flush().await?;
    println!(
        "deleted {key}: cache {:?}, database {:?}",
        cache.get(&key).await?.map(|e| e.value.version),
        db.get_direct("42").await?
    );
    wb.shutdown().await?;

    for callers in [1, 16] {
        println!("\n{PUTS} puts over {KEYS} keys, {callers} concurrent caller(s):");
        let rate = measure(&ns, &Target::Cache(Arc::clone(&cache)), callers).await?;
        println!("  cache set only (floor) {rate:>8.0} puts/s");
        let db = Products::create().await?.with_namespace(ns.clone());
        let target = Target::WriteThrough(Arc::clone(&cache), db.clone());
        let started = Instant::now();
        let rate = measure(&ns, &target, callers).await?;
        println!(
            "  write-through          {rate:>8.0} puts/s  (all in the database after {:?}; {} database write calls)",
            started.elapsed(),
            db.stats().write_calls()
        );
        for durable in [false, true] {
            let db = Products::create().await?.with_namespace(ns.clone());
            let wb = write_behind(&cache, &db, durable.then_some(&journal)).await?;
            let started = Instant::now();
            let rate = measure(&ns, &Target::Behind(wb.clone()), callers).await?;
            wb.flush().await?;
            let stats = wb.stats();
            println!(
                "  write-behind {:<9} {rate:>8.0} puts/s  (all in the database after {:?}; {} database write calls; {})",
                if durable { "durable" } else { "in memory" },
                started.elapsed(),
                db.stats().write_calls(),
                batches(&stats)
            );
            wb.shutdown().await?;
        }
    }
    Ok(())
}
