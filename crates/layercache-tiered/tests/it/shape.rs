//! Where a test's shared tier runs: one `redis-server`, or a Redis Cluster of 3 primaries with a
//! replica each (issue 14). One test body takes a [`Redis`] and runs on both; the child processes
//! a test starts find theirs in the environment ([`Redis::from_env`]).

use std::sync::OnceLock;
use std::time::Duration;

use layercache_core::JsonCodec;
use layercache_redis::{RedisBackend, RedisBackendBuilder};
use layercache_testkit::{RedisCluster, RedisServer};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Set for a child process: `server` or `cluster`.
const SHAPE: &str = "LAYERCACHE_TEST_REDIS_SHAPE";
/// Set for a child process: the node URLs, comma-separated.
const NODES: &str = "LAYERCACHE_TEST_REDIS_NODES";

/// One server or a replicated cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Server,
    Cluster,
}

/// One replicated cluster shared by the tests that stop no node (each uses keys of its own).
pub(crate) fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::replicated)
}

/// The Redis a test talks to, in either shape.
pub(crate) struct Redis {
    shape: Shape,
    nodes: Vec<String>,
    /// A server of this test's own, stopped when the test ends.
    _server: Option<RedisServer>,
}

impl Redis {
    /// A server of its own, or the shared cluster.
    pub(crate) fn start(shape: Shape) -> Self {
        match shape {
            Shape::Server => {
                let server = RedisServer::start();
                Redis {
                    shape,
                    nodes: vec![server.url()],
                    _server: Some(server),
                }
            }
            Shape::Cluster => Redis {
                shape,
                nodes: shared_cluster().urls(),
                _server: None,
            },
        }
    }

    /// In a child process: the Redis its parent passed in [`env`](Self::env).
    pub(crate) fn from_env() -> Option<Self> {
        let shape = match std::env::var(SHAPE).ok()?.as_str() {
            "server" => Shape::Server,
            "cluster" => Shape::Cluster,
            other => panic!("{SHAPE}={other}"),
        };
        let nodes = std::env::var(NODES).unwrap();
        Some(Redis {
            shape,
            nodes: nodes.split(',').map(str::to_owned).collect(),
            _server: None,
        })
    }

    /// The environment that tells a child process where this Redis is.
    pub(crate) fn env(&self) -> [(&'static str, String); 2] {
        let shape = match self.shape {
            Shape::Server => "server",
            Shape::Cluster => "cluster",
        };
        [(SHAPE, shape.to_owned()), (NODES, self.nodes.join(","))]
    }

    /// A backend builder: the only thing that differs between the shapes.
    pub(crate) fn backend_builder(&self) -> RedisBackendBuilder<JsonCodec> {
        match self.shape {
            Shape::Server => RedisBackend::builder(self.nodes[0].as_str()),
            Shape::Cluster => RedisBackend::cluster_builder(self.nodes.iter().cloned()),
        }
    }

    /// A backend whose commands get `timeout` each.
    pub(crate) async fn backend(&self, timeout: Duration) -> RedisBackend {
        self.backend_builder()
            .command_timeout(timeout)
            .connect()
            .await
            .unwrap()
    }

    /// A plain redis-rs connection (what another program would use), routed by slot on a
    /// cluster.
    pub(crate) async fn conn(&self) -> Conn {
        match self.shape {
            Shape::Server => Conn::Server(crate::redis_conn(&self.nodes[0]).await),
            Shape::Cluster => Conn::Cluster(
                redis::cluster::ClusterClient::new(self.nodes.clone())
                    .unwrap()
                    .get_async_connection()
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// A redis-rs connection to one server or to a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}
