//! Integration tests of the Redis backend, against real `redis-server` processes from the testkit.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod cluster;
mod conformance;
mod costs;
mod faults;
mod footprint;
mod ordering;
mod plain;
mod replication;
#[cfg(feature = "tls")]
mod tls;

use std::sync::OnceLock;

use layercache_testkit::{RedisCluster, RedisServer};

/// One server shared by the tests that need no fault of their own; the cases isolate themselves
/// with unique key spaces. The testkit's watchdog stops it when the test process exits.
fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// One cluster in production shape (3 primaries, a replica each) shared by the tests that need
/// one and stop no node (they use key spaces of their own).
fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::replicated)
}
