//! layercache: layered caching for Rust services that sit in front of a slow source of truth.
//!
//! A fast in-process tier (moka) over a shared tier (Redis), behind one [`Backend`] trait, as a
//! workspace of small crates. This facade re-exports them behind features and has no logic of
//! its own:
//!
//! | feature   | default | brings                                          |
//! |-----------|---------|-------------------------------------------------|
//! | `moka`    | yes     | [`moka::MokaBackend`], the in-process tier      |
//! | `redis`   | no      | `redis::RedisBackend`, the shared tier          |
//! | `stampede`| no      | `stampede`: single-flight, distributed lock, XFetch, `GuardedCache` |
//! | `strategy`| no      | `strategy`: cache-aside, read-through, write-through, write-behind |
//! | `tiered`  | no      | `TieredCache`: L1 + L2 with everything composed (the main entry point) |
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
pub use layercache_tiered::{TieredCache, TieredCacheBuilder, TieredStats};

#[cfg(all(doctest, feature = "tiered"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
