//! [`RedisBackendBuilder`]: settings, checks, and the three ways to connect.

use std::sync::Arc;
use std::time::Duration;

use layercache_core::{Clock, Codec, Error, JsonCodec, Result, SharedClock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{DEFAULT_POOL_SIZE, RedisBackend};
use crate::connection::{Connection, redis_error};
use crate::url::redact;

/// Builds a [`RedisBackend`]; see [`RedisBackend::builder`].
#[derive(Debug)]
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
    pub(super) tag_prefix: Option<Arc<str>>,
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
