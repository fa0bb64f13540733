//! Quickstart: an in-process cache (moka) in front of a deliberately slow function.
//!
//! Needs no server. Run it with `cargo run --example quickstart`.
//!
//! The first read of each key misses and pays for the slow source; the reads after it are served
//! from memory. It prints each read's latency and, at the end, the hit ratio.

use std::time::{Duration, Instant};

use layercache::moka::MokaBackend;
use layercache::{Backend, Clock, EntryOptions, Key, KeySpace, SystemClock};
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

/// Cache-aside by hand: read the cache, and on a miss load and store.
async fn get_product(
    cache: &MokaBackend<Product>,
    options: &EntryOptions,
    key: &Key,
    id: u32,
) -> layercache::Result<(Product, bool)> {
    if let Some(entry) = cache.get(key).await? {
        return Ok((entry.value, true));
    }
    let started = Instant::now();
    let product = load_product(id).await;
    let entry = options.entry(product.clone(), SystemClock.now(), started.elapsed())?;
    cache.set(key, entry).await?;
    Ok((product, false))
}

#[tokio::main]
async fn main() -> layercache::Result<()> {
    let products = KeySpace::new("shop")?.namespace("products")?;
    let cache: MokaBackend<Product> = MokaBackend::builder().max_entries(10_000).build()?;
    let options = EntryOptions::new(Duration::from_secs(60)).with_jitter(Duration::from_secs(5));

    for round in 1..=3 {
        for id in [7, 42] {
            let key = products.key(&id.to_string())?;
            let started = Instant::now();
            let (product, hit) = get_product(&cache, &options, &key, id).await?;
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

    let stats = cache.stats();
    println!(
        "hits: {}, misses: {}, hit ratio: {:.0}%",
        stats.hits,
        stats.misses,
        stats.hit_ratio() * 100.0
    );
    Ok(())
}
