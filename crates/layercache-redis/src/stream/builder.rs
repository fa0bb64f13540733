//! [`RedisWriteJournalBuilder`]: the journal's settings, checked at `connect`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::AsyncConnectionConfig;
use layercache_core::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Reads, RedisWriteJournal, Replication};
use crate::connection::{Connection, redis_error};
use crate::tls::RootCa;
use crate::url::redact;

/// Builds a [`RedisWriteJournal`]; see [`RedisWriteJournal::builder`]. `Debug` redacts the
/// password.
#[derive(Clone)]
pub struct RedisWriteJournalBuilder {
    pub(super) url: String,
    pub(super) stream: String,
    pub(super) group: String,
    pub(super) command_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) max_block: Duration,
    pub(super) pool_size: usize,
    /// The nodes of a Redis Cluster, instead of `url`.
    pub(super) cluster: Option<Vec<String>>,
    pub(super) root_ca: RootCa,
    /// `WAIT` after each append (default none).
    pub(super) replication: Option<Replication>,
}

impl fmt::Debug for RedisWriteJournalBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisWriteJournalBuilder")
            .field("url", &redact(&self.url))
            .field(
                "cluster",
                &self.cluster.as_deref().map(crate::cluster::shown),
            )
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_block", &self.max_block)
            .field("pool_size", &self.pool_size)
            .field("tls_root_ca", &self.root_ca)
            .field("wait_for_replicas", &self.replication)
            .finish()
    }
}

impl RedisWriteJournalBuilder {
    /// The consumer group (default [`DEFAULT_JOURNAL_GROUP`](super::DEFAULT_JOURNAL_GROUP)).
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The bound on each non-blocking command (default
    /// [`DEFAULT_COMMAND_TIMEOUT`](crate::DEFAULT_COMMAND_TIMEOUT)); a blocking read is bounded
    /// by its `BLOCK` plus this.
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The bound on establishing a connection (default
    /// [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT)).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest `BLOCK` of one read (default [`DEFAULT_MAX_BLOCK`](super::DEFAULT_MAX_BLOCK)).
    #[must_use]
    pub fn max_block(mut self, max_block: Duration) -> Self {
        self.max_block = max_block;
        self
    }

    /// Connections in the pool of blocking reads (default [`DEFAULT_JOURNAL_POOL_SIZE`](super::DEFAULT_JOURNAL_POOL_SIZE); a
    /// cluster journal reads over one cluster connection and ignores it).
    #[must_use]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// After each append, wait until `replicas` replicas of the stream's primary have it, at
    /// most `timeout` (Redis `WAIT`, in the append's round trip; default off).
    ///
    /// Replication is asynchronous: without this, a primary that dies may take the appends its
    /// replica had not received yet with it, acknowledged `put`s included, when the replica
    /// takes over. With it, an append returns `Ok` only once `replicas` replicas have it, so a
    /// failover to one of them loses no acknowledged append.
    ///
    /// The costs:
    /// - **Latency**: each append also waits for the replica's acknowledgment (a round trip
    ///   between primary and replica; a slow replica makes every append slow).
    /// - **Throughput**: Redis blocks a client in `WAIT`, so the appends of one journal (they
    ///   share a connection) wait for each other's acknowledgments. Measured on loopback with 32
    ///   concurrent callers: about 39,000 appends/s instead of 128,000 (`docs/scaling.md`).
    /// - **Availability**: while fewer than `replicas` replicas answer (a replica down, or the
    ///   shard just failed over and has none yet), every append waits the whole `timeout` and
    ///   fails with a temporary `Unavailable` error: the journal trades availability for
    ///   durability. A failed append may still be in the journal and be written; it is not
    ///   acknowledged.
    /// - **Connections**: appends get a connection of their own (a cluster connection: one per
    ///   node), so that the worker's acknowledgments and claims never queue behind a `WAIT`.
    ///
    /// An append is bounded by the command timeout plus `timeout`. `WAIT` does not make Redis
    /// strongly consistent: with more replicas than `replicas`, a failover may promote one that
    /// lacks the append, and nodes without persistence that all restart come back empty. Needs
    /// the `WAIT` command (`+wait`, `docs/redis-permissions.md`).
    #[must_use]
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replication = Some(Replication { replicas, timeout });
        self
    }

    /// Trust the CA certificates in `pem` for `rediss://` instead of the default roots (feature
    /// `tls`; default: no private CA), as
    /// [`RedisBackendBuilder::tls_root_ca`](crate::RedisBackendBuilder::tls_root_ca) does.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_ca = RootCa(Some(pem.into()));
        self
    }

    fn check(&self) -> Result<()> {
        match &self.cluster {
            Some(nodes) => self.root_ca.check(nodes.iter().map(String::as_str))?,
            None => self.root_ca.check(std::iter::once(self.url.as_str()))?,
        }
        if self.command_timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.max_block.is_zero()
        {
            return Err(Error::config(
                "journal timeouts and max block must be greater than zero",
            ));
        }
        if self.pool_size == 0 {
            return Err(Error::config("journal pool size must be greater than zero"));
        }
        if let Some(replication) = self.replication {
            // WAIT 0 ms would block forever; WAIT 0 replicas would wait for nothing.
            if replication.replicas == 0 || replication.timeout < Duration::from_millis(1) {
                return Err(Error::config(
                    "waiting for replicas needs at least one replica and a timeout of at least 1 ms",
                ));
            }
        }
        if self.stream.is_empty() || self.group.is_empty() {
            return Err(Error::config("journal stream and group must not be empty"));
        }
        Ok(())
    }

    /// The bound on one append: the command timeout, plus the `WAIT` for replicas if any.
    fn append_bound(&self) -> Duration {
        let wait = self.replication.map_or(Duration::ZERO, |r| r.timeout);
        self.command_timeout.saturating_add(wait)
    }

    fn invalid_url(&self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::config(format!("invalid redis url {}", redact(&self.url))).with_source(e)
    }

    /// Connects, creates the consumer group if it does not exist, and fails with an `Unavailable`
    /// or `Timeout` error when Redis cannot be reached.
    pub async fn connect(self) -> Result<RedisWriteJournal> {
        self.check()?;
        if let Some(nodes) = &self.cluster {
            return self.connect_cluster(nodes).await;
        }
        let client = self.root_ca.client(&self.url)?;
        let manager = |response_timeout| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(response_timeout));
            let url = redact(&self.url);
            let connecting = ConnectionManager::new_with_config(client.clone(), config);
            async move {
                tokio::time::timeout(self.connect_timeout, connecting)
                    .await
                    .map_err(|_| Error::timeout(format!("connecting to {url} timed out")))?
                    .map_err(|e| redis_error(e).context(format!("connecting to {url}")))
            }
        };
        let conn = Connection::manager(manager(self.command_timeout).await?, self.command_timeout);
        let appends = match self.replication {
            None => conn.clone(),
            Some(_) => {
                Connection::manager(manager(self.append_bound()).await?, self.append_bound())
            }
        };

        // Blocking reads wait up to max_block on the server: the connection's own response
        // timeout must let them.
        let read_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.max_block + self.command_timeout));
        // The pool's connections are made with the client's settings (its TLS ones too).
        let manager_for_pool = deadpool_redis::Manager::new_with_config(
            client.get_connection_info().clone(),
            read_config,
        )
        .map_err(|e| self.invalid_url(e))?;
        let pool = deadpool_redis::Pool::builder(manager_for_pool)
            .max_size(self.pool_size)
            .wait_timeout(Some(self.command_timeout))
            .create_timeout(Some(self.connect_timeout))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::config("cannot build the journal's redis pool").with_source(e))?;

        let journal = RedisWriteJournal {
            conn,
            appends,
            reads: Reads::Pool(pool),
            replication: self.replication,
            stream: self.stream.into(),
            group: self.group.into(),
            command_timeout: self.command_timeout,
            max_block: self.max_block,
            redacted_url: redact(&self.url),
            malformed: Arc::default(),
        };
        journal.create_group().await?;
        Ok(journal)
    }

    async fn connect_cluster(&self, nodes: &[String]) -> Result<RedisWriteJournal> {
        let settings = |response_timeout| crate::cluster::ClusterSettings {
            nodes,
            root_ca: &self.root_ca,
            connect_timeout: self.connect_timeout,
            response_timeout,
        };
        let conn = crate::cluster::connect(settings(self.command_timeout)).await?;
        let conn = Connection::cluster(conn, self.command_timeout);
        let appends = match self.replication {
            None => conn.clone(),
            Some(_) => Connection::cluster(
                crate::cluster::connect(settings(self.append_bound())).await?,
                self.append_bound(),
            ),
        };
        // Blocking reads wait up to max_block on the server.
        let reads =
            crate::cluster::connect(settings(self.max_block + self.command_timeout)).await?;
        let journal = RedisWriteJournal {
            conn,
            appends,
            reads: Reads::Cluster(reads),
            replication: self.replication,
            stream: self.stream.clone().into(),
            group: self.group.clone().into(),
            command_timeout: self.command_timeout,
            max_block: self.max_block,
            redacted_url: crate::cluster::shown(nodes),
            malformed: Arc::default(),
        };
        journal.create_group().await?;
        Ok(journal)
    }
}
