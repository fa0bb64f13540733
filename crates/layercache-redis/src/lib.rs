//! The shared tier of layercache: [`RedisBackend`], a [`Backend`](layercache_core::Backend) over Redis.
//!
//! Commands travel over one shared multiplexed `ConnectionManager` — what the redis-rs maintainers
//! recommend for short non-blocking commands — or, on request, a deadpool-redis pool. Every command
//! is bounded by a timeout; idempotent reads are retried once after a dropped connection. Values are
//! stored as versioned [envelopes](layercache_core::envelope): bytes that do not decode are a miss and
//! a counted metric, never a panic.
//!
//! ```no_run
//! use std::time::Duration;
//! use layercache_core::{Backend, Clock, EntryOptions, KeySpace, SystemClock};
//! use layercache_redis::RedisBackend;
//!
//! # async fn demo() -> layercache_core::Result<()> {
//! let redis = RedisBackend::builder("redis://127.0.0.1:6379")
//!     .command_timeout(Duration::from_millis(100))
//!     .connect()
//!     .await?;
//! let key = KeySpace::new("app")?.namespace("users")?.key("42")?;
//! let entry = EntryOptions::new(Duration::from_secs(60)).entry("Ada".to_owned(), SystemClock.now(), Duration::ZERO)?;
//! redis.set(&key, entry).await?;
//! let back: Option<_> = Backend::<String>::get(&redis, &key).await?;
//! assert_eq!(back.map(|e| e.value).as_deref(), Some("Ada"));
//! # Ok(()) }
//! ```

mod access;
mod backend;
mod backplane;
mod cluster;
mod connection;
mod keyspace;
mod link;
mod lock;
mod stream;
mod tls;
mod tracking;
mod url;

pub use access::{PermissionDenied, RedisFeature};
pub use backend::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RECONNECT_DELAY,
    DEFAULT_MAX_VALUE_SIZE, DEFAULT_POOL_SIZE, DEFAULT_SCAN_BATCH, DEFAULT_TAG_PREFIX,
    RedisBackend, RedisBackendBuilder, RedisStats,
};
pub use backplane::{DEFAULT_CHANNEL, PubSubStats, RedisPubSub, RedisPubSubBuilder};
pub use connection::DEFAULT_TRANSFER_RATE;
pub use link::DEFAULT_PING_INTERVAL;
pub use lock::{DEFAULT_LOCK_PREFIX, RedisLockStore};
pub use stream::{
    DEFAULT_JOURNAL_GROUP, DEFAULT_JOURNAL_POOL_SIZE, DEFAULT_MAX_BLOCK, RedisWriteJournal,
    RedisWriteJournalBuilder,
};
pub use tracking::{RedisTracking, RedisTrackingBuilder, TRACKING_CLIENT_NAME, TrackingStats};
