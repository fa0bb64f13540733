//! [`RedisCluster`]: a small Redis Cluster of [`RedisServer`] nodes.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::binary::redis_cli_binary;
use super::process::RedisServer;
use super::resp::{Reply, RespConnection, info_field};
use super::{HOST, PROBE_TIMEOUT};

/// How long [`RedisCluster`] waits for `cluster_state:ok` on every node.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster of master-only [`RedisServer`] nodes (no replicas), created with
/// `redis-cli --cluster create`. Requires Redis 7 or newer (nodes get their own cluster bus
/// port through `cluster-port`).
///
/// Construction returns once every node reports `cluster_state:ok`, knows all nodes and sees
/// all 16384 slots served. Dropping the cluster drops (kills) every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts a cluster of 3 masters.
    ///
    /// # Panics
    ///
    /// See [`RedisCluster::with_masters`].
    pub fn start() -> Self {
        Self::with_masters(3)
    }

    /// Starts a cluster of `masters` master nodes.
    ///
    /// # Panics
    ///
    /// If `masters < 3` (Redis Cluster needs at least 3 masters), if a node fails to start, if
    /// `redis-cli` is not found or `--cluster create` fails, or if the cluster does not reach
    /// `cluster_state:ok` within 30 s.
    pub fn with_masters(masters: usize) -> Self {
        if masters < 3 {
            panic!("RedisCluster::with_masters({masters}): Redis Cluster needs at least 3 masters");
        }
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::builder()
                    .config("cluster-enabled", "yes")
                    .config("cluster-config-file", "nodes.conf")
                    .config("cluster-node-timeout", "5000")
                    .start()
            })
            .collect();
        let cluster = Self { nodes };
        cluster.create();
        cluster.wait_ok();
        cluster
    }

    fn create(&self) {
        let cli = redis_cli_binary(&self.nodes[0].spec.binary)
            .unwrap_or_else(|message| panic!("{message}"));
        let mut command = Command::new(&cli);
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(format!("{HOST}:{}", node.port));
        }
        let output = command
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("could not run {}: {error}", cli.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() || stdout.contains("[ERR]") {
            panic!(
                "`{} --cluster create` failed ({}):\n{stdout}\n{stderr}\n{}",
                cli.display(),
                output.status,
                self.node_diagnostics()
            );
        }
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let expected_nodes = self.nodes.len().to_string();
        for node in &self.nodes {
            loop {
                let info = RespConnection::connect(node.addr(), PROBE_TIMEOUT)
                    .and_then(|mut conn| conn.call(&[b"CLUSTER", b"INFO"]));
                let last = match info {
                    Ok(Reply::Bulk(Some(info))) => {
                        let info = String::from_utf8_lossy(&info).into_owned();
                        if info_field(&info, "cluster_state") == Some("ok")
                            && info_field(&info, "cluster_slots_ok") == Some("16384")
                            && info_field(&info, "cluster_known_nodes")
                                == Some(expected_nodes.as_str())
                        {
                            break;
                        }
                        info
                    }
                    Ok(other) => format!("{other:?}"),
                    Err(error) => error.to_string(),
                };
                if Instant::now() >= deadline {
                    panic!(
                        "Redis Cluster did not reach cluster_state:ok within {CLUSTER_TIMEOUT:?}; \
                         node on port {} last reported:\n{last}\n{}",
                        node.port,
                        self.node_diagnostics()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn node_diagnostics(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("node port {}:{}", node.port, node.spec.diagnostics()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The URL of every node, `redis://127.0.0.1:PORT/`, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Node `index` (0-based).
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    pub fn node(&self, index: usize) -> &RedisServer {
        self.nodes.get(index).unwrap_or_else(|| {
            panic!(
                "RedisCluster::node({index}): the cluster has {} nodes",
                self.nodes.len()
            )
        })
    }

    /// All nodes, in order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}
