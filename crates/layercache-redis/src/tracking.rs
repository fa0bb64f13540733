//! Redis client tracking as an [`InvalidationTransport`]: the server itself tells each instance
//! which keys changed, whoever changed them.
//!
//! A connection of its own speaks RESP3 and turns on `CLIENT TRACKING ON BCAST [PREFIX p]...
//! NOLOOP`: from then on every change to a key under the prefixes, by any client in any language,
//! arrives as an `invalidate` push message, which the cache applies like another instance's
//! invalidation. A null invalidation (`FLUSHALL`, `FLUSHDB`) flushes L1. The connection is
//! watched with a `PING` every [`DEFAULT_PING_INTERVAL`](crate::DEFAULT_PING_INTERVAL); when it
//! drops the cache flushes and caps L1 until it is back.
//!
//! **On a Redis Cluster** ([`RedisTracking::cluster_builder`]) a server reports only the keys of
//! its own slots, so tracking keeps one such connection per primary (ADR 0015): it asks a node
//! for the primaries (`CLUSTER NODES`), turns tracking on at each, and every `PING` round also
//! checks that the primaries are still the same. A lost primary, or a set that changed (a
//! failover, a resharding), ends the session like a lost connection: the cache flushes and caps
//! L1, and tracking starts again on the new primaries, once none of them is failing.
//!
//! **The race between an invalidation and the reply it invalidates.** The invalidation travels on
//! the tracking connection, the value on the data connection: an instance may read a key, the key
//! may change, and the invalidation may arrive *before* the read's reply. Nothing is lost: the
//! read took a ticket in the cache's version table before it asked Redis, the invalidation bumps
//! the key's version, and the refill of the older value is refused.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use layercache_core::{
    Clock, Error, Invalidation, InvalidationBatch, InvalidationSink, InvalidationTransport, Key,
    Result, SystemClock, async_trait,
};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};

use crate::connection::redis_error;
use crate::keyspace::Keyspace;
use crate::link::{Ended, LinkHandle, LinkSettings, Session, link_setters};
use crate::tls::RootCa;
use crate::url::redact;

/// The client name the tracking connection gives itself (`CLIENT SETNAME`), to find it in
/// `CLIENT LIST`.
pub const TRACKING_CLIENT_NAME: &str = "layercache-tracking";

/// A point-in-time view of a [`RedisTracking`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrackingStats {
    /// Keys the server said changed.
    pub keys_invalidated: u64,
    /// Null invalidations (a flush of the database): each flushed L1.
    pub flushes: u64,
    /// Times tracking was (re)established.
    pub sessions: u64,
    /// Times the tracking connection was lost.
    pub disconnects: u64,
}

#[derive(Debug, Default)]
struct Counters {
    keys: AtomicU64,
    flushes: AtomicU64,
}

/// Builds a [`RedisTracking`]; see [`RedisTracking::builder`]. `Debug` redacts the password.
pub struct RedisTrackingBuilder {
    url: String,
    /// The nodes of a Redis Cluster, instead of `url`.
    cluster: Option<Vec<String>>,
    prefixes: Vec<String>,
    key_prefix: String,
    settings: LinkSettings,
    root_ca: RootCa,
}

impl fmt::Debug for RedisTrackingBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTrackingBuilder")
            .field("url", &redact(&self.url))
            .field(
                "cluster",
                &self.cluster.as_deref().map(crate::cluster::shown),
            )
            .field("prefixes", &self.prefixes)
            .field("key_prefix", &self.key_prefix)
            .field("settings", &self.settings)
            .field("tls_root_ca", &self.root_ca)
            .finish()
    }
}

impl RedisTrackingBuilder {
    /// Tracks only keys starting with `prefix` (call it once per prefix; default: every key).
    /// Give the cache's key space prefix, so that other keys cost no messages.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// The backend's [key prefix](crate::RedisBackendBuilder::key_prefix) (default none): give
    /// the same one. Tracking then follows only keys under it (each [`prefix`](Self::prefix) goes
    /// after it), and hands the cache its keys without it.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    link_setters!();

    /// Makes the transport; it connects when a cache attaches to it. Invalid settings are a
    /// `Config` error.
    pub fn build(self) -> Result<RedisTracking> {
        self.settings.check("client tracking")?;
        if self.prefixes.iter().any(String::is_empty) {
            return Err(Error::config("a tracking prefix must not be empty"));
        }
        let urls = crate::url::node_urls(self.cluster.as_deref(), &self.url)?;
        self.root_ca.check(urls.iter().map(String::as_str))?;
        // RESP3 is what carries push messages.
        let clients = urls
            .iter()
            .map(|url| {
                let separator = if url.contains('?') { '&' } else { '?' };
                self.root_ca
                    .client(&format!("{url}{separator}protocol=resp3"))
            })
            .collect::<Result<Vec<_>>>()?;
        let keys = Keyspace::new(self.key_prefix);
        let mut prefixes: Vec<String> = self.prefixes.iter().map(|p| keys.join(p)).collect();
        if prefixes.is_empty() && !keys.prefix().is_empty() {
            prefixes.push(keys.prefix().to_owned());
        }
        Ok(RedisTracking {
            inner: Arc::new(Inner {
                clients,
                cluster: self.cluster.is_some(),
                redacted_url: crate::cluster::shown(&urls),
                prefixes,
                keys,
                counters: Arc::default(),
                link: LinkHandle::new(self.settings),
            }),
        })
    }
}

struct Inner {
    /// The one server, or the cluster's seed nodes.
    clients: Vec<redis::Client>,
    cluster: bool,
    redacted_url: String,
    prefixes: Vec<String>,
    keys: Keyspace,
    counters: Arc<Counters>,
    link: LinkHandle,
}

/// Redis client tracking (RESP3 push messages) as the invalidation transport; give it to
/// `TieredCacheBuilder::invalidation`. One transport serves one cache.
///
/// What it sees: **every** change to a tracked key, by any client — this library's other
/// instances, other services, `redis-cli` — and database flushes. What it costs: the server
/// sends a message per changed key to every tracking connection (the instance's own changes
/// too, so after its own write an instance reads the key from L2 once more), and one connection
/// per instance. It needs Redis 6 or later and carries only keys: a tag or namespace
/// invalidation reaches the other instances through the keys it removes from Redis. Pick the
/// pub/sub backplane when only this library writes the keys and fewer messages matter; pick
/// tracking when anything else may change them.
#[derive(Clone)]
pub struct RedisTracking {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisTracking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTracking")
            .field("url", &self.inner.redacted_url)
            .field("prefixes", &self.inner.prefixes)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RedisTracking {
    /// A builder for client tracking on the Redis at `url`, with the defaults above.
    pub fn builder(url: impl Into<String>) -> RedisTrackingBuilder {
        RedisTrackingBuilder {
            url: url.into(),
            cluster: None,
            prefixes: Vec::new(),
            key_prefix: String::new(),
            root_ca: RootCa::default(),
            settings: LinkSettings::default(),
        }
    }

    /// A builder for client tracking on the Redis Cluster reachable through `nodes` (any of its
    /// nodes; give several, so that one lost node does not keep tracking from starting again).
    /// Tracking runs on every primary, one connection each, and starts again on the new ones
    /// after a failover (ADR 0015).
    pub fn cluster_builder<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
    ) -> RedisTrackingBuilder {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut builder = Self::builder(nodes.first().cloned().unwrap_or_default());
        builder.cluster = Some(nodes);
        builder
    }

    /// Whether tracking is on now.
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }

    /// Waits until tracking is on, at most `timeout`; `true` when it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.inner.link.wait_connected(timeout).await
    }

    /// The counters so far.
    pub fn stats(&self) -> TrackingStats {
        let c = &self.inner.counters;
        TrackingStats {
            keys_invalidated: c.keys.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            sessions: self.inner.link.state.sessions.load(Ordering::Relaxed),
            disconnects: self.inner.link.state.disconnects.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl InvalidationTransport for RedisTracking {
    fn attach(&self, _origin: u64, sink: Weak<dyn InvalidationSink>) -> Result<()> {
        let tracker = Tracker {
            clients: self.inner.clients.clone(),
            cluster: self.inner.cluster,
            next: 0,
            prefixes: self.inner.prefixes.clone(),
            keys: self.inner.keys.clone(),
            settings: self.inner.link.settings,
            counters: Arc::clone(&self.inner.counters),
        };
        self.inner.link.start(tracker, sink, "tracking")
    }

    async fn publish(&self, _batch: &InvalidationBatch) -> Result<()> {
        Ok(())
    }

    fn publishes(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "tracking"
    }
}

/// Tracking's side of its link.
struct Tracker {
    clients: Vec<redis::Client>,
    cluster: bool,
    /// The seed node asked first for the cluster's primaries; it moves on after a failure.
    next: usize,
    prefixes: Vec<String>,
    keys: Keyspace,
    settings: LinkSettings,
    counters: Arc<Counters>,
}

/// A live tracking session: a connection per server tracked (one, or one per primary), the
/// push messages of all of them, and the primaries it was started on (on a cluster).
struct Tracked {
    conns: Vec<MultiplexedConnection>,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    primaries: Option<Vec<(String, u16)>>,
}

impl Session for Tracker {
    type Conn = Tracked;

    async fn connect(&mut self) -> Result<Tracked> {
        let (pushes, received) = mpsc::unbounded_channel();
        let connect_timeout = self.settings.connect_timeout;
        let connect = async {
            if !self.cluster {
                let Some(client) = self.clients.first() else {
                    return Err(Error::config("client tracking has no server"));
                };
                let conn = self.track(client, &pushes).await?;
                return Ok((vec![conn], None));
            }
            let primaries = self.discover().await?;
            let mut conns = Vec::with_capacity(primaries.len());
            for (host, port) in &primaries {
                let client = self.client_for(host, *port)?;
                conns.push(self.track(&client, &pushes).await?);
            }
            Ok((conns, Some(primaries)))
        };
        let (conns, primaries) = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| Error::timeout("turning client tracking on timed out"))??;
        Ok(Tracked {
            conns,
            pushes: received,
            primaries,
        })
    }

    async fn listen(
        &mut self,
        mut tracked: Tracked,
        sink: &Weak<dyn InvalidationSink>,
        stop: &mut watch::Receiver<()>,
    ) -> Ended {
        let mut ping = tokio::time::interval(self.settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                push = tracked.pushes.recv() => {
                    let Some(push) = push else { return Ended::Lost };
                    let Some(sink) = sink.upgrade() else { return Ended::Stopped };
                    match push.kind {
                        PushKind::Invalidate => {
                            let items = self.invalidations(&push.data);
                            if !items.is_empty() {
                                sink.receive(InvalidationBatch {
                                    origin: 0,
                                    sent_at: SystemClock.now(),
                                    items,
                                });
                            }
                        }
                        PushKind::Disconnection => return Ended::Lost,
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    if !self.still_tracking(&mut tracked).await {
                        return Ended::Lost;
                    }
                    if sink.strong_count() == 0 {
                        return Ended::Stopped;
                    }
                }
                _ = stop.changed() => return Ended::Stopped,
            }
        }
    }
}

impl Tracker {
    /// A RESP3 connection to `client` with tracking on, its pushes sent to `pushes`.
    async fn track(
        &self,
        client: &redis::Client,
        pushes: &mpsc::UnboundedSender<PushInfo>,
    ) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(None)
            .set_push_sender(pushes.clone());
        let setup = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(TRACKING_CLIENT_NAME)
                .query_async::<()>(&mut conn)
                .await?;
            let mut tracking = redis::cmd("CLIENT");
            tracking.arg("TRACKING").arg("ON").arg("BCAST");
            for prefix in &self.prefixes {
                tracking.arg("PREFIX").arg(prefix);
            }
            tracking.arg("NOLOOP");
            tracking.query_async::<()>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        setup
            .await
            .map_err(|e| redis_error(e).context("turning client tracking on"))
    }

    /// The cluster's primaries, asked of the seed nodes in turn (starting after the last one
    /// that failed); an error while a primary is failing, so that tracking starts only once every
    /// slot is served.
    async fn discover(&mut self) -> Result<Vec<(String, u16)>> {
        let mut last = Error::config("client tracking has no cluster node");
        for _ in 0..self.clients.len() {
            let index = self.next % self.clients.len();
            let asked = async {
                let mut conn = self.clients[index]
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(redis_error)?;
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                crate::cluster::primaries_in(&nodes).ok_or_else(|| {
                    Error::unavailable("a primary of the cluster is failing; tracking waits")
                })
            };
            match asked.await {
                Ok(primaries) if !primaries.is_empty() => return Ok(primaries),
                Ok(_) => last = Error::unavailable("the cluster reports no primary"),
                Err(error) => last = error,
            }
            self.next = index + 1;
        }
        Err(last.context("finding the cluster's primaries for client tracking"))
    }

    /// A client for the primary at `host:port`, with the seed's settings (credentials, TLS).
    fn client_for(&self, host: &str, port: u16) -> Result<redis::Client> {
        let Some(seed) = self.clients.first() else {
            return Err(Error::config("client tracking has no cluster node"));
        };
        let info = seed.get_connection_info().clone();
        let addr = match info.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        redis::Client::open(info.set_addr(addr)).map_err(|e| {
            Error::config(format!("no client for the primary {host}:{port}")).with_source(e)
        })
    }

    /// One `PING` round: every connection answers within the command timeout and, on a
    /// cluster, the primaries are still those tracking started on.
    async fn still_tracking(&self, tracked: &mut Tracked) -> bool {
        let timeout = self.settings.command_timeout;
        for conn in &mut tracked.conns {
            let answered =
                tokio::time::timeout(timeout, redis::cmd("PING").query_async::<Value>(conn)).await;
            if !matches!(answered, Ok(Ok(_))) {
                return false;
            }
        }
        let (Some(started_on), Some(conn)) = (&tracked.primaries, tracked.conns.first_mut()) else {
            return true;
        };
        let nodes = tokio::time::timeout(
            timeout,
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(conn),
        )
        .await;
        let Ok(Ok(nodes)) = nodes else { return false };
        let same = crate::cluster::primaries_in(&nodes).is_some_and(|mut now| {
            let mut before = started_on.clone();
            now.sort();
            before.sort();
            now == before
        });
        if !same {
            tracing::info!("the cluster's primaries changed; client tracking starts again on them");
        }
        same
    }
    /// The invalidations in an `invalidate` push: its keys, or everything for a null one.
    fn invalidations(&self, data: &[Value]) -> Vec<Invalidation> {
        match data.first() {
            Some(Value::Array(keys)) => {
                let keys: Vec<Invalidation> = keys
                    .iter()
                    .filter_map(|key| match key {
                        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
                        Value::SimpleString(text) => Some(text.as_str()),
                        _ => None,
                    })
                    .filter_map(|key| self.keys.strip(key))
                    .filter_map(|key| Key::with_max_len(key, usize::MAX).ok())
                    .map(Invalidation::Key)
                    .collect();
                self.counters
                    .keys
                    .fetch_add(keys.len() as u64, Ordering::Relaxed);
                keys
            }
            _ => {
                self.counters.flushes.fetch_add(1, Ordering::Relaxed);
                vec![Invalidation::All]
            }
        }
    }
}
