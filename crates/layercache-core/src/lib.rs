//! The core of layercache: the traits and value types every tier, guard and strategy shares.
//!
//! This crate does no I/O and owns no runtime: it depends on neither tokio, moka nor redis.
//! Backends (`layercache-moka`, `layercache-redis`) implement [`Backend`]; the layers above
//! compose backends through `Arc<dyn Backend<V>>`.
//!
//! - [`Backend<V>`]: one async, dyn-compatible trait — `get`, `set`, `delete`, their batch forms and
//!   a namespace-scoped `clear`. A miss is `Ok(None)`, never an error.
//! - [`Entry<V>`] and [`EntryMeta`]: a value and what the guards need to know about it (created-at,
//!   fresh-until, stale-until, the measured load cost, tags, format version). [`EntryOptions`] turns a
//!   TTL policy into meta.
//! - [`Key`], [`KeySpace`] and [`Namespace`]: validated keys of the form `prefix:vN:namespace:id`.
//! - [`Codec`] and [`envelope`]: how values become bytes for a shared tier, with a versioned header so
//!   foreign or outdated bytes are detected rather than misread.
//! - [`Error`]: one cheap-to-clone error with an [`ErrorKind`] and a temporary/permanent status.
//! - [`Clock`]: injectable time, with [`SystemClock`] (precise, no thread), [`CoarseClock`] (an
//!   atomic read of a reading one shared thread refreshes while handles live) and [`ManualClock`].
//! - [`Loader<V>`] and [`Writer<V>`]: the source of truth, for the strategies.
//! - [`LockStore`]: where distributed locks live, so lock guards know no Redis.
//! - [`Versions`]: the per-key version table a cache checks before every store into any tier.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use layercache_core::{EntryOptions, KeySpace, Timestamp};
//!
//! let users = KeySpace::new("app")?.with_version(2).namespace("users")?;
//! let key = users.key("42")?;
//! assert_eq!(key.as_str(), "app:v2:users:42");
//!
//! let options = EntryOptions::new(Duration::from_secs(60)).with_stale_ttl(Duration::from_secs(300));
//! let now = Timestamp::from_millis(1_000_000);
//! let entry = options.entry("Ada", now, Duration::from_millis(12))?;
//! assert!(entry.meta.is_fresh(now));
//! assert_eq!(entry.meta.stale_until, now + Duration::from_secs(360));
//! # Ok::<(), layercache_core::Error>(())
//! ```

mod backend;
mod clock;
mod codec;
mod entry;
pub mod envelope;
mod error;
mod invalidation;
mod journal;
mod key;
mod lock;
mod source;
mod versions;

pub use backend::Backend;
pub use clock::{
    COARSE_CLOCK_TICK, Clock, CoarseClock, ManualClock, PreciseClock, READ_ANCHOR,
    READ_CLOCK_ERROR, SYSTEM_CLOCK_TICK, SharedClock, SystemClock,
};
#[cfg(feature = "msgpack")]
pub use codec::MsgPackCodec;
pub use codec::{Codec, CodecError, JsonCodec};
#[cfg(feature = "compression")]
pub use codec::{Compressed, DEFAULT_COMPRESSION_THRESHOLD};
pub use entry::{DEFAULT_HARD_TIMEOUT, Entry, EntryMeta, EntryOptions, Tags, Timestamp};
pub use error::{Error, ErrorKind, Result};
pub use invalidation::{
    Invalidation, InvalidationBatch, InvalidationSink, InvalidationTransport, MemoryTransport,
};
pub use journal::{JournalBacklog, JournalOp, JournalRecord, PayloadCodec, WriteJournal};
pub use key::{DEFAULT_MAX_KEY_LEN, Key, KeyError, KeySpace, MAX_SEGMENT_LEN, Namespace};
pub use lock::LockStore;
pub use source::{Loader, LoaderFn, Writer, loader_fn};
pub use versions::{ClearTicket, Ticket, Versions, WriteTicket};

/// Re-exported so that implementors of [`Backend`], [`Loader`] and [`Writer`] use the same macro.
pub use async_trait::async_trait;
