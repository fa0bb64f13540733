//! Real `redis-server` processes for tests and benches.
//!
//! [`RedisServer`] runs one `redis-server` child process on a free `127.0.0.1` port, with its
//! own temporary directory and log file, and gives tests control over it: crash it
//! ([`RedisServer::stop`]), shut it down gracefully ([`RedisServer::shutdown`]), bring it back on
//! the same port ([`RedisServer::restart`]) and freeze it ([`RedisServer::pause`] /
//! [`RedisServer::resume`]). [`RedisCluster`] starts a small Redis Cluster out of such servers,
//! optionally with replicas, and fails primaries over ([`RedisCluster::crash_primary`],
//! [`RedisCluster::fail_over_to`]).
//!
//! The API is synchronous and uses only `std`, so it works the same from `#[test]`,
//! `#[tokio::test]` and criterion benches. Every method that needs the process waits until the
//! process is in the requested state before it returns: `start`/`restart` return once the server
//! answers `PING`, `stop`/`shutdown` once the process has been reaped, `pause`/`resume` once the
//! kernel reports the process stopped/running (on Linux).
//!
//! Failures panic with a message that names the cause and carries the tail of the server's log:
//! in a test kit a clear panic is the intended failure mode. Tests never skip when Redis is
//! missing.
//!
//! # Finding `redis-server`
//!
//! The binary named by the `LAYERCACHE_REDIS_SERVER` environment variable is used if it is set,
//! otherwise `redis-server` is searched on `PATH`; see [`redis_server_binary`].
//!
//! # Cleaning up
//!
//! Dropping a [`RedisServer`] kills the process, waits for it and removes its temporary
//! directory; drop also runs while a panicking test unwinds. For the cases where no destructor
//! runs at all (a server kept in a `static`, `std::process::exit`, an abort or a killed test
//! process), each server is paired with a tiny `sh` watchdog that holds a pipe to the test
//! process and kills the server (and removes its directory) when that pipe closes, that is when
//! the test process is gone.
//!
//! # TLS
//!
//! [`RedisServerBuilder::tls`] also opens a TLS port, with a certificate authority ([`TestCa`])
//! and a server certificate generated at start; [`RedisServer::tls_url`] and
//! [`RedisServer::tls_ca_pem`] are what a client needs. Addresses stay loopback only.
//!
//! # Example
//!
//! ```no_run
//! use layercache_testkit::server::RedisServer;
//!
//! let server = RedisServer::start();
//! let url = server.url(); // "redis://127.0.0.1:PORT/"
//! # let _ = url;
//! server.pause(); // every request now hangs
//! server.resume();
//! server.stop(); // a crash: SIGKILL
//! server.restart(); // same port, answers PING again
//! ```

mod binary;
mod builder;
mod cluster;
mod failover;
mod files;
mod launch;
mod ports;
mod process;
mod resp;
mod signals;
mod tls;
mod watchdog;

pub use binary::{REDIS_CLI_ENV, REDIS_SERVER_ENV, redis_server_binary};
pub use builder::RedisServerBuilder;
pub use cluster::{DEFAULT_NODE_TIMEOUT, RedisCluster, RedisClusterBuilder};
pub use failover::{Failover, NodeRole};
pub use process::RedisServer;
pub use tls::{IssuedCert, TestCa};

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The loopback address every server listens on.
const HOST: &str = "127.0.0.1";
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Connect/read/write timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How many times a start is retried when the port turned out to be taken.
const START_ATTEMPTS: u32 = 5;
/// How long `pause`/`resume` wait for the kernel to report the new process state.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Locks `mutex`, ignoring poisoning: the guarded state stays consistent across the panics this
/// module raises, and `Drop` must never panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
