//! Quickstart: a cache in front of a deliberately slow function, on the embedded default (moka
//! only, no server needed). Run it with `cargo run --example quickstart`.
//!
//! The first read of each key misses and pays for the slow source; the reads after it are served
//! from memory. Ten concurrent readers of a cold key share one load. It prints each read's latency
//! and, at the end, what served the reads: hits, loads, and reads that waited for another
//! caller's load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::{EntryOptions, Key, KeySpace, TieredCache};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Product {
    id: u32,
    name: String,
    price_cents: u64,
}

/// The slow source of truth: 50 ms per lookup, like a busy database.
async fn load_product(id: u32) -> Product {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Product {
        id,
        name: format!("product #{id}"),
        price_cents: 1_000 + u64::from(id) * 25,
    }
}

#[tokio::main]
async fn main() -> layercache::Result<()> {
    let products = KeySpace::new("shop")?.namespace("products")?;
    // L1 only: add `.redis_url("redis://127.0.0.1:6379/")` to share the cache between processes.
    let cache: TieredCache<Product> = TieredCache::builder()
        .options(EntryOptions::new(Duration::from_secs(60)).with_jitter(Duration::from_secs(5)))
        .build()?;
    let loads = Arc::new(std::sync::atomic::AtomicU32::new(0));
    // The loader of one key: the slow source, counted. Any error type works; this one never fails.
    let source = {
        let (loads, products) = (loads.clone(), products.clone());
        move |key: Key| {
            let (loads, products) = (loads.clone(), products.clone());
            async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = products
                    .id_of(&key)
                    .and_then(|id| id.parse().ok())
                    .unwrap_or(0);
                Ok::<_, std::convert::Infallible>(Some(load_product(id).await))
            }
        }
    };

    for round in 1..=3 {
        for id in [7, 42] {
            let key = products.key(id)?;
            let before = cache.stats();
            let started = Instant::now();
            let Some(product) = cache.get_or_load(&key, source.clone()).await? else {
                println!("round {round}: {key} is not in the source");
                continue;
            };
            let hit = cache.stats().hits > before.hits;
            println!(
                "round {round}: {key:<22} {:<4} {:>10.3?}  {} at {}.{:02}",
                if hit { "hit" } else { "miss" },
                started.elapsed(),
                product.name,
                product.price_cents / 100,
                product.price_cents % 100,
            );
        }
    }

    // Ten callers on one cold key: one load, shared.
    let key = products.key("99")?;
    let started = Instant::now();
    let readers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, source, key) = (cache.clone(), source.clone(), key.clone());
            tokio::spawn(async move { cache.get_or_load(&key, source).await })
        })
        .collect();
    for reader in readers {
        reader
            .await
            .map_err(|e| layercache::Error::loader("a reader task failed").with_source(e))??;
    }
    println!(
        "10 concurrent readers of {key}: {:.3?}, loads so far: {}",
        started.elapsed(),
        loads.load(std::sync::atomic::Ordering::Relaxed)
    );

    // Steady traffic afterwards: every read is served from memory.
    for _ in 0..10 {
        for id in [7, 42, 99] {
            cache
                .get_or_load(&products.key(id)?, source.clone())
                .await?;
        }
    }

    let stats = cache.stats();
    println!(
        "{} reads: {} hits, {} loads, {} waited for another caller's load ({} source calls in all); hit ratio {:.0}%",
        stats.reads(),
        stats.hits,
        stats.misses,
        stats.coalesced,
        stats.loads,
        stats.hit_ratio() * 100.0
    );
    Ok(())
}
