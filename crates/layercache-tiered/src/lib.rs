//! The two-tier layercache: [`TieredCache`], the one cache type. An in-process L1 (moka) over a
//! shared L2 (Redis with the `redis` feature, or any [`Backend`](layercache_core::Backend)), the
//! stampede guards of `layercache-stampede` composed around one owner of each key's state, and
//! one builder.
//!
//! # A read, layer by layer
//!
//! Outermost first; the order is behaviour (see `pipeline.rs`):
//!
//! 1. **L1 hit**: a fresh value is served with no future and no encoding. If it is due for a
//!    refresh (eager refresh at a fraction of its TTL, or XFetch), one background refresh starts.
//! 2. **Stale-while-revalidate** (per options): a stale value is served at once, one refresh runs.
//! 3. **Single-flight**: concurrent misses of a key share one load; a caller holding a stale value
//!    waits at most the soft timeout.
//! 4. **The leader**: takes a ticket in the per-key version table, re-reads L1 and L2, takes the
//!    **distributed lock** (optional), runs the loader under the **hard timeout**, falls back to
//!    **fail-safe**, and **stores** through the ticket — dropped if a write of the key began since.
//!
//! # Invariant: invalidation wins
//!
//! Every path into a tier — the L2→L1 refill, a load's store, `set`, `delete`, `clear`, a
//! write-through's write, a fail-safe extension, a refresh — goes through the version table
//! ([`Versions`](layercache_core::Versions)). Once a write, delete or clear returns, no load of this
//! process that began before it can put an older value into any tier. L2 writes are ordered per key
//! (a lane per key) and concurrent across keys.
//!
//! ```
//! use std::time::Duration;
//! use layercache_core::{EntryOptions, Key};
//! use layercache_tiered::TieredCache;
//!
//! # async fn fetch_row(key: &Key) -> Result<Option<String>, std::io::Error> { Ok(Some(format!("row {key}"))) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // L1 only here; add `.redis_url("redis://127.0.0.1:6379/")` (feature `redis`) for the shared tier.
//! let cache: TieredCache<String> = TieredCache::builder()
//!     .options(EntryOptions::new(Duration::from_secs(60))
//!         .with_stale_ttl(Duration::from_secs(600))
//!         .with_fail_safe(Duration::from_secs(5)))
//!     .build()?;
//! let key = Key::new("products:42")?;
//! let row = cache.get_or_load(&key, |key| async move { fetch_row(&key).await }).await?;
//! assert_eq!(row.as_deref(), Some("row products:42"));
//! cache.get_or_load(&key, |key| async move { fetch_row(&key).await }).await?; // an L1 hit
//! assert_eq!((cache.stats().misses, cache.stats().hits), (1, 1));
//! # Ok::<(), layercache_core::Error>(())
//! # }).unwrap();
//! ```

mod backend;
mod builder;
mod bulk;
mod cache;
mod circuit;
mod coherence;
mod lanes;
mod latency;
mod loaded;
mod pipeline;
mod stats;
mod tiers;

pub use backend::TieredBackend;
pub use builder::{
    DEFAULT_DISCONNECTED_L1_TTL, DEFAULT_INVALIDATION_WINDOW, DEFAULT_L1_MAX_ENTRIES,
    DEFAULT_L1_TTL_CAP, DEFAULT_L2_TIMEOUT, DEFAULT_MAX_WAIT, DEFAULT_NEGATIVE_TTL,
    DEFAULT_PENDING_WRITES, DEFAULT_RETRY_INTERVAL, TieredCacheBuilder,
};
pub use bulk::{DEFAULT_WARM_BATCH, DEFAULT_WARM_CONCURRENCY, WarmOutcome, WarmReport};
pub use cache::{DEFAULT_SHUTDOWN_TIMEOUT, TieredCache, WriteIntent};
pub use circuit::{CircuitState, DEFAULT_COOL_DOWN, DEFAULT_FAILURE_THRESHOLD};
pub use coherence::{MAX_NAMESPACE_EPOCHS, MAX_TAG_EPOCHS};
pub use layercache_moka::L1Policy;
pub use loaded::Loaded;
pub use stats::TieredStats;
