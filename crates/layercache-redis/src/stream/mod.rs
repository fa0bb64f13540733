//! A [`WriteJournal`] over a Redis Stream and one consumer group: the durable queue of write-behind.
//!
//! - `append` is `XADD stream * k <key> o <p|d> v <payload>` on the shared multiplexed connection;
//!   with [`wait_for_replicas`](RedisWriteJournalBuilder::wait_for_replicas), `XADD` + `WAIT n ms`
//!   in one pipeline, and fewer replicas than asked make it an error.
//! - `read` is `XREADGROUP GROUP g consumer COUNT n BLOCK ms STREAMS stream >` on a connection of
//!   a small deadpool pool of its own: a blocking read would stall every other command sent on a
//!   shared multiplexed connection. A read that overruns its bound takes its connection out of the
//!   pool, so a late reply never reaches the next user.
//! - On a Redis Cluster ([`RedisWriteJournal::cluster_builder`]) the stream is one key, so every
//!   command goes to its slot's primary: the non-blocking ones over one cluster connection, the
//!   blocking reads over a second one whose reply bound allows the `BLOCK` (reads wait for each
//!   other there, which one worker reading at a time never notices). redis-rs follows the slot to
//!   the new primary after a failover.
//! - `ack` is `XACK` + `XDEL` in one pipeline (not a `MULTI`, which restricted ACL users often
//!   lack): the stream holds exactly the writes not yet done, so `XLEN` is the backlog and
//!   `XRANGE - id` tells whether everything up to `id` is done. Both commands are idempotent; a
//!   pipeline cut between them is sent again whole, and XDEL goes first.
//! - `claim_stale` is `XAUTOCLAIM`, walking the pending list from the start.
//!
//! The group is created with `XGROUP CREATE stream group 0 MKSTREAM` (an existing group is kept) at
//! connect, and again if the stream disappears (`NOGROUP`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{
    Error, JournalBacklog, JournalOp, JournalRecord, Key, Result, Timestamp, WriteJournal,
    async_trait,
};
use redis::RedisError;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};

use crate::backend::{DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT};
use crate::connection::{Connection, Idempotent, Request, redis_error};
use crate::tls::RootCa;

mod builder;

pub use builder::RedisWriteJournalBuilder;

/// The default consumer group of a [`RedisWriteJournal`].
pub const DEFAULT_JOURNAL_GROUP: &str = "layercache-write-behind";
/// The default number of pooled connections for blocking reads (2: one worker reads at a time;
/// the second covers a connection being replaced).
pub const DEFAULT_JOURNAL_POOL_SIZE: usize = 2;
/// The default longest `BLOCK` of one read (5 s); longer requests are shortened to it.
pub const DEFAULT_MAX_BLOCK: Duration = Duration::from_secs(5);
/// How many `XAUTOCLAIM` pages one [`claim_stale`](WriteJournal::claim_stale) walks at most.
const MAX_CLAIM_PAGES: usize = 16;

const FIELD_KEY: &str = "k";
const FIELD_OP: &str = "o";
const FIELD_VALUE: &str = "v";

/// `WAIT` after each append: see [`RedisWriteJournalBuilder::wait_for_replicas`].
#[derive(Clone, Copy, Debug)]
struct Replication {
    replicas: u32,
    timeout: Duration,
}

/// Where blocking reads go.
#[derive(Clone)]
enum Reads {
    /// A pool of plain connections: one per read in flight.
    Pool(deadpool_redis::Pool),
    /// A cluster connection of its own (multiplexed: reads in flight queue behind each other).
    Cluster(Arc<crate::cluster::Renewable>),
}

/// A [`WriteJournal`] in a Redis Stream, read by one consumer group.
///
/// The stream belongs to the journal: acknowledged entries are deleted, so the stream holds exactly
/// the writes not yet done (its `XLEN` is the backlog). Do not attach other consumer groups to it.
/// Entries that are not the journal's (no valid `k` key or `o` op field) are logged, acknowledged
/// and counted in [`malformed`](Self::malformed), never handed out.
///
/// Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct RedisWriteJournal {
    conn: Connection,
    /// Where appends go: `conn`, or with `WAIT`, a connection of their own. Redis blocks a
    /// client in `WAIT`: on `conn`, acknowledgments and claims would queue behind it.
    appends: Connection,
    reads: Reads,
    replication: Option<Replication>,
    stream: Arc<str>,
    group: Arc<str>,
    command_timeout: Duration,
    max_block: Duration,
    redacted_url: String,
    malformed: Arc<AtomicU64>,
}

impl fmt::Debug for RedisWriteJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisWriteJournal")
            .field("url", &self.redacted_url)
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("command_timeout", &self.command_timeout)
            .field("max_block", &self.max_block)
            .field("wait_for_replicas", &self.replication)
            .finish()
    }
}

fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

fn error_is_nogroup(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<RedisError>())
        .is_some_and(is_nogroup)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The time part of a stream id (`<ms>-<seq>`).
fn id_time(id: &str) -> Option<Timestamp> {
    let ms = id.split('-').next()?.parse().ok()?;
    Some(Timestamp::from_millis(ms))
}

impl RedisWriteJournal {
    /// A builder for a journal in the stream `stream` of the Redis at `url`, with the defaults above.
    pub fn builder(url: impl Into<String>, stream: impl Into<String>) -> RedisWriteJournalBuilder {
        RedisWriteJournalBuilder {
            url: url.into(),
            stream: stream.into(),
            group: DEFAULT_JOURNAL_GROUP.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_block: DEFAULT_MAX_BLOCK,
            pool_size: DEFAULT_JOURNAL_POOL_SIZE,
            cluster: None,
            root_ca: RootCa::default(),
            replication: None,
        }
    }

    /// A builder for a journal in the stream `stream` of the Redis Cluster reachable through
    /// `nodes` (any of its nodes, as URLs). The stream is one key, in one slot: its primary holds
    /// the whole journal, and its replicas a copy. Replication is asynchronous: a primary that
    /// dies may take its last appends with it before its replica takes over.
    pub fn cluster_builder<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
        stream: impl Into<String>,
    ) -> RedisWriteJournalBuilder {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut builder = Self::builder(nodes.first().cloned().unwrap_or_default(), stream);
        builder.cluster = Some(nodes);
        builder
    }

    /// Connects to the journal in `stream` at `url` with the defaults.
    pub async fn connect(url: impl Into<String>, stream: impl Into<String>) -> Result<Self> {
        Self::builder(url, stream).connect().await
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Entries found in the stream that were not written by a journal (and were dropped).
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// How many entries are pending: delivered to a consumer and not yet acknowledged.
    pub async fn pending(&self) -> Result<u64> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&*self.stream).arg(&*self.group);
        let reply: redis::streams::StreamPendingReply = self
            .with_group(|| self.conn.query(Request::Cmd(&cmd), Idempotent::Yes))
            .await?;
        Ok(reply.count() as u64)
    }

    async fn create_group(&self) -> Result<()> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg("0")
            .arg("MKSTREAM");
        match self
            .conn
            .query::<()>(Request::Cmd(&cmd), Idempotent::Yes)
            .await
        {
            Ok(()) => Ok(()),
            Err(e)
                if std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<RedisError>())
                    .is_some_and(|r| r.code() == Some("BUSYGROUP")) =>
            {
                Ok(())
            }
            Err(e) => Err(e.context(format!("creating consumer group {}", self.group))),
        }
    }

    /// Runs `f`; when the group is gone (the stream was deleted), creates it and runs `f` again.
    async fn with_group<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match f().await {
            Err(e) if error_is_nogroup(&e) => {
                tracing::warn!(stream = %self.stream, group = %self.group, "consumer group is gone; creating it again");
                self.create_group().await?;
                f().await
            }
            other => other,
        }
    }

    /// Records from stream entries; malformed entries are acknowledged and dropped.
    async fn records(&self, entries: Vec<StreamId>) -> Vec<JournalRecord> {
        let mut records = Vec::with_capacity(entries.len());
        let mut malformed = Vec::new();
        for entry in entries {
            let key = entry
                .get::<String>(FIELD_KEY)
                .and_then(|k| Key::new(k).ok());
            let op = entry
                .get::<String>(FIELD_OP)
                .and_then(|o| JournalOp::parse(&o));
            match (key, op) {
                (Some(key), Some(op)) => {
                    let payload = entry.get::<Vec<u8>>(FIELD_VALUE).unwrap_or_default();
                    records.push(JournalRecord::new(entry.id, key, op, payload));
                }
                _ => malformed.push(entry.id),
            }
        }
        if !malformed.is_empty() {
            self.malformed
                .fetch_add(malformed.len() as u64, Ordering::Relaxed);
            tracing::error!(stream = %self.stream, ids = ?malformed, "dropping stream entries that are not write-journal entries");
            if let Err(error) = self.ack(&malformed).await {
                tracing::warn!(%error, "could not acknowledge malformed stream entries");
            }
        }
        records
    }

    async fn read_once(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Option<StreamReadReply>, RedisError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&*self.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(millis(block).max(1));
        }
        cmd.arg("STREAMS").arg(&*self.stream).arg(">");
        let pool = match &self.reads {
            Reads::Pool(pool) => pool,
            Reads::Cluster(cluster) => {
                let mut conn = cluster.current();
                let read =
                    tokio::time::timeout(block + self.command_timeout, cmd.query_async(&mut conn));
                return match read.await {
                    Ok(Err(e)) => {
                        if e.is_connection_dropped() || e.is_io_error() || e.is_timeout() {
                            cluster.renew();
                        }
                        Err(e)
                    }
                    Ok(reply) => reply,
                    // A late reply is matched to this request and dropped by redis-rs.
                    Err(_) => {
                        cluster.renew();
                        Err(RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "XREADGROUP exceeded its bound",
                        )))
                    }
                };
            }
        };
        let mut conn = pool.get().await.map_err(|e| {
            RedisError::from(std::io::Error::other(format!(
                "no pooled redis connection: {e}"
            )))
        })?;
        match tokio::time::timeout(block + self.command_timeout, cmd.query_async(&mut *conn)).await
        {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                if e.is_connection_dropped() || e.is_io_error() || e.is_timeout() {
                    // The reply may still come: never hand this connection to anyone else.
                    drop(deadpool_redis::Connection::take(conn));
                }
                Err(e)
            }
            Err(_) => {
                drop(deadpool_redis::Connection::take(conn));
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "XREADGROUP exceeded its bound",
                )))
            }
        }
    }
}

#[async_trait]
impl WriteJournal for RedisWriteJournal {
    async fn append(&self, key: &Key, op: JournalOp, payload: &[u8]) -> Result<String> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&*self.stream)
            .arg("*")
            .arg(FIELD_KEY)
            .arg(key.as_str())
            .arg(FIELD_OP)
            .arg(op.as_str())
            .arg(FIELD_VALUE)
            .arg(payload);
        // Sent again after a dropped connection: a duplicate entry is a second write of the same
        // value, which at-least-once delivery allows.
        let Some(Replication { replicas, timeout }) = self.replication else {
            return self.conn.query(Request::Cmd(&cmd), Idempotent::Yes).await;
        };
        // One round trip: WAIT has no key, so the pipeline goes where the XADD goes (on a
        // cluster, the stream's primary), on the connection that sent the XADD.
        let mut pipe = redis::pipe();
        pipe.add_command(cmd)
            .cmd("WAIT")
            .arg(replicas)
            .arg(millis(timeout).max(1));
        let (id, acked): (String, u64) = self
            .appends
            .query(Request::Pipe(&pipe), Idempotent::Yes)
            .await?;
        if acked < u64::from(replicas) {
            return Err(Error::unavailable(format!(
                "journal append {id} reached {acked} of {replicas} replicas within {timeout:?}: \
                 not acknowledged (it may still be written)"
            )));
        }
        Ok(id)
    }

    async fn read(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<JournalRecord>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let block = block.min(self.max_block);
        let reply = match self.read_once(consumer, count, block).await {
            Err(e) if is_nogroup(&e) => {
                self.create_group().await?;
                self.read_once(consumer, count, block).await
            }
            other => other,
        }
        .map_err(|e| redis_error(e).context("XREADGROUP"))?;
        let entries = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        Ok(self.records(entries).await)
    }

    async fn claim_stale(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<JournalRecord>> {
        let mut claimed: Vec<StreamId> = Vec::new();
        let mut cursor = "0-0".to_owned();
        for _ in 0..MAX_CLAIM_PAGES {
            if claimed.len() >= count {
                break;
            }
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&*self.stream)
                .arg(&*self.group)
                .arg(consumer)
                .arg(millis(min_idle))
                .arg(&cursor)
                .arg("COUNT")
                .arg(count - claimed.len());
            let reply: StreamAutoClaimReply = self
                .with_group(|| self.conn.query(Request::Cmd(&cmd), Idempotent::Yes))
                .await?;
            claimed.extend(reply.claimed);
            if reply.next_stream_id == "0-0" || reply.next_stream_id.is_empty() {
                break;
            }
            cursor = reply.next_stream_id;
        }
        Ok(self.records(claimed).await)
    }

    async fn ack(&self, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        // XDEL first: a pipeline cut in between leaves a done write out of the stream (the
        // backlog is right) with a pending-list entry that XAUTOCLAIM drops, never the reverse
        // (acknowledged but still counted as not done).
        let mut pipe = redis::pipe();
        pipe.cmd("XDEL").arg(&*self.stream).arg(ids).ignore();
        pipe.cmd("XACK")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg(ids);
        let (acked,): (u64,) = self
            .conn
            .query(Request::Pipe(&pipe), Idempotent::Yes)
            .await?;
        Ok(acked)
    }

    async fn backlog(&self) -> Result<JournalBacklog> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(&*self.stream);
        pipe.cmd("XRANGE")
            .arg(&*self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        pipe.cmd("XREVRANGE")
            .arg(&*self.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let (len, first, last): (u64, StreamRangeReply, StreamRangeReply) = self
            .conn
            .query(Request::Pipe(&pipe), Idempotent::Yes)
            .await?;
        let oldest = first.ids.first().and_then(|e| id_time(&e.id));
        let last_id = last.ids.into_iter().next().map(|e| e.id);
        Ok(JournalBacklog::new(len, oldest, last_id))
    }

    async fn unacked(&self, upto: &str, limit: usize) -> Result<Vec<String>> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&*self.stream)
            .arg("-")
            .arg(upto)
            .arg("COUNT")
            .arg(limit.max(1));
        let reply: StreamRangeReply = self.conn.query(Request::Cmd(&cmd), Idempotent::Yes).await?;
        Ok(reply.ids.into_iter().map(|e| e.id).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests;
