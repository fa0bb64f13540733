//! `RedisBackend`: the shared tier's reads, writes and clears (builder.rs builds it, ordering.rs
//! keeps order across processes, tags.rs keeps the tag index).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{
    Backend, Clock, Codec, Entry, Error, ErrorKind, JsonCodec, Key, Namespace, Result, SharedClock,
    SystemClock, Timestamp, async_trait, envelope,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod builder;
mod ordering;
mod plain;
mod tags;

pub use builder::RedisBackendBuilder;

use crate::connection::{Connection, Idempotent, Request};
use crate::keyspace::Keyspace;
use crate::url::escape_glob;

/// The default bound on one Redis command, retry included (250 ms).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// The default bound on establishing a connection (1 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The default longest pause between reconnection attempts (1 s).
pub const DEFAULT_MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// The default number of keys asked of each SCAN (and removed by each UNLINK) in `clear`.
pub const DEFAULT_SCAN_BATCH: usize = 500;
/// The default prefix of the tag index's keys: the keys carrying tag `t` are the members of the set
/// `layercache:tag:t`.
pub const DEFAULT_TAG_PREFIX: &str = "layercache:tag:";
/// The default largest value (its stored bytes, envelope included) a backend writes: 1 MiB.
/// Larger values are refused with a `TooLarge` error before anything is sent: Redis and its
/// network handle them, but a cache that holds them slows every reader of the connection.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1024 * 1024;
/// Values at least this long may explain a read's timeout (see `RedisBackend::learn_size`).
const LARGE_READ: usize = 256 * 1024;

/// The Redis keys whose values were found large after a read timed out, with their lengths:
/// their reads are bounded by their size. Bounded: it forgets everything when full.
#[derive(Debug, Default)]
struct LargeValues {
    /// Whether any is remembered: the read path checks this atomic, not the map, so reads of a
    /// backend that never met a large value take no lock and make no key.
    any: std::sync::atomic::AtomicBool,
    known: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// How many large values [`LargeValues`] remembers.
const LARGE_VALUES_REMEMBERED: usize = 1024;

impl LargeValues {
    fn len_of(&self, redis_key: impl FnOnce() -> String) -> Option<usize> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.get(&redis_key()).copied()
    }

    fn remember(&self, redis_key: String, len: usize) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.len() >= LARGE_VALUES_REMEMBERED {
            known.clear();
        }
        known.insert(redis_key, len);
        self.any.store(true, Ordering::Relaxed);
    }
}

/// The default size of the optional connection pool.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// A point-in-time view of a [`RedisBackend`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Reads that found a live, decodable entry.
    pub hits: u64,
    /// Reads that found nothing, an expired entry or bytes that do not decode.
    pub misses: u64,
    /// Values that were present but did not decode (foreign, corrupt, or another codec or format
    /// version); each is also counted as a miss.
    pub decode_failures: u64,
    /// Commands that failed (timeouts included).
    pub errors: u64,
    /// Commands that timed out.
    pub timeouts: u64,
    /// Idempotent commands retried after a dropped connection.
    pub retries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    decode_failures: AtomicU64,
}

/// The shared tier: entries stored in Redis as [envelopes](layercache_core::envelope).
///
/// - Values go through a [`Codec`] (JSON by default) inside a versioned envelope that carries the
///   entry's meta; Redis expiry (`PX`) is the entry's `stale_until`.
/// - Bytes that do not decode — written by another program, an older release or another codec —
///   read as a miss and count in [`RedisStats::decode_failures`]; they never panic or error.
/// - `get_many` is one MGET, `set_many` one pipeline, `delete_many` one UNLINK, and `clear` SCANs
///   and UNLINKs in batches (never KEYS).
/// - Every command is bounded by the command timeout; idempotent reads are retried once after a
///   dropped connection.
///
/// `Debug` output shows the URL with its password redacted. Cloning is cheap and shares the
/// connection.
pub struct RedisBackend<C = JsonCodec> {
    pub(crate) conn: Connection,
    codec: C,
    clock: SharedClock,
    redacted_url: String,
    scan_batch: usize,
    pub(crate) keys: Keyspace,
    tag_prefix: Option<Arc<str>>,
    max_value_size: usize,
    /// Values without the envelope (see plain.rs).
    plain: bool,
    large: Arc<LargeValues>,
    counters: Arc<Counters>,
}

impl<C: Clone> Clone for RedisBackend<C> {
    fn clone(&self) -> Self {
        RedisBackend {
            conn: self.conn.clone(),
            codec: self.codec.clone(),
            clock: Arc::clone(&self.clock),
            redacted_url: self.redacted_url.clone(),
            scan_batch: self.scan_batch,
            keys: self.keys.clone(),
            tag_prefix: self.tag_prefix.clone(),
            max_value_size: self.max_value_size,
            plain: self.plain,
            large: Arc::clone(&self.large),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for RedisBackend<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.redacted_url)
            .field("key_prefix", &self.keys.prefix())
            .field("codec", &self.codec)
            .field("connection", &self.conn)
            .finish()
    }
}

impl RedisBackend<JsonCodec> {
    /// A builder for the Redis at `url` (`redis://[user[:password]@]host[:port][/db]`, or
    /// `rediss://` with the `tls` feature), with the JSON codec and the defaults above.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder<JsonCodec> {
        RedisBackendBuilder {
            url: url.into(),
            codec: JsonCodec,
            clock: Arc::new(SystemClock),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_reconnect_delay: DEFAULT_MAX_RECONNECT_DELAY,
            pool_size: None,
            cluster: None,
            scan_batch: DEFAULT_SCAN_BATCH,
            key_prefix: String::new(),
            tag_prefix: Some(DEFAULT_TAG_PREFIX.into()),
            required: Vec::new(),
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            plain: false,
            transfer_rate: crate::connection::DEFAULT_TRANSFER_RATE,
            root_ca: crate::tls::RootCa::default(),
        }
    }

    /// A builder for the Redis Cluster reachable through `nodes` (any subset of its nodes, as
    /// `redis://host:port` URLs). Multi-key commands are split by slot by the client; `clear`
    /// scans every primary. Build it with [`connect`](RedisBackendBuilder::connect).
    pub fn cluster_builder<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
    ) -> RedisBackendBuilder<JsonCodec> {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut builder = Self::builder(nodes.first().cloned().unwrap_or_default());
        builder.cluster = Some(nodes);
        builder
    }

    /// Connects to `url` with the defaults.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }
}

impl<C: Codec> RedisBackend<C> {
    /// The counters so far.
    pub fn stats(&self) -> RedisStats {
        let conn = &self.conn.counters;
        RedisStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            decode_failures: self.counters.decode_failures.load(Ordering::Relaxed),
            errors: conn.errors.load(Ordering::Relaxed),
            timeouts: conn.timeouts.load(Ordering::Relaxed),
            retries: conn.retries.load(Ordering::Relaxed),
        }
    }

    /// A [`RedisLockStore`](crate::RedisLockStore) on the same connection, for the distributed
    /// lock guard; its keys live under the key prefix too (`<key prefix>layercache:lock:<key>`).
    pub fn lock_store(&self) -> crate::RedisLockStore {
        crate::RedisLockStore::new(self.conn.clone())
            .with_prefix(&self.keys.join(crate::DEFAULT_LOCK_PREFIX))
    }

    /// The prefix in front of every key this backend writes (empty by default); see
    /// [`RedisBackendBuilder::key_prefix`].
    pub fn key_prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// Sends a PING: `Ok` when Redis answers within the command timeout.
    pub async fn ping(&self) -> Result<()> {
        let _: String = self
            .conn
            .query(Request::Cmd(&redis::cmd("PING")), Idempotent::Yes)
            .await?;
        Ok(())
    }

    fn decode<V: DeserializeOwned>(
        &self,
        key: &Key,
        bytes: Option<Vec<u8>>,
        now: Timestamp,
    ) -> Option<Entry<V>> {
        let entry = bytes.and_then(|bytes| {
            match envelope::decode_at::<C, V>(&self.codec, &bytes, now) {
                Ok(entry) => Some(entry),
                // An invalidation's mark: a plain miss.
                Err(layercache_core::CodecError::Tombstone(_)) => None,
                Err(error) => {
                    self.counters
                        .decode_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%key, %error, "value in redis does not decode; read as a miss");
                    None
                }
            }
        });
        match entry {
            Some(entry) if !entry.meta.is_expired(now) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(entry)
            }
            _ => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The envelope of `entry` (its value alone in plain mode), or a `TooLarge` error when it is
    /// over the maximum value size.
    pub(super) fn encode_checked<V: Serialize>(&self, entry: &Entry<V>) -> Result<Vec<u8>> {
        let bytes = if self.plain {
            let mut out = Vec::new();
            self.codec.encode(&entry.value, &mut out)?;
            out
        } else {
            envelope::encode(&self.codec, entry)?
        };
        if bytes.len() > self.max_value_size {
            return Err(Error::too_large(format!(
                "a value of {} bytes is over the maximum value size of {} bytes; nothing was \
                 written (raise it with RedisBackendBuilder::max_value_size)",
                bytes.len(),
                self.max_value_size
            )));
        }
        Ok(bytes)
    }

    /// After a GET of `key` timed out: in the background, on the connection aside, asks the
    /// value's length (`STRLEN`, within the command timeout) and, when the value is large enough
    /// to explain the timeout, remembers it, so that the next reads of the key are bounded by its
    /// size. The caller is not kept waiting: its read ends at the command timeout, as any read.
    fn learn_size(&self, key: &Key) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (aside, large, key) = (self.conn.aside(), Arc::clone(&self.large), key.clone());
        let redis_key = self.keys.join(key.as_str());
        runtime.spawn(async move {
            let mut strlen = redis::cmd("STRLEN");
            strlen.arg(&redis_key);
            if let Ok(len) = aside
                .query::<usize>(Request::Cmd(&strlen), Idempotent::Yes)
                .await
                && len >= LARGE_READ
            {
                tracing::debug!(%key, len, "a large value: its reads get the bound of its size");
                large.remember(redis_key, len);
            }
        });
    }

    /// Adds the command that stores `entry` (or removes `key` if the entry is already expired);
    /// returns the bytes of value it carries.
    fn push_set<V: Serialize>(
        &self,
        pipe: &mut redis::Pipeline,
        key: &Key,
        entry: &Entry<V>,
        now: Timestamp,
    ) -> Result<usize> {
        let Some((bytes, px)) = self.stored_form(entry, now)? else {
            pipe.cmd("UNLINK").arg(self.keys.key(key.as_str())).ignore();
            return Ok(0);
        };
        let len = bytes.len();
        pipe.cmd("SET")
            .arg(self.keys.key(key.as_str()))
            .arg(bytes)
            .arg("PX")
            .arg(px)
            .ignore();
        Ok(len)
    }

    /// What a store of `entry` at `now` sends: its checked bytes and its PX (ms, at least 1), or
    /// `None` when it has already expired.
    pub(super) fn stored_form<V: Serialize>(
        &self,
        entry: &Entry<V>,
        now: Timestamp,
    ) -> Result<Option<(Vec<u8>, u64)>> {
        let ttl = entry.meta.time_to_live(now);
        if ttl.is_zero() {
            return Ok(None);
        }
        let px = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Ok(Some((self.encode_checked(entry)?, px)))
    }
}

#[async_trait]
impl<C, V> Backend<V> for RedisBackend<C>
where
    C: Codec,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn get(&self, key: &Key) -> Result<Option<Entry<V>>> {
        if self.plain {
            // Boxed: its pipeline's future would make every read's future (boxed by the trait,
            // so allocated per read) larger than the allocator's fast path.
            let mut entries = Box::pin(self.get_plain(std::slice::from_ref(key))).await?;
            return Ok(entries.pop().flatten());
        }
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.keys.key(key.as_str()));
        let read = match self.large.len_of(|| self.keys.join(key.as_str())) {
            // A value known to be large: on the connection aside, within the bound of its size.
            Some(len) => {
                self.conn
                    .aside()
                    .query_large_read(Request::Cmd(&cmd), len)
                    .await
            }
            None => self.conn.query(Request::Cmd(&cmd), Idempotent::Yes).await,
        };
        let bytes: Option<Vec<u8>> = match read {
            Ok(bytes) => bytes,
            Err(error) => {
                if error.kind() == ErrorKind::Timeout {
                    self.learn_size(key);
                }
                return Err(error);
            }
        };
        Ok(self.decode(key, bytes, self.clock.now()))
    }

    async fn set(&self, key: &Key, entry: Entry<V>) -> Result<()> {
        let mut pipe = redis::pipe();
        let now = self.clock.now();
        let bytes = self.push_set(&mut pipe, key, &entry, now)?;
        let groups = self.tag_groups([(key, &entry)], now);
        self.index_tags(&mut pipe, groups).await?;
        // SET and UNLINK give the same result when sent twice.
        self.conn
            .query_sized::<()>(Request::Pipe(&pipe), Idempotent::Yes, bytes)
            .await
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        let mut cmd = redis::cmd("UNLINK");
        cmd.arg(self.keys.key(key.as_str()));
        let removed: u64 = self.conn.query(Request::Cmd(&cmd), Idempotent::No).await?;
        Ok(removed > 0)
    }

    async fn set_if_newer(&self, key: &Key, entry: Entry<V>) -> Result<bool> {
        let items = [(key.clone(), entry)];
        let stored = self.send_if_newer(&items, self.clock.now()).await?;
        Ok(stored.first().copied().unwrap_or(false))
    }

    async fn set_many_if_newer(&self, items: Vec<(Key, Entry<V>)>) -> Result<Vec<bool>> {
        self.send_if_newer(&items, self.clock.now()).await
    }

    async fn invalidate(&self, key: &Key, at: Timestamp, window: Duration) -> Result<bool> {
        self.tombstone(key, at, window).await
    }

    async fn invalidate_tag(&self, tag: &str, at: Timestamp, window: Duration) -> Result<u64> {
        self.tombstone_tagged(tag, at, window).await
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry<V>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.plain {
            return self.get_plain(keys).await;
        }
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(self.keys.key(key.as_str()));
        }
        let values: Vec<Option<Vec<u8>>> =
            self.conn.query(Request::Cmd(&cmd), Idempotent::Yes).await?;
        if values.len() != keys.len() {
            return Err(Error::unavailable(format!(
                "MGET of {} keys answered {} values",
                keys.len(),
                values.len()
            )));
        }
        let now = self.clock.now();
        Ok(keys
            .iter()
            .zip(values)
            .map(|(key, bytes)| self.decode(key, bytes, now))
            .collect())
    }

    async fn set_many(&self, items: Vec<(Key, Entry<V>)>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        if self.conn.is_cluster() {
            // A pipeline must stay in one slot: send one per key, concurrently.
            let mut tasks = tokio::task::JoinSet::new();
            let mut pipes = Vec::with_capacity(items.len());
            for (key, entry) in &items {
                let mut pipe = redis::pipe();
                let bytes = self.push_set(&mut pipe, key, entry, now)?;
                pipes.push((pipe, bytes));
            }
            // Every value checked before any is sent.
            for (pipe, bytes) in pipes {
                let conn = self.conn.clone();
                tasks.spawn(async move {
                    conn.query_sized::<()>(Request::Pipe(&pipe), Idempotent::Yes, bytes)
                        .await
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.map_err(|e| Error::unavailable("a redis write task failed").with_source(e))??;
            }
            let groups = self.tag_groups(items.iter().map(|(k, e)| (k, e)), now);
            return self.index_tags(&mut redis::pipe(), groups).await;
        }
        let mut pipe = redis::pipe();
        let mut bytes = 0;
        for (key, entry) in &items {
            bytes += self.push_set(&mut pipe, key, entry, now)?;
        }
        let groups = self.tag_groups(items.iter().map(|(k, e)| (k, e)), now);
        self.index_tags(&mut pipe, groups).await?;
        self.conn
            .query_sized::<()>(Request::Pipe(&pipe), Idempotent::Yes, bytes)
            .await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("UNLINK");
        for key in keys {
            cmd.arg(self.keys.key(key.as_str()));
        }
        self.conn.query(Request::Cmd(&cmd), Idempotent::No).await
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        let pattern = format!(
            "{}{}*",
            escape_glob(self.keys.prefix()),
            escape_glob(namespace.scope())
        );
        if self.conn.is_cluster() {
            let mut removed = 0;
            for (host, port) in self.conn.primaries().await? {
                removed += self.clear_node(&pattern, Some((&host, port))).await?;
            }
            return Ok(removed);
        }
        self.clear_node(&pattern, None).await
    }

    fn check_size(&self, entry: &Entry<V>) -> Result<()> {
        self.encode_checked(entry).map(drop)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

impl<C: Codec> RedisBackend<C> {
    /// SCAN + UNLINK of the keys matching `pattern`, on one node (`None`: the connection's).
    async fn clear_node(&self, pattern: &str, node: Option<(&str, u16)>) -> Result<u64> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(self.scan_batch);
            let (next, keys): (u64, Vec<Vec<u8>>) = match node {
                Some((host, port)) => self.conn.query_node(host, port, &scan).await?,
                None => {
                    self.conn
                        .query(Request::Cmd(&scan), Idempotent::Yes)
                        .await?
                }
            };
            for chunk in keys.chunks(self.scan_batch) {
                let mut unlink = redis::cmd("UNLINK");
                for key in chunk {
                    unlink.arg(key.as_slice());
                }
                removed += self
                    .conn
                    .query::<u64>(Request::Cmd(&unlink), Idempotent::No)
                    .await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}
