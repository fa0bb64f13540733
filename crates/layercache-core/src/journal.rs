//! A durable log of pending writes, for write-behind strategies that must survive a crash.
//!
//! A [`WriteJournal`] is an append-only log read by a consumer group: a write is appended before
//! the caller is told it was accepted, a worker reads it, writes it to the source of truth and only
//! then acknowledges it. An entry read by a worker that died is taken over by another worker once it
//! has been idle long enough ([`claim_stale`](WriteJournal::claim_stale)). Delivery is therefore
//! at-least-once: a write may reach the source twice, never zero times.
//!
//! `layercache-redis` implements it over a Redis Stream (`XADD`, `XREADGROUP`, `XACK`,
//! `XAUTOCLAIM`); the strategies only know this trait. Values travel as bytes, encoded by a
//! [`PayloadCodec`] — every [`Codec`] is one, for every serde type.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::entry::Timestamp;
use crate::error::Result;
use crate::key::Key;

/// What a journal entry asks of the source of truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JournalOp {
    /// Write the entry's payload under its key ([`Writer::write`](crate::Writer::write)).
    Put,
    /// Remove the key ([`Writer::remove`](crate::Writer::remove)); the payload is empty.
    Delete,
}

impl JournalOp {
    /// A one-letter tag, as stored in a journal entry: `p` or `d`.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalOp::Put => "p",
            JournalOp::Delete => "d",
        }
    }

    /// The op of a tag written by [`as_str`](Self::as_str).
    pub fn parse(tag: &str) -> Option<Self> {
        match tag {
            "p" => Some(JournalOp::Put),
            "d" => Some(JournalOp::Delete),
            _ => None,
        }
    }
}

/// One entry read from a [`WriteJournal`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalRecord {
    /// The entry's id in the journal (a Redis stream id such as `1700000000000-0`); what
    /// [`ack`](WriteJournal::ack) takes. Ids grow in append order.
    pub id: String,
    /// The key written or removed.
    pub key: Key,
    /// A put or a delete.
    pub op: JournalOp,
    /// The encoded value of a put; empty for a delete.
    pub payload: Vec<u8>,
}

impl JournalRecord {
    /// A record; for journal implementations.
    pub fn new(id: String, key: Key, op: JournalOp, payload: Vec<u8>) -> Self {
        JournalRecord {
            id,
            key,
            op,
            payload,
        }
    }
}

/// How much of a [`WriteJournal`] is still to be written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalBacklog {
    /// Entries appended and not yet acknowledged (read or not).
    pub entries: u64,
    /// When the oldest of them was appended, if any.
    pub oldest: Option<Timestamp>,
    /// The id of the newest entry in the journal, if any.
    pub last_id: Option<String>,
}

impl JournalBacklog {
    /// A backlog; for journal implementations.
    pub fn new(entries: u64, oldest: Option<Timestamp>, last_id: Option<String>) -> Self {
        JournalBacklog {
            entries,
            oldest,
            last_id,
        }
    }
}

/// A durable, shared log of writes waiting for the source of truth, read by a consumer group.
///
/// # Contract
///
/// - [`append`](Self::append) returns only once the entry is durable in the journal (as durable as
///   the journal's store is configured to be).
/// - [`read`](Self::read) hands each new entry to exactly one consumer of the group; the entry stays
///   *pending* for that consumer until [`ack`](Self::ack)ed.
/// - [`claim_stale`](Self::claim_stale) moves entries that have been pending for at least
///   `min_idle` (their consumer died, or gave up on them) to the calling consumer and returns them.
/// - An acknowledged entry is gone: it is neither read nor claimed again, and no longer counted in
///   [`backlog`](Self::backlog) or [`unacked`](Self::unacked).
/// - Every call is bounded in time: `read` by `block` plus the implementation's command timeout,
///   the others by the command timeout.
#[async_trait]
pub trait WriteJournal: Send + Sync + Debug {
    /// Appends a write and returns its id.
    async fn append(&self, key: &Key, op: JournalOp, payload: &[u8]) -> Result<String>;

    /// Up to `count` entries never delivered to the group, waiting at most `block` for the first
    /// one; they become pending for `consumer`. An empty answer means none arrived in time.
    async fn read(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<JournalRecord>>;

    /// Takes over up to `count` entries pending (for any consumer, `consumer` included) for at
    /// least `min_idle`, and returns them.
    async fn claim_stale(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<JournalRecord>>;

    /// Acknowledges (and removes) the entries `ids`; returns how many were pending.
    async fn ack(&self, ids: &[String]) -> Result<u64>;

    /// How much is still to be written.
    async fn backlog(&self) -> Result<JournalBacklog>;

    /// The ids of up to `limit` entries with an id up to and including `upto` that are not yet
    /// acknowledged, oldest first.
    async fn unacked(&self, upto: &str, limit: usize) -> Result<Vec<String>>;
}

/// How values become journal payloads and back: a dyn-compatible view of a [`Codec`] for one
/// value type.
///
/// Every [`Codec`] is a `PayloadCodec<V>` for every serde type `V`, so a strategy can require
/// `JsonCodec: PayloadCodec<V>` without depending on serde itself.
pub trait PayloadCodec<V>: Send + Sync + Debug + 'static {
    /// The payload of `value`.
    fn encode_payload(&self, value: &V) -> Result<Vec<u8>>;

    /// The value of `payload`.
    fn decode_payload(&self, payload: &[u8]) -> Result<V>;
}

impl<C, V> PayloadCodec<V> for C
where
    C: Codec,
    V: Serialize + DeserializeOwned,
{
    fn encode_payload(&self, value: &V) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode(value, &mut out)?;
        Ok(out)
    }

    fn decode_payload(&self, payload: &[u8]) -> Result<V> {
        Ok(self.decode(payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JsonCodec;

    #[test]
    fn ops_round_trip_their_tags() {
        for op in [JournalOp::Put, JournalOp::Delete] {
            assert_eq!(JournalOp::parse(op.as_str()), Some(op));
        }
        assert_eq!(JournalOp::parse("x"), None);
    }

    #[test]
    fn every_codec_is_a_payload_codec() {
        let codec: &dyn PayloadCodec<Vec<u32>> = &JsonCodec;
        let bytes = codec.encode_payload(&vec![1, 2, 3]).unwrap();
        assert_eq!(bytes, b"[1,2,3]");
        assert_eq!(codec.decode_payload(&bytes).unwrap(), vec![1, 2, 3]);
        assert_eq!(
            codec.decode_payload(b"nope").unwrap_err().kind(),
            crate::ErrorKind::Codec
        );
    }
}
