//! The quickstart with Redis as the cache: a value cached by one process is there for the next.
//!
//! Needs a Redis at `REDIS_URL` (default `redis://127.0.0.1:6379/`). Run it with
//! `cargo run --example redis`; run it twice to see the second run start with hits.

use std::time::{Duration, Instant};

use layercache::redis::RedisBackend;
use layercache::{Backend, Clock, EntryOptions, KeySpace, SystemClock};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Product {
    id: u32,
    name: String,
    price_cents: u64,
}

/// The slow source of truth: 50 ms per lookup.
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
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let cache = RedisBackend::connect(url.as_str()).await?;
    let products = KeySpace::new("layercache-example")?.namespace("products")?;
    let options = EntryOptions::new(Duration::from_secs(30));
    let (mut hits, mut misses) = (0u32, 0u32);

    for round in 1..=3 {
        for id in [7, 42] {
            let key = products.key(id)?;
            let started = Instant::now();
            let cached: Option<layercache::Entry<Product>> = cache.get(&key).await?;
            let (product, hit) = match cached {
                Some(entry) => (entry.value, true),
                None => {
                    let product = load_product(id).await;
                    let entry =
                        options.entry(product.clone(), SystemClock.now(), started.elapsed())?;
                    cache.set(&key, entry).await?;
                    (product, false)
                }
            };
            if hit {
                hits += 1
            } else {
                misses += 1
            }
            println!(
                "round {round}: {key:<34} {:<4} {:>10.3?}  {}",
                if hit { "hit" } else { "miss" },
                started.elapsed(),
                product.name
            );
        }
    }
    println!(
        "hits: {hits}, misses: {misses}, hit ratio: {:.0}%",
        f64::from(hits) * 100.0 / f64::from(hits + misses)
    );
    println!("backend: {cache:?}");
    Ok(())
}
