use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{
    Backend, Clock, CoarseClock, Codec, Entry, Error, JsonCodec, Key, Namespace, Result,
    SharedClock, Timestamp, async_trait, envelope,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::{Connection, Idempotent, Request, redis_error};
use crate::url::{escape_glob, redact};

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
/// The default size of the optional connection pool.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Tags to the keys stored with them and the longest TTL among those (ms).
type TagGroups<'a> = std::collections::BTreeMap<&'a str, (Vec<&'a str>, u64)>;

/// Stores an envelope unless the key holds one (an entry or a tombstone) created at or after it
/// (ADR 0012): on a tie, in the same millisecond, the load's store gives way. KEYS[1]; ARGV: the envelope, its PX, its `created_at` in
/// ms. Foreign bytes are replaced. Answers 1 when it stored.
const SET_IF_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.len(cur) >= 14 and string.sub(cur, 1, 3) == '\202LC' then
  local stamp = 0
  for i = 14, 7, -1 do stamp = stamp * 256 + string.byte(cur, i) end
  local new = tonumber(ARGV[3])
  if stamp >= new then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

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

/// Builds a [`RedisBackend`]; see [`RedisBackend::builder`].
#[derive(Debug)]
pub struct RedisBackendBuilder<C = JsonCodec> {
    url: String,
    codec: C,
    clock: SharedClock,
    command_timeout: Duration,
    connect_timeout: Duration,
    max_reconnect_delay: Duration,
    pool_size: Option<usize>,
    cluster: Option<Vec<String>>,
    scan_batch: usize,
    tag_prefix: Option<Arc<str>>,
}

impl<C: Codec> RedisBackendBuilder<C> {
    /// The codec values are stored with (default [`JsonCodec`]).
    pub fn codec<C2: Codec>(self, codec: C2) -> RedisBackendBuilder<C2> {
        RedisBackendBuilder {
            url: self.url,
            codec,
            clock: self.clock,
            command_timeout: self.command_timeout,
            connect_timeout: self.connect_timeout,
            max_reconnect_delay: self.max_reconnect_delay,
            pool_size: self.pool_size,
            cluster: self.cluster,
            scan_batch: self.scan_batch,
            tag_prefix: self.tag_prefix,
        }
    }

    /// Where the tag index lives (default [`DEFAULT_TAG_PREFIX`]): each tag is a set of the keys
    /// stored with it, which `invalidate_tag` removes at once. Its sets expire with the entries
    /// they name (orphans go with them).
    #[must_use]
    pub fn tag_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.tag_prefix = Some(prefix.into().into());
        self
    }

    /// Keep no tag index: entries with tags are stored as they are, and a tag invalidation removes
    /// nothing from Redis (the cache above still refuses, on read, entries made before it).
    #[must_use]
    pub fn without_tag_index(mut self) -> Self {
        self.tag_prefix = None;
        self
    }

    /// The clock that decides expiry (default the system clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The bound on each command, including its one retry (default [`DEFAULT_COMMAND_TIMEOUT`]).
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The bound on establishing a connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest pause between reconnection attempts (default [`DEFAULT_MAX_RECONNECT_DELAY`]).
    #[must_use]
    pub fn max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_reconnect_delay = delay;
        self
    }

    /// Use a deadpool-redis pool of `size` connections instead of the shared multiplexed
    /// connection. The shared connection is the better default for the short, non-blocking commands
    /// a cache sends; a pool pays for blocking commands or for isolating heavy callers.
    #[must_use]
    pub fn pool(mut self, size: usize) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// Use a deadpool-redis pool of [`DEFAULT_POOL_SIZE`] connections; see [`pool`](Self::pool).
    #[must_use]
    pub fn pooled(self) -> Self {
        self.pool(DEFAULT_POOL_SIZE)
    }

    /// Keys per SCAN and per UNLINK in [`Backend::clear`] (default [`DEFAULT_SCAN_BATCH`]).
    #[must_use]
    pub fn scan_batch(mut self, batch: usize) -> Self {
        self.scan_batch = batch;
        self
    }

    fn check(&self) -> Result<()> {
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config("redis timeouts must be greater than zero"));
        }
        if self.scan_batch == 0 || self.pool_size == Some(0) {
            return Err(Error::config(
                "scan_batch and pool size must be greater than zero",
            ));
        }
        Ok(())
    }

    fn client(&self) -> Result<redis::Client> {
        redis::Client::open(self.url.as_str()).map_err(|e| {
            Error::config(format!("invalid redis url {}", redact(&self.url))).with_source(e)
        })
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        // One timer per command: ours (`Connection::query`, which also bounds the retry), not a
        // second one inside redis-rs.
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_max_delay(self.max_reconnect_delay)
    }

    fn pool_connection(&self, size: usize) -> Result<Connection> {
        let pool = deadpool_redis::Config::from_url(self.url.as_str())
            .builder()
            .map_err(|e| {
                Error::config(format!("invalid redis url {}", redact(&self.url))).with_source(e)
            })?
            .max_size(size)
            .wait_timeout(Some(self.command_timeout))
            .create_timeout(Some(self.connect_timeout))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::config("cannot build the redis pool").with_source(e))?;
        Ok(Connection::pool(pool, self.command_timeout))
    }

    fn finish(self, conn: Connection) -> RedisBackend<C> {
        RedisBackend {
            conn,
            codec: self.codec,
            clock: self.clock,
            redacted_url: redact(&self.url),
            scan_batch: self.scan_batch,
            tag_prefix: self.tag_prefix,
            counters: Arc::default(),
        }
    }

    async fn cluster_connection(&self, nodes: &[String]) -> Result<Connection> {
        let shown = || {
            nodes
                .iter()
                .map(|n| redact(n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.command_timeout)
            .build()
            .map_err(|e| {
                Error::config(format!("invalid cluster nodes {}", shown())).with_source(e)
            })?;
        let cluster = tokio::time::timeout(self.connect_timeout, client.get_async_connection())
            .await
            .map_err(|_| {
                Error::timeout(format!("connecting to the cluster {} timed out", shown()))
            })?
            .map_err(|e| {
                redis_error(e).context(format!("connecting to the cluster {}", shown()))
            })?;
        Ok(Connection::cluster(cluster, self.command_timeout))
    }

    /// Connects, and fails with an `Unavailable` or `Timeout` error when Redis cannot be reached.
    pub async fn connect(self) -> Result<RedisBackend<C>> {
        self.check()?;
        let conn = match (&self.cluster, self.pool_size) {
            (Some(nodes), _) => self.cluster_connection(nodes).await?,
            (None, Some(size)) => self.pool_connection(size)?,
            (None, None) => {
                let client = self.client()?;
                let connecting = ConnectionManager::new_with_config(client, self.manager_config());
                let manager = tokio::time::timeout(self.connect_timeout, connecting)
                    .await
                    .map_err(|_| {
                        Error::timeout(format!("connecting to {} timed out", redact(&self.url)))
                    })?
                    .map_err(|e| {
                        redis_error(e).context(format!("connecting to {}", redact(&self.url)))
                    })?;
                Connection::manager(manager, self.command_timeout)
            }
        };
        let backend = self.finish(conn);
        backend.ping().await?;
        Ok(backend)
    }

    /// Builds the backend without connecting: the connection is made on first use. A service can
    /// start while Redis is down; calls fail fast (and callers fall back) until it is up.
    ///
    /// Must be called within a tokio runtime (the connection task is spawned on it); outside one
    /// it is a config error.
    pub fn connect_lazy(self) -> Result<RedisBackend<C>> {
        self.check()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "connect_lazy must be called within a tokio runtime",
            ));
        }
        if self.cluster.is_some() {
            return Err(Error::config(
                "a Redis Cluster backend is made with connect(), not connect_lazy()",
            ));
        }
        let conn = match self.pool_size {
            Some(size) => self.pool_connection(size)?,
            None => {
                let manager =
                    ConnectionManager::new_lazy_with_config(self.client()?, self.manager_config())
                        .map_err(|e| redis_error(e).context("creating the redis connection"))?;
                Connection::manager(manager, self.command_timeout)
            }
        };
        Ok(self.finish(conn))
    }
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
    conn: Connection,
    codec: C,
    clock: SharedClock,
    redacted_url: String,
    scan_batch: usize,
    tag_prefix: Option<Arc<str>>,
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
            tag_prefix: self.tag_prefix.clone(),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for RedisBackend<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.redacted_url)
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
            clock: Arc::new(CoarseClock::new()),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_reconnect_delay: DEFAULT_MAX_RECONNECT_DELAY,
            pool_size: None,
            cluster: None,
            scan_batch: DEFAULT_SCAN_BATCH,
            tag_prefix: Some(DEFAULT_TAG_PREFIX.into()),
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

    /// A [`RedisLockStore`](crate::RedisLockStore) on the same connection, for the distributed lock guard.
    pub fn lock_store(&self) -> crate::RedisLockStore {
        crate::RedisLockStore::new(self.conn.clone())
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
        let entry = bytes.and_then(
            |bytes| match envelope::decode::<C, V>(&self.codec, &bytes) {
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
            },
        );
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

    /// Adds the command that stores `entry` (or removes `key` if the entry is already expired).
    fn push_set<V: Serialize>(
        &self,
        pipe: &mut redis::Pipeline,
        key: &Key,
        entry: &Entry<V>,
        now: Timestamp,
    ) -> Result<()> {
        let ttl = entry.meta.time_to_live(now);
        if ttl.is_zero() {
            pipe.cmd("UNLINK").arg(key.as_str()).ignore();
        } else {
            let bytes = envelope::encode(&self.codec, entry)?;
            let px = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            pipe.cmd("SET")
                .arg(key.as_str())
                .arg(bytes)
                .arg("PX")
                .arg(px)
                .ignore();
        }
        Ok(())
    }

    /// Adds the script that stores `entry` unless the key holds something newer; `false` when
    /// there is nothing to store (the entry already expired).
    fn push_set_if_newer<V: Serialize>(
        &self,
        pipe: &mut redis::Pipeline,
        key: &Key,
        entry: &Entry<V>,
        now: Timestamp,
    ) -> Result<bool> {
        let ttl = entry.meta.time_to_live(now);
        if ttl.is_zero() {
            return Ok(false);
        }
        let bytes = envelope::encode(&self.codec, entry)?;
        let px = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        // EVAL, not EVALSHA: a pipeline cannot reload a script a restarted server forgot, and
        // Redis compiles a script once and keeps it by its hash.
        pipe.cmd("EVAL")
            .arg(SET_IF_NEWER)
            .arg(1)
            .arg(key.as_str())
            .arg(bytes)
            .arg(px)
            .arg(entry.meta.created_at.as_millis());
        Ok(true)
    }

    /// The tag index's work for stored `items`: each tag with the keys stored with it and the
    /// longest of their TTLs (ms). Empty without a tag index.
    fn tag_groups<'a, V>(
        &self,
        items: impl IntoIterator<Item = (&'a Key, &'a Entry<V>)>,
        now: Timestamp,
    ) -> TagGroups<'a>
    where
        V: 'a,
    {
        let mut groups = TagGroups::new();
        if self.tag_prefix.is_none() {
            return groups;
        }
        for (key, entry) in items {
            let px = u64::try_from(entry.meta.time_to_live(now).as_millis()).unwrap_or(u64::MAX);
            if px == 0 {
                continue;
            }
            for tag in entry.meta.tags.as_slice() {
                let group = groups.entry(tag.as_str()).or_insert((Vec::new(), 0));
                group.0.push(key.as_str());
                group.1 = group.1.max(px);
            }
        }
        groups
    }

    fn tag_key(&self, tag: &str) -> String {
        format!(
            "{}{tag}",
            self.tag_prefix.as_deref().unwrap_or(DEFAULT_TAG_PREFIX)
        )
    }

    /// Adds the commands of one tag's group: SADD of its keys, then the set's expiry raised to
    /// the longest TTL (PEXPIRE NX sets it on a new set, GT only raises it). Answers ignored.
    fn push_tag_group(&self, pipe: &mut redis::Pipeline, tag: &str, keys: &[&str], px: u64) {
        let tag_key = self.tag_key(tag);
        pipe.cmd("SADD").arg(&tag_key).arg(keys).ignore();
        pipe.cmd("PEXPIRE").arg(&tag_key).arg(px).arg("NX").ignore();
        pipe.cmd("PEXPIRE").arg(&tag_key).arg(px).arg("GT").ignore();
    }

    /// Sends the tag index's work: into `pipe` on one server, one pipeline per tag (one slot
    /// each) on a cluster.
    async fn index_tags(&self, pipe: &mut redis::Pipeline, groups: TagGroups<'_>) -> Result<()> {
        if !self.conn.is_cluster() {
            for (tag, (keys, px)) in &groups {
                self.push_tag_group(pipe, tag, keys, *px);
            }
            return Ok(());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (tag, (keys, px)) in &groups {
            let mut tag_pipe = redis::pipe();
            self.push_tag_group(&mut tag_pipe, tag, keys, *px);
            let conn = self.conn.clone();
            tasks.spawn(async move {
                conn.query::<()>(Request::Pipe(&tag_pipe), Idempotent::Yes)
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| Error::unavailable("a redis tag index task failed").with_source(e))??;
        }
        Ok(())
    }

    /// Sends one conditional store per pipeline (one slot each on a cluster); answers in order.
    async fn send_if_newer<V: Serialize>(
        &self,
        items: &[(Key, Entry<V>)],
        now: Timestamp,
    ) -> Result<Vec<bool>> {
        let mut stored = vec![false; items.len()];
        if self.conn.is_cluster() {
            let mut tasks = tokio::task::JoinSet::new();
            for (index, (key, entry)) in items.iter().enumerate() {
                let mut pipe = redis::pipe();
                if !self.push_set_if_newer(&mut pipe, key, entry, now)? {
                    continue;
                }
                let conn = self.conn.clone();
                tasks.spawn(async move {
                    let answer: Result<(i64,)> =
                        conn.query(Request::Pipe(&pipe), Idempotent::Yes).await;
                    (index, answer)
                });
            }
            while let Some(done) = tasks.join_next().await {
                let (index, answer) = done
                    .map_err(|e| Error::unavailable("a redis write task failed").with_source(e))?;
                stored[index] = answer?.0 == 1;
            }
            let groups = self.tag_groups(
                items
                    .iter()
                    .zip(&stored)
                    .filter(|(_, s)| **s)
                    .map(|((k, e), _)| (k, e)),
                now,
            );
            self.index_tags(&mut redis::pipe(), groups).await?;
            return Ok(stored);
        }
        let mut pipe = redis::pipe();
        let mut sent = Vec::with_capacity(items.len());
        for (index, (key, entry)) in items.iter().enumerate() {
            if self.push_set_if_newer(&mut pipe, key, entry, now)? {
                sent.push(index);
            }
        }
        if sent.is_empty() {
            return Ok(stored);
        }
        // Indexed whether or not the script stores: a refused entry leaves an orphan the tag's
        // set names until it expires, which an invalidation removes harmlessly.
        let groups = self.tag_groups(items.iter().map(|(k, e)| (k, e)), now);
        self.index_tags(&mut pipe, groups).await?;
        // The script's check and store happen at once, so sending it twice is harmless.
        let answers: Vec<i64> = self
            .conn
            .query(Request::Pipe(&pipe), Idempotent::Yes)
            .await?;
        for (index, answer) in sent.into_iter().zip(answers) {
            stored[index] = answer == 1;
        }
        Ok(stored)
    }
}

#[async_trait]
impl<C, V> Backend<V> for RedisBackend<C>
where
    C: Codec,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn get(&self, key: &Key) -> Result<Option<Entry<V>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key.as_str());
        let bytes: Option<Vec<u8>> = self.conn.query(Request::Cmd(&cmd), Idempotent::Yes).await?;
        Ok(self.decode(key, bytes, self.clock.now()))
    }

    async fn set(&self, key: &Key, entry: Entry<V>) -> Result<()> {
        let mut pipe = redis::pipe();
        let now = self.clock.now();
        self.push_set(&mut pipe, key, &entry, now)?;
        let groups = self.tag_groups([(key, &entry)], now);
        self.index_tags(&mut pipe, groups).await?;
        // SET and UNLINK give the same result when sent twice.
        self.conn
            .query::<()>(Request::Pipe(&pipe), Idempotent::Yes)
            .await
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        let mut cmd = redis::cmd("UNLINK");
        cmd.arg(key.as_str());
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
        let px = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key.as_str())
            .arg(envelope::tombstone(at, at + window))
            .arg("PX")
            .arg(px)
            .arg("GET");
        let old: Option<Vec<u8>> = self.conn.query(Request::Cmd(&cmd), Idempotent::No).await?;
        // Present: a value, not an earlier tombstone.
        Ok(old.is_some_and(|old| !envelope::is_tombstone(&old)))
    }

    async fn invalidate_tag(&self, tag: &str, at: Timestamp, window: Duration) -> Result<u64> {
        if self.tag_prefix.is_none() {
            return Ok(0);
        }
        let tag_key = self.tag_key(tag);
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let mut scan = redis::cmd("SSCAN");
            scan.arg(&tag_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(self.scan_batch);
            let (next, members): (u64, Vec<String>) = self
                .conn
                .query(Request::Cmd(&scan), Idempotent::Yes)
                .await?;
            let keys: Vec<Key> = members
                .iter()
                .filter_map(|m| Key::with_max_len(m, usize::MAX).ok())
                .collect();
            removed += self.tombstone_all(&keys, at, window).await?;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg(&tag_key);
        self.conn
            .query::<u64>(Request::Cmd(&unlink), Idempotent::No)
            .await?;
        Ok(removed)
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry<V>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(key.as_str());
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
            for (key, entry) in &items {
                let mut pipe = redis::pipe();
                self.push_set(&mut pipe, key, entry, now)?;
                let conn = self.conn.clone();
                tasks.spawn(async move {
                    conn.query::<()>(Request::Pipe(&pipe), Idempotent::Yes)
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
        for (key, entry) in &items {
            self.push_set(&mut pipe, key, entry, now)?;
        }
        let groups = self.tag_groups(items.iter().map(|(k, e)| (k, e)), now);
        self.index_tags(&mut pipe, groups).await?;
        self.conn
            .query::<()>(Request::Pipe(&pipe), Idempotent::Yes)
            .await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("UNLINK");
        for key in keys {
            cmd.arg(key.as_str());
        }
        self.conn.query(Request::Cmd(&cmd), Idempotent::No).await
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64> {
        let pattern = format!("{}*", escape_glob(namespace.scope()));
        if self.conn.is_cluster() {
            let mut removed = 0;
            for (host, port) in self.conn.primaries().await? {
                removed += self.clear_node(&pattern, Some((&host, port))).await?;
            }
            return Ok(removed);
        }
        self.clear_node(&pattern, None).await
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

impl<C: Codec> RedisBackend<C> {
    /// Replaces each of `keys` with a tombstone at `at` (one pipeline; one command per key on a
    /// cluster); returns how many held a value.
    async fn tombstone_all(&self, keys: &[Key], at: Timestamp, window: Duration) -> Result<u64> {
        let px = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let tombstone = envelope::tombstone(at, at + window);
        let command = |pipe: &mut redis::Pipeline, key: &Key| {
            pipe.cmd("SET")
                .arg(key.as_str())
                .arg(tombstone.as_slice())
                .arg("PX")
                .arg(px)
                .arg("GET");
        };
        let present = |old: &Option<Vec<u8>>| {
            u64::from(
                old.as_deref()
                    .is_some_and(|old| !envelope::is_tombstone(old)),
            )
        };
        if keys.is_empty() {
            return Ok(0);
        }
        if !self.conn.is_cluster() {
            let mut pipe = redis::pipe();
            for key in keys {
                command(&mut pipe, key);
            }
            let olds: Vec<Option<Vec<u8>>> = self
                .conn
                .query(Request::Pipe(&pipe), Idempotent::No)
                .await?;
            return Ok(olds.iter().map(present).sum());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for key in keys {
            let mut pipe = redis::pipe();
            command(&mut pipe, key);
            let conn = self.conn.clone();
            tasks.spawn(async move {
                conn.query::<(Option<Vec<u8>>,)>(Request::Pipe(&pipe), Idempotent::No)
                    .await
            });
        }
        let mut removed = 0;
        while let Some(done) = tasks.join_next().await {
            let (old,) = done.map_err(|e| {
                Error::unavailable("a redis invalidation task failed").with_source(e)
            })??;
            removed += present(&old);
        }
        Ok(removed)
    }

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
