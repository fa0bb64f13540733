//! [`RedisBackendBuilder`]: settings, checks, and the three ways to connect.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use layercache_core::{Clock, Codec, Error, JsonCodec, Result, SharedClock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{DEFAULT_POOL_SIZE, RedisBackend};
use crate::connection::{Connection, redis_error};
use crate::tls::RootCa;
use crate::url::redact;

/// Builds a [`RedisBackend`]; see [`RedisBackend::builder`].
///
/// `Debug` output shows the URLs with their passwords redacted, and no certificate.
pub struct RedisBackendBuilder<C = JsonCodec> {
    pub(super) url: String,
    pub(super) codec: C,
    pub(super) clock: SharedClock,
    pub(super) command_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) max_reconnect_delay: Duration,
    pub(super) pool_size: Option<usize>,
    pub(super) cluster: Option<Vec<String>>,
    pub(super) scan_batch: usize,
    pub(super) key_prefix: String,
    pub(super) tag_prefix: Option<Arc<str>>,
    pub(super) required: Vec<crate::RedisFeature>,
    pub(super) max_value_size: usize,
    pub(super) plain: bool,
    pub(super) transfer_rate: u64,
    /// The CA certificates (PEM) trusted for `rediss://` instead of the default roots.
    pub(super) root_ca: RootCa,
}

impl<C: fmt::Debug> fmt::Debug for RedisBackendBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisBackendBuilder");
        d.field("url", &redact(&self.url))
            .field(
                "cluster",
                &self
                    .cluster
                    .as_ref()
                    .map(|nodes| nodes.iter().map(|node| redact(node)).collect::<Vec<_>>()),
            )
            .field("codec", &self.codec)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("pool_size", &self.pool_size)
            .field("scan_batch", &self.scan_batch)
            .field("key_prefix", &self.key_prefix)
            .field("tag_prefix", &self.tag_prefix)
            .field("tls_root_ca", &self.root_ca);
        d.finish_non_exhaustive()
    }
}

impl<C: Codec> RedisBackendBuilder<C> {
    /// The codec values are stored with (default [`JsonCodec`]).
    ///
    /// To compress large values, wrap the codec: `.codec(Compressed::new(JsonCodec))` (from
    /// `layercache_core::envelope`, feature `compression`) LZ4-compresses payloads over 4 KiB,
    /// or over `Compressed::threshold`. Readers with the plain codec decompress them too.
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
            key_prefix: self.key_prefix,
            tag_prefix: self.tag_prefix,
            required: self.required,
            max_value_size: self.max_value_size,
            plain: self.plain,
            transfer_rate: self.transfer_rate,
            root_ca: self.root_ca,
        }
    }

    /// Trust the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks) for `rediss://`
    /// connections, instead of the default roots: for a Redis whose certificate a private CA
    /// issued. Default: no custom CA; `rediss://` trusts the webpki roots (Mozilla's CA set).
    ///
    /// The server's certificate must still name the URL's host. Applies to the shared connection,
    /// the pool and every cluster node. [`connect`](Self::connect) and
    /// [`connect_lazy`](Self::connect_lazy) fail with a config error when `pem` holds no
    /// certificate or a URL is not `rediss://`. Only with the `tls` feature.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_ca = RootCa(Some(pem.into()));
        self
    }

    /// A prefix in front of every key the backend writes (default none): entries, tombstones,
    /// the tag index and the [lock store](RedisBackend::lock_store)'s locks. Give the prefix a
    /// restricted Redis user is allowed (`app1:` for an ACL of `~app1:*`); see
    /// `docs/redis-permissions.md`. The cache's own keys do not change: `user:1` is stored as
    /// `app1:user:1` and read back as `user:1`.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Store values as the codec's bytes alone, without layercache's envelope (default off): with
    /// the [`JsonCodec`], plain JSON any program reads with a `GET`, its lifetime the key's Redis
    /// TTL. The trade-off (docs/envelope.md, "Plain values"): no stale window for fail-safe, no
    /// load cost for XFetch, no creation time — so no tombstones, and a load in another process
    /// that began before a delete can store its older value after it — and tag invalidation
    /// removes the keys it indexed but cannot refuse older values on read. A cached absence is
    /// JSON `null`.
    #[must_use]
    pub fn plain_values(mut self) -> Self {
        self.plain = true;
        self
    }

    /// The largest value written, in stored bytes (envelope included, after compression; default
    /// [`DEFAULT_MAX_VALUE_SIZE`](crate::DEFAULT_MAX_VALUE_SIZE), 1 MiB). A larger one is a
    /// `TooLarge` error before anything is sent; a cache above returns an oversized loaded value
    /// to its caller without caching it. Raise it for large values, with care: every reader of
    /// the connection waits while one is in transit.
    #[must_use]
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// The pace a large value is allowed on top of the command timeout, in bytes per second
    /// (default [`DEFAULT_TRANSFER_RATE`](crate::DEFAULT_TRANSFER_RATE), 16 MiB/s): a write of `n`
    /// bytes is bounded by `command_timeout + n / rate`, so large values are not cut by a timeout
    /// made for small ones; a write that overruns its bound is a `Timeout` error whose message
    /// says its outcome is unknown. A read that times out makes the backend ask the value's length
    /// in the background (`STRLEN`); a large value's next reads are bounded by its size.
    #[must_use]
    pub fn transfer_rate(mut self, bytes_per_second: u64) -> Self {
        self.transfer_rate = bytes_per_second;
        self
    }

    /// At [`connect`](Self::connect), check that the Redis user may run what `features` need
    /// (default: no check); a refusal fails the connect with a `Permission` error naming the
    /// feature and the command. See [`RedisBackend::check_permissions`].
    #[must_use]
    pub fn check_permissions(mut self, features: &[crate::RedisFeature]) -> Self {
        self.required = features.to_vec();
        self
    }

    /// Where the tag index lives (default [`DEFAULT_TAG_PREFIX`](crate::DEFAULT_TAG_PREFIX)): each tag is a set of the keys
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

    /// The bound on each command, including its one retry (default [`DEFAULT_COMMAND_TIMEOUT`](crate::DEFAULT_COMMAND_TIMEOUT)).
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The bound on establishing a connection (default [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT)).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest pause between reconnection attempts (default [`DEFAULT_MAX_RECONNECT_DELAY`](crate::DEFAULT_MAX_RECONNECT_DELAY)).
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

    /// Use a deadpool-redis pool of [`DEFAULT_POOL_SIZE`](crate::DEFAULT_POOL_SIZE) connections; see [`pool`](Self::pool).
    #[must_use]
    pub fn pooled(self) -> Self {
        self.pool(DEFAULT_POOL_SIZE)
    }

    /// Keys per SCAN and per UNLINK in [`Backend::clear`](layercache_core::Backend::clear) (default [`DEFAULT_SCAN_BATCH`](crate::DEFAULT_SCAN_BATCH)).
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
        // Redis refuses strings over 512 MB (proto-max-bulk-len); the envelope's header is 40.
        if self.max_value_size < 64 || self.max_value_size > 512 * 1024 * 1024 {
            return Err(Error::config(
                "max_value_size must be between 64 bytes and 512 MiB",
            ));
        }
        if self.transfer_rate == 0 {
            return Err(Error::config("transfer_rate must be greater than zero"));
        }
        self.root_ca.check(self.urls())?;
        Ok(())
    }

    fn client(&self) -> Result<redis::Client> {
        self.root_ca.client(&self.url)
    }

    /// The second, lazy connection manager of a shared connection (see `Connection::aside`).
    fn aside(&self, client: redis::Client) -> Result<ConnectionManager> {
        ConnectionManager::new_lazy_with_config(client, self.manager_config())
            .map_err(|e| redis_error(e).context("creating the redis connection aside"))
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
        // The pool's connections are made from the same client (with its TLS settings).
        let info = self.client()?.get_connection_info().clone();
        let manager = deadpool_redis::Manager::new(info).map_err(|e| {
            Error::config(format!("invalid redis url {}", redact(&self.url))).with_source(e)
        })?;
        let pool = deadpool_redis::Pool::builder(manager)
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
            conn: conn.with_transfer_rate(self.transfer_rate),
            codec: self.codec,
            clock: self.clock,
            redacted_url: redact(&self.url),
            scan_batch: self.scan_batch,
            keys: crate::keyspace::Keyspace::new(self.key_prefix),
            tag_prefix: self.tag_prefix,
            max_value_size: self.max_value_size,
            plain: self.plain,
            large: Arc::default(),
            counters: Arc::default(),
        }
    }

    async fn cluster_connection(&self, nodes: &[String]) -> Result<Connection> {
        let cluster = crate::cluster::connect(crate::cluster::ClusterSettings {
            nodes,
            root_ca: &self.root_ca,
            connect_timeout: self.connect_timeout,
            response_timeout: self.command_timeout,
        })
        .await?;
        Ok(Connection::cluster(cluster, self.command_timeout))
    }

    /// Why a connection manager did not connect in time: it retries a refused password or a
    /// refused connection as if the network were slow, so one plain connection attempt (bounded
    /// by the connect timeout too) tells a `Permission` or `Unavailable` error from a timeout.
    async fn why_not_connected(&self, client: &redis::Client) -> Error {
        let shown = redact(&self.url);
        match tokio::time::timeout(
            self.connect_timeout,
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Err(e)) => redis_error(e).context(format!("connecting to {shown}")),
            _ => Error::timeout(format!("connecting to {shown} timed out")),
        }
    }

    /// Connects, and fails with an `Unavailable` or `Timeout` error when Redis cannot be reached
    /// (within twice the connect timeout), a `Permission` error when it refuses the password.
    pub async fn connect(mut self) -> Result<RedisBackend<C>> {
        self.check()?;
        let conn = match (&self.cluster, self.pool_size) {
            (Some(nodes), _) => self.cluster_connection(nodes).await?,
            (None, Some(size)) => self.pool_connection(size)?,
            (None, None) => {
                let client = self.client()?;
                let connecting =
                    ConnectionManager::new_with_config(client.clone(), self.manager_config());
                let manager = match tokio::time::timeout(self.connect_timeout, connecting).await {
                    Ok(connected) => connected.map_err(|e| {
                        redis_error(e).context(format!("connecting to {}", redact(&self.url)))
                    })?,
                    Err(_) => return Err(self.why_not_connected(&client).await),
                };
                Connection::manager(manager, self.command_timeout).with_aside(self.aside(client)?)
            }
        };
        let required = std::mem::take(&mut self.required);
        let backend = self.finish(conn);
        backend.ping().await?;
        if !required.is_empty() {
            backend.check_permissions(&required).await?;
        }
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
                let client = self.client()?;
                let manager =
                    ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config())
                        .map_err(|e| redis_error(e).context("creating the redis connection"))?;
                Connection::manager(manager, self.command_timeout).with_aside(self.aside(client)?)
            }
        };
        Ok(self.finish(conn))
    }
}

impl<C> RedisBackendBuilder<C> {
    /// Every URL this builder connects to: the cluster's nodes, or the one URL.
    fn urls(&self) -> impl Iterator<Item = &str> + Clone {
        let single = self.cluster.is_none().then_some(self.url.as_str());
        self.cluster
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(single)
    }
}
