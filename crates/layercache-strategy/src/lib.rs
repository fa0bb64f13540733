//! Caching strategies for layercache: thin adapters that join the one cache
//! ([`TieredCache`](layercache_tiered::TieredCache), over any backend) and the source of truth
//! ([`Loader`](layercache_core::Loader) / [`Writer`](layercache_core::Writer)). Cache-aside is the
//! cache itself (`TieredCache::get_or_load`).
//!
//! | strategy | reads | writes |
//! |---|---|---|
//! | cache-aside (`TieredCache`) | the caller reads the cache, loads on a miss (`get_or_load`), stores | the caller writes the source, then sets or deletes the cache |
//! | [`ReadThrough`] | the cache owns its loader; batches misses into one `load_many` | — |
//! | [`WriteThrough`] | through the cache | source first, then the cache, with no stale window |
//! | `WriteBehind` | through the cache | the cache now, the source later in coalesced batches; durable mode journals every write in a Redis Stream first |
//!
//! `ReadThrough` and `WriteThrough` take the `TieredCache` itself; `WriteBehind` takes any
//! `Backend`, so give it `Arc::new(cache.as_backend())` to make its cache writes the cache's own
//! (they then invalidate the cache's loads in flight like any other write).

mod read_through;
mod write_through;

pub use read_through::ReadThrough;
pub use write_through::{WriteThrough, WriteThroughStats};

mod write_behind;
pub use write_behind::{
    DEFAULT_BATCH_SIZE, DEFAULT_CAPACITY, DEFAULT_CLAIM_IDLE, DEFAULT_CLAIM_INTERVAL,
    DEFAULT_FULL_WAIT, DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_DELAY,
    DEFAULT_MAX_RETRIES, DEFAULT_READ_BLOCK, DEFAULT_WRITE_TIMEOUT, DeadLetter, QueueFull,
    WhenFull, WriteBehind, WriteBehindBuilder, WriteBehindStats,
};
