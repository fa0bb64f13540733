//! Roles, slot owners and failovers of a [`RedisCluster`].

use std::time::{Duration, Instant};

use super::cluster::{RedisCluster, node_call};
use super::process::RedisServer;
use super::resp::Reply;

/// How long [`RedisCluster::fail_over_to`] waits for a manual failover before asking again
/// (Redis abandons one after 5 s).
const MANUAL_FAILOVER_RETRY: Duration = Duration::from_secs(6);

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

    /// Waits until every running replica of the primary at `index` has acknowledged everything
    /// the primary had written when this was called (its replication offset, as `ROLE` reports
    /// it; replicas acknowledge every second), at most the cluster timeout. Call it before
    /// [`crash_primary`](Self::crash_primary) when a test needs every earlier write to survive:
    /// `WAIT` only covers the writes of the connection that sends it.
    ///
    /// # Panics
    ///
    /// If the node is not a running primary or a replica does not catch up in time.
    pub fn wait_replicated(&self, index: usize) {
        let replicas = self.replicas_before_failover(index);
        let target = match node_call(self.node(index), &[b"ROLE"]) {
            Ok(Reply::Array(Some(items))) => match items.get(1) {
                Some(Reply::Integer(offset)) => *offset,
                other => panic!("ROLE of primary {index}: no offset in {other:?}"),
            },
            other => panic!("ROLE of primary {index}: {other:?}"),
        };
        self.wait_until("the replicas to acknowledge the primary's writes", || {
            let acked = acknowledged_offsets(self.node(index));
            let behind: Vec<usize> = replicas
                .iter()
                .copied()
                .filter(|&replica| {
                    let port = i64::from(self.node(replica).port());
                    !acked
                        .iter()
                        .any(|&(p, offset)| p == port && offset >= target)
                })
                .collect();
            (!behind.is_empty()).then(|| {
                format!("replicas {behind:?} behind offset {target}: acknowledged {acked:?}")
            })
        });
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
        let ask = || match node_call(self.node(replica), &[b"CLUSTER", b"FAILOVER"]) {
            Ok(Reply::Simple(ok)) if ok == "OK" => Instant::now(),
            other => panic!("CLUSTER FAILOVER on node {replica}: {other:?}"),
        };
        // A manual failover gives up after 5 s without the primaries' votes, and a primary votes
        // for a replica of one shard at most once per two node timeouts (right after another
        // failover of the shard, it refuses): ask again until one succeeds.
        let mut asked = ask();
        self.wait_until("the replica to take over", || {
            if self.role(replica) == Some(NodeRole::Primary) {
                return None;
            }
            if asked.elapsed() >= MANUAL_FAILOVER_RETRY {
                asked = ask();
            }
            Some(format!("node {replica} reports {:?}", self.role(replica)))
        });
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
        let promoted = promoted
            .unwrap_or_else(|| unreachable!("wait_until returned once a replica took over"));
        // Gossip spreads the new owner of the slots: wait until every running node knows it, so
        // that a test asking any node (`primary_of_key`) sees the failover.
        let port = self.node(promoted).port();
        self.wait_until("every node to know the new primary", || {
            self.nodes
                .iter()
                .filter(|node| node.is_running())
                .find(|node| !serves_slots(node, port))
                .map(|node| format!("node {} does not see {port} serving slots yet", node.port()))
        });
        promoted
    }

    fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|node| node.port() == port)
            .unwrap_or_else(|| panic!("no node of the cluster listens on port {port}"))
    }
}

/// Whether `node`'s `CLUSTER NODES` shows the node listening on `port` as a primary with slots.
fn serves_slots(node: &RedisServer, port: u16) -> bool {
    let Ok(Reply::Bulk(Some(nodes))) = node_call(node, &[b"CLUSTER", b"NODES"]) else {
        return false;
    };
    String::from_utf8_lossy(&nodes).lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let listens = fields
            .get(1)
            .and_then(|address| address.split('@').next())
            .and_then(|address| address.rsplit_once(':'))
            .is_some_and(|(_, p)| p.parse() == Ok(port));
        let primary = fields
            .get(2)
            .is_some_and(|flags| flags.split(',').any(|f| f == "master"));
        listens && primary && fields.len() > 8
    })
}

/// The (port, acknowledged offset) of each replica a primary's `ROLE` lists.
fn acknowledged_offsets(primary: &RedisServer) -> Vec<(i64, i64)> {
    let Ok(Reply::Array(Some(items))) = node_call(primary, &[b"ROLE"]) else {
        return Vec::new();
    };
    let Some(Reply::Array(Some(replicas))) = items.get(2) else {
        return Vec::new();
    };
    let number = |reply: &Reply| match reply {
        Reply::Integer(n) => Some(*n),
        Reply::Bulk(Some(text)) => std::str::from_utf8(text).ok()?.parse().ok(),
        _ => None,
    };
    replicas
        .iter()
        .filter_map(|replica| match replica {
            Reply::Array(Some(fields)) => Some((number(fields.get(1)?)?, number(fields.get(2)?)?)),
            _ => None,
        })
        .collect()
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
