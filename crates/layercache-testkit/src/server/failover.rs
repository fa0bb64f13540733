//! Roles, slot owners and failovers of a [`RedisCluster`].

use std::time::{Duration, Instant};

use super::cluster::{RedisCluster, node_call};
use super::process::RedisServer;
use super::resp::Reply;

/// A node's role, as it reports it (`ROLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// A primary (Redis says `master`).
    Primary,
    /// A replica of the primary listening on `primary_port`.
    Replica {
        /// The port of the primary it follows.
        primary_port: u16,
    },
}

/// What [`RedisCluster::crash_primary`] and [`RedisCluster::fail_over_to`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// The index of the primary that stopped being one.
    pub old_primary: usize,
    /// The index of the replica that took over its slots.
    pub new_primary: usize,
    /// From the kill (or the `CLUSTER FAILOVER`) until the cluster was healthy again, as the
    /// test kit observed it by polling.
    pub took: Duration,
}

impl RedisCluster {
    /// The role node `index` reports, or `None` when it is stopped or does not answer.
    pub fn role(&self, index: usize) -> Option<NodeRole> {
        role_of(self.node(index))
    }

    /// The indices of the nodes that are primaries now (running and reporting `master`), in node
    /// order.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&index| self.role(index) == Some(NodeRole::Primary))
            .collect()
    }

    /// The indices of the running replicas of the primary at `index`, in node order.
    pub fn replicas_of(&self, index: usize) -> Vec<usize> {
        let port = self.node(index).port();
        (0..self.nodes.len())
            .filter(|&other| self.role(other) == Some(NodeRole::Replica { primary_port: port }))
            .collect()
    }

    /// The index of the primary serving `key`'s slot now (`CLUSTER KEYSLOT`, then the slot
    /// ranges of `CLUSTER NODES`, asked of a running node).
    ///
    /// # Panics
    ///
    /// If no node answers, or no running node serves the slot.
    pub fn primary_of_key(&self, key: &str) -> usize {
        let node = self
            .nodes
            .iter()
            .find(|node| node.is_running())
            .unwrap_or_else(|| panic!("primary_of_key({key:?}): no node of the cluster runs"));
        let slot = match node_call(node, &[b"CLUSTER", b"KEYSLOT", key.as_bytes()]) {
            Ok(Reply::Integer(slot)) => slot,
            other => panic!("CLUSTER KEYSLOT {key:?}: {other:?}"),
        };
        let nodes = match node_call(node, &[b"CLUSTER", b"NODES"]) {
            Ok(Reply::Bulk(Some(nodes))) => String::from_utf8_lossy(&nodes).into_owned(),
            other => panic!("CLUSTER NODES: {other:?}"),
        };
        let port = nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let flags = fields.get(2)?;
                if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                    return None;
                }
                let serves = fields.iter().skip(8).any(|range| {
                    let mut bounds = range.splitn(2, '-').map(str::parse::<i64>);
                    match (bounds.next(), bounds.next()) {
                        (Some(Ok(first)), Some(Ok(last))) => (first..=last).contains(&slot),
                        (Some(Ok(only)), None) => only == slot,
                        _ => false,
                    }
                });
                let address = fields.get(1)?.split('@').next()?;
                serves.then(|| address.rsplit_once(':')?.1.parse::<u16>().ok())?
            })
            .next()
            .unwrap_or_else(|| panic!("no primary serves slot {slot} of {key:?}:\n{nodes}"));
        self.index_of_port(port)
    }

    /// Kills the primary at `index` with SIGKILL and waits until one of its replicas has taken
    /// over and the cluster is healthy again ([`RedisCluster::wait_healthy`]), at most 60 s.
    /// The killed node stays stopped; [`RedisServer::restart`] brings it back as a replica.
    ///
    /// # Panics
    ///
    /// If the node is not a running primary, has no running replica, or no replica takes over
    /// in time.
    pub fn crash_primary(&self, index: usize) -> Failover {
        let replicas = self.replicas_before_failover(index);
        let started = Instant::now();
        self.node(index).stop();
        let new_primary = self.wait_for_promotion(&replicas);
        Failover {
            old_primary: index,
            new_primary,
            took: started.elapsed(),
        }
    }

    /// A planned failover: `CLUSTER FAILOVER` on the replica at `replica` (it catches up with its
    /// primary first, so no write is lost), then waits until it is a primary, the old primary
    /// its replica, and the cluster healthy, at most 60 s.
    ///
    /// # Panics
    ///
    /// If the node is not a running replica, refuses the command, or does not take over in time.
    pub fn fail_over_to(&self, replica: usize) -> Failover {
        let Some(NodeRole::Replica { primary_port }) = self.role(replica) else {
            panic!("fail_over_to({replica}): node {replica} is not a running replica");
        };
        let old_primary = self.index_of_port(primary_port);
        let started = Instant::now();
        match node_call(self.node(replica), &[b"CLUSTER", b"FAILOVER"]) {
            Ok(Reply::Simple(ok)) if ok == "OK" => {}
            other => panic!("CLUSTER FAILOVER on node {replica}: {other:?}"),
        }
        let new_primary = self.wait_for_promotion(&[replica]);
        let new_port = self.node(new_primary).port();
        self.wait_until("the old primary to follow the new one", || {
            let role = self.role(old_primary);
            (role
                != Some(NodeRole::Replica {
                    primary_port: new_port,
                }))
            .then(|| format!("node {old_primary} reports {role:?}"))
        });
        self.wait_healthy();
        Failover {
            old_primary,
            new_primary,
            took: started.elapsed(),
        }
    }

    /// The running replicas of the running primary at `index`, or a panic saying why there are
    /// none.
    fn replicas_before_failover(&self, index: usize) -> Vec<usize> {
        if self.role(index) != Some(NodeRole::Primary) {
            panic!(
                "node {index} (port {}) is not a running primary: {:?}",
                self.node(index).port(),
                self.role(index)
            );
        }
        let replicas = self.replicas_of(index);
        if replicas.is_empty() {
            panic!("the primary at node {index} has no running replica to take over");
        }
        replicas
    }

    /// Waits until one of `candidates` reports being a primary and the cluster is healthy;
    /// answers that node's index.
    fn wait_for_promotion(&self, candidates: &[usize]) -> usize {
        let mut promoted = None;
        self.wait_until("a replica to take over", || {
            promoted = candidates
                .iter()
                .copied()
                .find(|&candidate| self.role(candidate) == Some(NodeRole::Primary));
            match promoted {
                None => Some(format!(
                    "no replica of {candidates:?} is a primary yet: {:?}",
                    candidates.iter().map(|&c| self.role(c)).collect::<Vec<_>>()
                )),
                Some(_) => None,
            }
        });
        self.wait_healthy();
        promoted.unwrap_or_else(|| unreachable!("wait_until returned once a replica took over"))
    }

    fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|node| node.port() == port)
            .unwrap_or_else(|| panic!("no node of the cluster listens on port {port}"))
    }
}

/// The role `node` reports, or `None` when it is stopped or does not answer.
fn role_of(node: &RedisServer) -> Option<NodeRole> {
    if !node.is_running() || node.is_paused() {
        return None;
    }
    let Ok(Reply::Array(Some(items))) = node_call(node, &[b"ROLE"]) else {
        return None;
    };
    match items.as_slice() {
        [Reply::Bulk(Some(role)), ..] if role == b"master" => Some(NodeRole::Primary),
        [Reply::Bulk(Some(role)), _, Reply::Integer(port), ..] if role == b"slave" => {
            Some(NodeRole::Replica {
                primary_port: u16::try_from(*port).ok()?,
            })
        }
        _ => None,
    }
}
