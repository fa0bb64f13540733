//! [`RedisCluster`]: a small Redis Cluster of [`RedisServer`] nodes, with or without replicas.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::binary::redis_cli_binary;
use super::process::RedisServer;
use super::resp::{Reply, RespConnection, info_field};
use super::{HOST, PROBE_TIMEOUT};

/// How long [`RedisCluster`] waits for the cluster to become healthy (start, failover, rejoin).
pub(super) const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two health probes of a cluster.
pub(super) const CLUSTER_POLL: Duration = Duration::from_millis(20);
/// The `cluster-node-timeout` of a cluster without replicas: nothing fails over, so a busy
/// machine's stall should not mark a node as failing either.
const MASTERS_ONLY_NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// The default `cluster-node-timeout` of a cluster with replicas (2 s): a dead primary is
/// replaced by its replica about this long (plus the election, under a second) after it died,
/// while a busy 2-core machine does not stall a node that long.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds a [`RedisCluster`]; see [`RedisCluster::builder`].
#[derive(Debug, Clone)]
pub struct RedisClusterBuilder {
    masters: usize,
    replicas: usize,
    node_timeout: Option<Duration>,
}

impl RedisClusterBuilder {
    /// The number of primaries (default 3, at least 3).
    #[must_use]
    pub fn masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// Replicas per primary (default 0).
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// The nodes' `cluster-node-timeout` (default [`DEFAULT_NODE_TIMEOUT`] with replicas, 5 s
    /// without): how long a node may not answer before the others count it as failing and its
    /// replica takes over.
    #[must_use]
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = Some(timeout);
        self
    }

    /// Starts `masters × (1 + replicas)` servers, creates the cluster with
    /// `redis-cli --cluster create --cluster-replicas N`, and waits until it is healthy (see
    /// [`RedisCluster::wait_healthy`]).
    ///
    /// # Panics
    ///
    /// If `masters < 3` (Redis Cluster needs at least 3), if a node fails to start, if
    /// `redis-cli` is not found or `--cluster create` fails, or if the cluster is not healthy
    /// within 60 s.
    pub fn start(self) -> RedisCluster {
        if self.masters < 3 {
            panic!(
                "RedisCluster with {} masters: Redis Cluster needs at least 3",
                self.masters
            );
        }
        let node_timeout = self.node_timeout.unwrap_or(if self.replicas == 0 {
            MASTERS_ONLY_NODE_TIMEOUT
        } else {
            DEFAULT_NODE_TIMEOUT
        });
        let count = self.masters * (1 + self.replicas);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::builder()
                    .config("cluster-enabled", "yes")
                    .config("cluster-config-file", "nodes.conf")
                    .config("cluster-node-timeout", node_timeout.as_millis().to_string())
                    // A replica takes over however long it was cut off from its primary: with
                    // persistence off, nothing better than its copy exists.
                    .config("cluster-replica-validity-factor", "0")
                    // A replica's first sync starts at once, not after 5 s.
                    .config("repl-diskless-sync", "yes")
                    .config("repl-diskless-sync-delay", "0")
                    .start()
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            replicas: self.replicas,
        };
        cluster.create();
        cluster.wait_healthy();
        cluster
    }
}

/// A Redis Cluster of [`RedisServer`] nodes, created with `redis-cli --cluster create`:
/// 3 primaries by default, optionally with replicas ([`RedisCluster::replicated`]: 3 primaries
/// with one replica each, 6 processes). Requires Redis 7 or newer (nodes get their own cluster
/// bus port through `cluster-port`).
///
/// Construction returns once the cluster is healthy ([`RedisCluster::wait_healthy`]). Each node
/// is a [`RedisServer`] with its controls (stop = SIGKILL, restart, pause); which nodes are
/// primaries changes with failovers, so ask [`RedisCluster::primaries`] or
/// [`RedisCluster::primary_of_key`] rather than assuming an order. [`RedisCluster::crash_primary`]
/// kills a primary and waits for its replica to take over. Dropping the cluster drops (kills)
/// every node.
///
/// Persistence is off: a crashed primary restarted with [`RedisServer::restart`] before its
/// replica took over would come back empty and be followed by that replica. Restart it after the
/// failover: it rejoins as a replica of the new primary.
#[derive(Debug)]
pub struct RedisCluster {
    pub(super) nodes: Vec<RedisServer>,
    pub(super) replicas: usize,
}

impl RedisCluster {
    /// A builder: primaries, replicas per primary, node timeout.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder {
            masters: 3,
            replicas: 0,
            node_timeout: None,
        }
    }

    /// Starts a cluster of 3 masters (no replicas).
    ///
    /// # Panics
    ///
    /// See [`RedisClusterBuilder::start`].
    pub fn start() -> Self {
        Self::with_masters(3)
    }

    /// Starts a cluster of `masters` master nodes (no replicas).
    ///
    /// # Panics
    ///
    /// See [`RedisClusterBuilder::start`].
    pub fn with_masters(masters: usize) -> Self {
        Self::builder().masters(masters).start()
    }

    /// Starts the production shape: 3 primaries with one replica each (6 processes), with the
    /// [`DEFAULT_NODE_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// See [`RedisClusterBuilder::start`].
    pub fn replicated() -> Self {
        Self::builder().masters(3).replicas(1).start()
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
            .arg("--cluster-replicas")
            .arg(self.replicas.to_string())
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

    /// Waits until the cluster is healthy, at most 60 s: every running node reports
    /// `cluster_state:ok`, all 16384 slots served, none failing, and knows every node; every
    /// running replica is in sync with its primary (`master_link_status:up`, no sync in
    /// progress). Call it after restarting a node, to wait until it has rejoined.
    ///
    /// # Panics
    ///
    /// If the cluster is not healthy within 60 s; the message names what is missing and carries
    /// each node's log tail.
    pub fn wait_healthy(&self) {
        self.wait_until("the cluster to become healthy", || self.unhealthy());
    }

    /// Polls `problem` until it answers `None`, at most [`CLUSTER_TIMEOUT`].
    pub(super) fn wait_until(&self, what: &str, mut problem: impl FnMut() -> Option<String>) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let Some(last) = problem() else { return };
            if Instant::now() >= deadline {
                panic!(
                    "waited {CLUSTER_TIMEOUT:?} for {what}; last: {last}\n{}",
                    self.node_diagnostics()
                );
            }
            thread::sleep(CLUSTER_POLL);
        }
    }

    /// What keeps the cluster from being healthy now, or `None` when it is.
    fn unhealthy(&self) -> Option<String> {
        let expected_nodes = self.nodes.len().to_string();
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            let info = match node_call(node, &[b"CLUSTER", b"INFO"]) {
                Ok(Reply::Bulk(Some(info))) => String::from_utf8_lossy(&info).into_owned(),
                other => return Some(format!("node {}: CLUSTER INFO: {other:?}", node.port)),
            };
            let field = |name| info_field(&info, name);
            if field("cluster_state") != Some("ok")
                || field("cluster_slots_ok") != Some("16384")
                || field("cluster_slots_pfail") != Some("0")
                || field("cluster_slots_fail") != Some("0")
                || field("cluster_known_nodes") != Some(expected_nodes.as_str())
            {
                return Some(format!("node {}:\n{info}", node.port));
            }
            let replication = match node_call(node, &[b"INFO", b"replication"]) {
                Ok(Reply::Bulk(Some(info))) => String::from_utf8_lossy(&info).into_owned(),
                other => return Some(format!("node {}: INFO: {other:?}", node.port)),
            };
            if info_field(&replication, "role") == Some("slave")
                && (info_field(&replication, "master_link_status") != Some("up")
                    || info_field(&replication, "master_sync_in_progress") != Some("0"))
            {
                return Some(format!("replica {} not in sync:\n{replication}", node.port));
            }
        }
        None
    }

    pub(super) fn node_diagnostics(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("node port {}:{}", node.port, node.spec.diagnostics()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The URL of every node, `redis://127.0.0.1:PORT/`, in node order (primaries and replicas;
    /// a client finds the roles itself).
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

    /// Replicas per primary the cluster was created with.
    pub fn replicas_per_primary(&self) -> usize {
        self.replicas
    }
}

/// One command to `node` on a fresh probe connection.
pub(super) fn node_call(node: &RedisServer, args: &[&[u8]]) -> std::io::Result<Reply> {
    RespConnection::connect(node.addr(), PROBE_TIMEOUT).and_then(|mut conn| conn.call(args))
}
