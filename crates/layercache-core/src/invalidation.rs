//! Invalidation between the instances of a cache: what one instance tells the others when it
//! writes, deletes, clears or invalidates a tag, and the seam a transport implements (ADR 0012).
//!
//! A cache publishes an [`InvalidationBatch`] through its [`InvalidationTransport`] after each
//! write has reached the shared tier; every other instance attached to the transport receives it
//! through its [`InvalidationSink`] and drops what it holds in process. A transport that loses its
//! connection says so ([`InvalidationSink::disconnected`]): the cache then caps its in-process
//! tier, and flushes it when the transport is back, because messages may have been missed.
//!
//! [`MemoryTransport`] connects caches of one process (tests, examples); the Redis pub/sub
//! backplane and Redis client tracking live in `layercache-redis`.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;

use crate::codec::CodecError;
use crate::entry::Timestamp;
use crate::envelope::Reader;
use crate::error::Result;
use crate::key::{Key, Namespace};

/// One invalidation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// A key was written or deleted.
    Key(Key),
    /// Every key of a namespace was removed; entries of it created at or before `at` are invalid.
    Namespace {
        /// The namespace.
        namespace: Namespace,
        /// When it was cleared.
        at: Timestamp,
    },
    /// Every entry carrying the tag and created at or before `at` is invalid.
    Tag {
        /// The tag.
        tag: Arc<str>,
        /// When it was invalidated.
        at: Timestamp,
    },
    /// Everything held in process may be stale (a flush seen by client tracking).
    All,
}

/// Invalidations one instance sends at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidationBatch {
    /// The sending instance (a receiver skips its own batches).
    pub origin: u64,
    /// When the batch was sent, by the sender's clock (the measured delay is the receiver's clock
    /// minus this).
    pub sent_at: Timestamp,
    /// The invalidations, in the order they were made.
    pub items: Vec<Invalidation>,
}

const WIRE_MAGIC: &[u8; 4] = b"LCI1";

impl InvalidationBatch {
    /// The batch as bytes (what the Redis backplane publishes): a 4-byte magic, the origin and
    /// the send time, then each item as a kind byte and length-prefixed text.
    ///
    /// ```
    /// use layercache_core::{Invalidation, InvalidationBatch, Key, Timestamp};
    /// let batch = InvalidationBatch {
    ///     origin: 7,
    ///     sent_at: Timestamp::from_millis(1_000),
    ///     items: vec![Invalidation::Key(Key::new("user:1")?), Invalidation::All],
    /// };
    /// assert_eq!(InvalidationBatch::decode(&batch.encode()), Ok(batch));
    /// # Ok::<(), layercache_core::KeyError>(())
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.items.len() * 48);
        out.extend_from_slice(WIRE_MAGIC);
        out.extend_from_slice(&self.origin.to_le_bytes());
        out.extend_from_slice(&self.sent_at.as_millis().to_le_bytes());
        let text = |out: &mut Vec<u8>, text: &str| {
            out.extend_from_slice(&(text.len() as u64).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        };
        for item in &self.items {
            match item {
                Invalidation::Key(key) => {
                    out.push(b'K');
                    text(&mut out, key.as_str());
                }
                Invalidation::Namespace { namespace, at } => {
                    out.push(b'N');
                    out.extend_from_slice(&at.as_millis().to_le_bytes());
                    text(&mut out, namespace.scope());
                }
                Invalidation::Tag { tag, at } => {
                    out.push(b'T');
                    out.extend_from_slice(&at.as_millis().to_le_bytes());
                    text(&mut out, tag);
                }
                Invalidation::All => out.push(b'A'),
            }
        }
        out
    }

    /// A batch from [`encode`](Self::encode)'s bytes; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, CodecError> {
        let corrupt = || CodecError::Corrupt("invalidation batch");
        let mut r = Reader(bytes);
        if r.take(4)? != WIRE_MAGIC {
            return Err(CodecError::NotAnEnvelope);
        }
        let origin = r.u64()?;
        let sent_at = Timestamp::from_millis(r.u64()?);
        let text = |r: &mut Reader<'_>| {
            let len = usize::try_from(r.u64()?).map_err(|_| corrupt())?;
            std::str::from_utf8(r.take(len)?)
                .map(str::to_owned)
                .map_err(|_| corrupt())
        };
        let mut items = Vec::new();
        while !r.0.is_empty() {
            let item = match r.u8()? {
                b'K' => Invalidation::Key(
                    Key::with_max_len(text(&mut r)?, usize::MAX).map_err(|_| corrupt())?,
                ),
                b'N' => {
                    let at = Timestamp::from_millis(r.u64()?);
                    Invalidation::Namespace {
                        namespace: Namespace::from_scope(&text(&mut r)?),
                        at,
                    }
                }
                b'T' => {
                    let at = Timestamp::from_millis(r.u64()?);
                    Invalidation::Tag {
                        tag: text(&mut r)?.into(),
                        at,
                    }
                }
                b'A' => Invalidation::All,
                _ => return Err(corrupt()),
            };
            items.push(item);
        }
        Ok(InvalidationBatch {
            origin,
            sent_at,
            items,
        })
    }
}

/// What a transport delivers to the cache it serves. The cache implements it; a transport holds
/// it weakly and stops delivering once the cache is gone.
pub trait InvalidationSink: Send + Sync {
    /// Another instance's invalidations (or, for client tracking, the server's).
    fn receive(&self, batch: InvalidationBatch);
    /// The transport lost its connection: invalidations may be missed until
    /// [`reconnected`](Self::reconnected).
    fn disconnected(&self);
    /// The transport is connected again; invalidations sent meanwhile may have been missed.
    fn reconnected(&self);
}

/// How the instances of a cache tell each other what they invalidated.
///
/// A cache calls [`attach`](Self::attach) once when it is built, then
/// [`publish`](Self::publish) for its own invalidations. A transport must not deliver an
/// instance's own batches back to it.
#[async_trait]
pub trait InvalidationTransport: Send + Sync + fmt::Debug {
    /// Starts delivering the batches of other instances to `sink`, on behalf of the instance
    /// `origin`.
    fn attach(&self, origin: u64, sink: Weak<dyn InvalidationSink>) -> Result<()>;

    /// Sends `batch` to every other attached instance.
    async fn publish(&self, batch: &InvalidationBatch) -> Result<()>;

    /// Whether the cache must [`publish`](Self::publish) its invalidations (`false` when the
    /// server tells every instance by itself, as Redis client tracking does).
    fn publishes(&self) -> bool {
        true
    }

    /// A short name for logs and metric labels (`"memory"`, `"pubsub"`, `"tracking"`).
    fn name(&self) -> &'static str;
}

/// Invalidation between caches of one process: a batch is delivered to every other attached
/// cache before [`publish`](InvalidationTransport::publish) returns. Clone it into each cache's
/// builder; clones share the same hub.
///
/// ```
/// use layercache_core::MemoryTransport;
/// let transport = MemoryTransport::new();
/// let for_second_cache = transport.clone(); // the same hub
/// # let _ = for_second_cache;
/// ```
#[derive(Clone, Default)]
pub struct MemoryTransport {
    sinks: Arc<Mutex<Vec<Attached>>>,
}

/// An attached cache: its instance id and its sink.
type Attached = (u64, Weak<dyn InvalidationSink>);

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport").finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// A hub with no cache attached.
    pub fn new() -> Self {
        Self::default()
    }

    fn sinks(&self) -> std::sync::MutexGuard<'_, Vec<Attached>> {
        self.sinks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl InvalidationTransport for MemoryTransport {
    fn attach(&self, origin: u64, sink: Weak<dyn InvalidationSink>) -> Result<()> {
        let mut sinks = self.sinks();
        sinks.retain(|(_, sink)| sink.strong_count() > 0);
        sinks.push((origin, sink));
        Ok(())
    }

    async fn publish(&self, batch: &InvalidationBatch) -> Result<()> {
        let receivers: Vec<Arc<dyn InvalidationSink>> = self
            .sinks()
            .iter()
            .filter(|(origin, _)| *origin != batch.origin)
            .filter_map(|(_, sink)| sink.upgrade())
            .collect();
        for sink in receivers {
            sink.receive(batch.clone());
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeySpace;

    #[test]
    fn batches_round_trip_and_garbage_is_an_error() {
        let ns = KeySpace::new("app").unwrap().namespace("users").unwrap();
        let batch = InvalidationBatch {
            origin: u64::MAX,
            sent_at: Timestamp::from_millis(42),
            items: vec![
                Invalidation::Key(ns.key("ü:1\n2").unwrap()),
                Invalidation::Namespace {
                    namespace: ns.clone(),
                    at: Timestamp::from_millis(40),
                },
                Invalidation::Tag {
                    tag: "tenant:9".into(),
                    at: Timestamp::from_millis(41),
                },
                Invalidation::All,
            ],
        };
        let bytes = batch.encode();
        let back = InvalidationBatch::decode(&bytes).unwrap();
        assert_eq!(back, batch);
        let Invalidation::Namespace {
            namespace: back_ns, ..
        } = &back.items[1]
        else {
            panic!("not a namespace");
        };
        assert!(back_ns.contains(&ns.key(5).unwrap()));
        for cut in 0..bytes.len() {
            // A cut batch either fails or decodes to fewer items, never panics.
            if let Ok(partial) = InvalidationBatch::decode(&bytes[..cut]) {
                assert!(partial.items.len() < batch.items.len());
            }
        }
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..5_000 {
            let mut b: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            if rng.bool() && b.len() >= 4 {
                b[..4].copy_from_slice(WIRE_MAGIC);
            }
            let _ = InvalidationBatch::decode(&b);
        }
    }
}
