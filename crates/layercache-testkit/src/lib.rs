//! Test kit for layercache and for anyone writing a backend.
//!
//! - [`server`]: real `redis-server` processes on free loopback ports — standalone and Cluster —
//!   with controls to crash, restart, pause and resume them. Tests never mock Redis and never skip
//!   when it is missing: they fail and say how to install it.
//! - [`conformance`]: one behaviour suite every [`Backend`](layercache_core::Backend) must pass;
//!   the [`backend_conformance!`] macro turns it into one `#[tokio::test]` per case.
//! - [`history`]: a linearizability-style checker for concurrent histories of reads, writes and
//!   invalidations against a versioned source of truth.
//! - `postgres` (feature `postgres`): a real PostgreSQL (`initdb` + `postgres`) on a free loopback
//!   port, for end-to-end tests with a database.
//! - [`workload`]: seeded Zipf traces, shared by the benchmarks and the example service's load run.
//! - The manual clock lives in the core crate ([`ManualClock`]) and is re-exported here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test kit fails by panicking with a clear message"
)]

pub mod conformance;
pub mod history;
#[cfg(all(feature = "postgres", unix))]
pub mod postgres;
pub mod server;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod workload;

pub use layercache_core::ManualClock;
pub use server::{RedisCluster, RedisServer};
