//! A real PostgreSQL for end-to-end tests, started the way [`server`](crate::server) starts Redis.
//!
//! [`PostgresServer::start`] makes a fresh cluster with `initdb` (trust authentication, superuser
//! `postgres`) in a temporary directory, runs `postgres` as a child process on a free `127.0.0.1`
//! port with its Unix socket in that directory and durability off (`fsync`, `synchronous_commit`
//! and `full_page_writes` off: test data need not survive a crash), waits until it is ready,
//! creates the database `layercache` and hands out its URL. It never uses a server that already
//! runs on the machine (such as one on port 5432) and never stops one.
//!
//! The API is synchronous and uses only `std`, like [`RedisServer`](crate::RedisServer): `start`
//! returns once the server accepts connections, `stop` once the process has exited. Failures
//! panic with a message that names the cause and carries the tail of the server's log. Tests
//! never skip when PostgreSQL is missing.
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root. When the test process is root, `initdb` and `postgres` run
//! as the system user `postgres` (created with `useradd --system` when missing), which owns the
//! temporary directory. The user is switched with [`CommandExt::uid`](std::os::unix::process::CommandExt::uid)
//! rather than `su`/`runuser`, so the child process *is* the postmaster and the watchdog below
//! kills the server itself, not a wrapper.
//!
//! # Finding the binaries
//!
//! See [`postgres_bin_dir`]: the directory in `LAYERCACHE_POSTGRES_BIN`, the directory of
//! `initdb` on `PATH` (symlinks followed), or the newest `/usr/lib/postgresql/*/bin` (Debian).
//!
//! # Cleaning up
//!
//! Dropping a [`PostgresServer`] shuts it down (fast shutdown, SIGKILL if that hangs) and removes
//! its directory. When no destructor runs (a killed test process), the testkit's watchdog kills
//! the postmaster and removes the directory; its backends exit on their own once the postmaster
//! is gone.
//!
//! # Example
//!
//! ```no_run
//! use layercache_testkit::postgres::PostgresServer;
//!
//! let server = PostgresServer::start();
//! let url = server.url(); // "postgres://postgres@127.0.0.1:PORT/layercache"
//! # let _ = url;
//! server.stop(); // fast shutdown; connections now fail
//! ```

mod binaries;
mod process;
mod user;

// The server module's helpers for temporary directories, free ports and the watchdog, shared as
// source because they are private to that module. (Making them `pub(crate)` there would let this
// module `use` them and share the set of handed-out ports.)
#[path = "../server/files.rs"]
#[allow(clippy::duplicate_mod, reason = "server/ keeps it private")]
mod files;
#[path = "../server/ports.rs"]
#[allow(clippy::duplicate_mod, reason = "server/ keeps it private")]
mod ports;
#[path = "../server/watchdog.rs"]
#[allow(clippy::duplicate_mod, reason = "server/ keeps it private")]
mod watchdog;

pub use binaries::{POSTGRES_BIN_ENV, postgres_bin_dir};
pub use process::PostgresServer;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The loopback address every server listens on.
const HOST: &str = "127.0.0.1";
/// The port of a system PostgreSQL that may run on the machine; never used.
const DEFAULT_POSTGRES_PORT: u16 = 5432;
/// Pause between readiness and exit polls.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Locks `mutex`, ignoring poisoning: `Drop` must never panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
