//! layercache: layered caching for Rust services that sit in front of a slow source of truth.
//!
//! A fast in-process tier (moka) over a shared tier (Redis), behind one [`Backend`] trait, as a
//! workspace of small crates. This facade re-exports them behind features and has no logic of
//! its own:
//!
//! | feature   | default | brings                                          |
//! |-----------|---------|-------------------------------------------------|
//! | `moka`    | yes     | [`moka::MokaBackend`], the in-process tier      |
//! | `redis`   | no      | `redis::RedisBackend`, the shared tier (and Redis as `TieredCache`'s L2) |
//! | `stampede`| no      | `stampede`: single-flight, distributed lock, XFetch |
//! | `strategy`| no      | `strategy`: read-through, write-through, write-behind over the cache |
//! | `tiered`  | no      | `TieredCache`: the one cache, L1 + optional L2, everything composed (the main entry point); no Redis unless `redis` is on |
//! | `metrics` | no      | `TieredCache::publish_metrics` through the `metrics` facade |
//! | `msgpack` | no      | `MsgPackCodec`, a compact binary codec          |
//!
//! The core types ([`Backend`], [`Entry`], [`EntryOptions`], [`Key`], [`KeySpace`], [`Error`], …)
//! are re-exported at the root.
//!
//! ```
//! use std::time::Duration;
//! use layercache::{Backend, Clock, EntryOptions, KeySpace, SystemClock};
//! use layercache::moka::MokaBackend;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let users = KeySpace::new("app")?.namespace("users")?;
//! let cache = MokaBackend::<String>::builder().max_entries(10_000).build()?;
//! let options = EntryOptions::new(Duration::from_secs(60)).with_jitter(Duration::from_secs(5));
//!
//! let key = users.key("42")?;
//! cache.set(&key, options.entry("Ada".to_owned(), SystemClock.now(), Duration::ZERO)?).await?;
//! assert_eq!(cache.get(&key).await?.map(|e| e.value), Some("Ada".to_owned()));
//! # Ok::<(), layercache::Error>(())
//! # }).unwrap();
//! ```

#[doc(inline)]
pub use layercache_core::*;

/// The in-process tier (`layercache-moka`).
#[cfg(feature = "moka")]
pub mod moka {
    #[doc(inline)]
    pub use layercache_moka::*;
}

/// The shared tier (`layercache-redis`).
#[cfg(feature = "redis")]
pub mod redis {
    #[doc(inline)]
    pub use layercache_redis::*;
}

/// Stampede guards (`layercache-stampede`).
#[cfg(feature = "stampede")]
pub mod stampede {
    #[doc(inline)]
    pub use layercache_stampede::*;
}

/// Caching strategies (`layercache-strategy`).
#[cfg(feature = "strategy")]
pub mod strategy {
    #[doc(inline)]
    pub use layercache_strategy::*;
}

/// The two-tier cache (`layercache-tiered`).
#[cfg(feature = "tiered")]
pub mod tiered {
    #[doc(inline)]
    pub use layercache_tiered::*;
}

#[cfg(feature = "tiered")]
#[doc(inline)]
pub use layercache_tiered::{L1Policy, Loaded, TieredCache, TieredCacheBuilder, TieredStats};

#[cfg(all(doctest, feature = "tiered", feature = "redis"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
