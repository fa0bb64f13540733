//! Stampede guards for layercache: what keeps a popular key's expiry from sending every caller
//! to the source of truth at once.
//!
//! - [`SingleFlight`]: per-key coalescing in one process; cancellation- and panic-safe.
//! - [`DistributedLock`]: across processes, one loads (`SET NX PX` with a token, a lease extended by
//!   a watchdog, a compare-and-delete release) and the others wait for its value, bounded.
//!   The lock lives in a [`LockStore`](layercache_core::LockStore); `layercache-redis` provides one.
//! - [`EarlyExpiry`]: XFetch probabilistic early refresh, so a hot key is refreshed before it expires.
//!
//! These are the building blocks; `layercache-tiered` composes them around one owner of each
//! key's state (its per-key version table), in the order its `TieredCache` documents.
//!
//! ```
//! use layercache_core::Key;
//! use layercache_stampede::SingleFlight;
//!
//! // One thread: the second call is made while the first call's work waits on its source.
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let flights = SingleFlight::<String>::new();
//! let key = Key::new("k")?;
//! let (a, b) = tokio::join!(
//!     flights.run(&key, async {
//!         tokio::task::yield_now().await; // the source takes a while
//!         Ok("loaded once".to_owned())
//!     }),
//!     flights.run(&key, async { Ok("never runs".to_owned()) }),
//! );
//! assert_eq!(a?, b?);
//! assert_eq!(flights.stats().in_flight, 0); // nothing is kept once a flight landed
//! # Ok::<(), layercache_core::Error>(())
//! # }).unwrap();
//! ```

mod early;
mod lock;
mod single_flight;

pub use early::{DEFAULT_BETA, EarlyExpiry, RandomSource, SeededRandom, ThreadRandom};
pub use lock::{
    Backoff, DEFAULT_LEASE, DEFAULT_LOCK_MAX_WAIT, DEFAULT_POLL_INITIAL, DEFAULT_POLL_MAX,
    DistributedLock, LockGuard, LockOptions, OnLockTimeout,
};
pub use single_flight::{
    DEFAULT_MAX_WAIT, Joined, Leading, SingleFlight, SingleFlightStats, Waiter,
};
