//! Stampede guards for layercache: what keeps a popular key's expiry from sending every caller
//! to the source of truth at once.
//!
//! - [`SingleFlight`]: per-key coalescing in one process; cancellation- and panic-safe.
//! - [`DistributedLock`]: across processes, one loads (`SET NX PX` with a token, a lease extended by
//!   a watchdog, a compare-and-delete release) and the others wait for its value, bounded.
//!   The lock lives in a [`LockStore`](layercache_core::LockStore); `layercache-redis` provides one.
//! - [`EarlyExpiry`]: XFetch probabilistic early refresh, so a hot key is refreshed before it expires.
//! - [`GuardedCache`]: `get_or_load` over any backend with the guards composed in the right order
//!   (its documentation explains the order and what the wrong one costs).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use layercache_core::{Backend, EntryOptions, Key, Loader, loader_fn};
//! use layercache_moka::MokaBackend;
//! use layercache_stampede::{EarlyExpiry, GuardedCache};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let backend: Arc<dyn Backend<String>> = Arc::new(MokaBackend::builder().build()?);
//! let cache = GuardedCache::builder(backend)
//!     .options(EntryOptions::new(Duration::from_secs(60)))
//!     .early_expiry(EarlyExpiry::default())
//!     .build()?;
//! let loader = Arc::new(loader_fn(|key: Key| async move { Ok(Some(format!("value of {key}"))) }));
//!
//! let key = Key::new("k")?;
//! let (a, b) = tokio::join!(cache.get_or_load(&key, &loader), cache.get_or_load(&key, &loader));
//! assert_eq!(a?, b?);
//! assert_eq!(cache.stats().loads, 1); // the two callers shared one load
//! # Ok::<(), layercache_core::Error>(())
//! # }).unwrap();
//! ```

mod early;
mod generations;
mod guarded;
mod lock;
mod single_flight;

pub use early::{DEFAULT_BETA, EarlyExpiry, RandomSource, SeededRandom, ThreadRandom};
pub use guarded::{
    DEFAULT_WARM_CONCURRENCY, GuardedCache, GuardedCacheBuilder, GuardedStats, OptionsPolicy,
    WarmOutcome, WarmReport, WriteGuard,
};
pub use lock::{
    DEFAULT_LEASE, DEFAULT_LOCK_MAX_WAIT, DEFAULT_POLL_INITIAL, DEFAULT_POLL_MAX, DistributedLock,
    LockGuard, LockOptions, OnLockTimeout,
};
pub use single_flight::{DEFAULT_MAX_WAIT, LANDED_LINGER, SingleFlight, SingleFlightStats};
