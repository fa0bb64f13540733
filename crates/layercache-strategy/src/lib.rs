//! Caching strategies for layercache, over any [`Backend`](layercache_core::Backend) and the core
//! [`Loader`](layercache_core::Loader) / [`Writer`](layercache_core::Writer) traits.
//!
//! | strategy | reads | writes |
//! |---|---|---|
//! | [`CacheAside`] | the caller reads the cache, loads on a miss (`get_or_load`), stores | the caller writes the source, then sets or deletes the cache |
//! | [`ReadThrough`] | the cache owns its loader; batches misses into one `load_many` | — |
//! | [`WriteThrough`] | through the cache | source first, then the cache, with no stale window |
//! | `WriteBehind` | through the cache | the cache now, the source later in coalesced batches; durable mode journals every write in a Redis Stream first |
//!
//! All of them cache the source's "absent" (negative caching) with a short TTL, coalesce concurrent
//! loads (single-flight) and never let a cache failure fail a read.

mod cache_aside;
mod read_through;
mod write_through;

pub use cache_aside::{AbsentAsValue, CacheAside, CacheAsideBuilder, DEFAULT_NEGATIVE_TTL};
pub use read_through::ReadThrough;
pub use write_through::{WriteThrough, WriteThroughStats};

mod write_behind;
pub use write_behind::{
    DEFAULT_BATCH_SIZE, DEFAULT_CAPACITY, DEFAULT_CLAIM_IDLE, DEFAULT_CLAIM_INTERVAL,
    DEFAULT_FULL_WAIT, DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_DELAY,
    DEFAULT_MAX_RETRIES, DEFAULT_READ_BLOCK, DEFAULT_WRITE_TIMEOUT, DeadLetter, QueueFull,
    WhenFull, WriteBehind, WriteBehindBuilder, WriteBehindStats,
};
