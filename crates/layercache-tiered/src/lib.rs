//! The two-tier layercache: [`TieredCache`] composes an in-process L1 (moka), a shared L2 (Redis),
//! the stampede guards and the strategies behind one builder.
//!
//! A read goes L1 → L2 → loader. An L1 hit costs about a raw moka `get` (no decoding, no Redis);
//! an L2 hit fills L1 for at most the L1 TTL cap; a load is coalesced per key (single-flight,
//! optionally a distributed lock across processes), measured, and stored in both tiers — L1 at
//! once, L2 in the background. When Redis is slow or down, a circuit breaker skips it, callers are
//! served from L1, stale values (fail-safe) or the loader, within the configured timeouts, and L2
//! is used again once it answers.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use layercache_core::{EntryOptions, Key, loader_fn};
//! use layercache_tiered::TieredCache;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // L1 only here; add `.redis_url("redis://127.0.0.1:6379/")` for the shared tier.
//! let cache: TieredCache<String> = TieredCache::builder()
//!     .options(EntryOptions::new(Duration::from_secs(60)).with_stale_ttl(Duration::from_secs(600)))
//!     .fail_safe(Duration::from_secs(5))
//!     .build()?;
//! let loader = Arc::new(loader_fn(|key: Key| async move { Ok(Some(format!("row {key}"))) }));
//! let key = Key::new("products:42")?;
//! assert_eq!(cache.get_or_load(&key, &loader).await?.as_deref(), Some("row products:42"));
//! assert_eq!(cache.stats().l1_hits, 0);
//! cache.get_or_load(&key, &loader).await?;
//! assert_eq!(cache.stats().l1_hits, 1);
//! # Ok::<(), layercache_core::Error>(())
//! # }).unwrap();
//! ```

mod backend;
mod cache;
mod circuit;
mod stats;

pub use backend::{DEFAULT_PENDING_WRITES, DEFAULT_RETRY_INTERVAL, TieredBackend};
pub use cache::{
    DEFAULT_L1_MAX_ENTRIES, DEFAULT_L1_TTL_CAP, DEFAULT_L2_TIMEOUT, TieredCache, TieredCacheBuilder,
};
pub use circuit::{CircuitState, DEFAULT_COOL_DOWN, DEFAULT_FAILURE_THRESHOLD};
pub use layercache_stampede::{WarmOutcome, WarmReport};
pub use stats::TieredStats;
