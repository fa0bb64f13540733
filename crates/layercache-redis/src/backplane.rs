//! The Redis pub/sub backplane: an [`InvalidationTransport`] over one channel.
//!
//! Each cache instance publishes its invalidation batches (`PUBLISH`, on a connection manager of
//! its own) and subscribes to the channel on a dedicated connection; it skips its own batches by
//! their origin. The subscriber watches its connection (a `PING` every
//! [`DEFAULT_PING_INTERVAL`](crate::DEFAULT_PING_INTERVAL)), tells the cache when it is lost (the cache then flushes and caps
//! its L1) and when it is back (the cache flushes L1 again: messages sent meanwhile are lost, as
//! pub/sub keeps nothing), and resubscribes with a capped backoff.
//!
//! On a Redis Cluster ([`RedisPubSub::cluster_builder`]) a `PUBLISH` on any node reaches the
//! subscribers of every node (the cluster bus carries it), so the subscriber keeps one connection
//! to one node and, when that node is lost, subscribes again on the next node of the list; batches
//! are published over a cluster connection (made on first publish), which follows failovers.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use layercache_core::{
    Error, InvalidationBatch, InvalidationSink, InvalidationTransport, Result, async_trait,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::connection::{Connection, Idempotent, Request, redis_error};
use crate::link::{Ended, LinkHandle, LinkSettings, Session, link_setters};
use crate::tls::RootCa;
use crate::url::redact;

/// The default channel (`layercache:invalidations`). Caches that share it see each other's
/// invalidations: give each cache (each value type) a channel of its own.
pub const DEFAULT_CHANNEL: &str = "layercache:invalidations";

/// A point-in-time view of a [`RedisPubSub`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PubSubStats {
    /// Batches published.
    pub published: u64,
    /// Batches received from other instances.
    pub received: u64,
    /// Messages on the channel that were not batches (read and ignored).
    pub decode_failures: u64,
    /// Times the subscription was (re)established.
    pub subscriptions: u64,
    /// Times the subscription was lost.
    pub disconnects: u64,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    decode_failures: AtomicU64,
}

/// Builds a [`RedisPubSub`]; see [`RedisPubSub::builder`]. `Debug` redacts the password.
pub struct RedisPubSubBuilder {
    url: String,
    /// The nodes of a Redis Cluster, instead of `url`.
    cluster: Option<Vec<String>>,
    channel: String,
    settings: LinkSettings,
    root_ca: RootCa,
}

impl fmt::Debug for RedisPubSubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPubSubBuilder")
            .field("url", &redact(&self.url))
            .field(
                "cluster",
                &self.cluster.as_deref().map(crate::cluster::shown),
            )
            .field("channel", &self.channel)
            .field("settings", &self.settings)
            .field("tls_root_ca", &self.root_ca)
            .finish()
    }
}

impl RedisPubSubBuilder {
    /// The channel (default [`DEFAULT_CHANNEL`]).
    #[must_use]
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    link_setters!();

    /// Makes the transport; it connects when a cache attaches to it. Must be called within a
    /// tokio runtime. Invalid settings are a `Config` error.
    pub fn build(self) -> Result<RedisPubSub> {
        self.settings.check("the redis backplane")?;
        if self.channel.is_empty() {
            return Err(Error::config("the backplane's channel must not be empty"));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "the redis backplane must be built within a tokio runtime",
            ));
        }
        let urls = crate::url::node_urls(self.cluster.as_deref(), &self.url)?;
        self.root_ca.check(urls.iter().map(String::as_str))?;
        let clients = urls
            .iter()
            .map(|url| self.root_ca.client(url))
            .collect::<Result<Vec<_>>>()?;
        let publisher = match &self.cluster {
            Some(nodes) => Publisher::Cluster {
                nodes: nodes.clone(),
                root_ca: self.root_ca.clone(),
                conn: tokio::sync::OnceCell::new(),
            },
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.settings.connect_timeout))
                    .set_response_timeout(None)
                    .set_max_delay(self.settings.max_reconnect_delay);
                let manager = ConnectionManager::new_lazy_with_config(clients[0].clone(), config)
                    .map_err(|e| {
                    redis_error(e).context("creating the backplane's connection")
                })?;
                Publisher::Ready(Connection::manager(manager, self.settings.command_timeout))
            }
        };
        Ok(RedisPubSub {
            inner: Arc::new(Inner {
                clients,
                publisher,
                redacted_url: crate::cluster::shown(&urls),
                channel: self.channel,
                counters: Arc::default(),
                link: LinkHandle::new(self.settings),
            }),
        })
    }
}

/// Where batches are published.
enum Publisher {
    /// A connection manager to the one server.
    Ready(Connection),
    /// A cluster connection, made on the first publish (building the transport does not wait).
    Cluster {
        nodes: Vec<String>,
        root_ca: RootCa,
        conn: tokio::sync::OnceCell<Connection>,
    },
}

struct Inner {
    /// The subscriber's candidates: the one server, or every cluster node given.
    clients: Vec<redis::Client>,
    publisher: Publisher,
    redacted_url: String,
    channel: String,
    counters: Arc<Counters>,
    link: LinkHandle,
}

/// The Redis pub/sub invalidation backplane; give it to
/// `TieredCacheBuilder::invalidation`. One transport serves one cache (one instance); every
/// instance of the cache uses the same channel.
///
/// What it sees: the invalidations of the instances of this library on the channel — not changes
/// other programs make to Redis (use client tracking for those). Cost: one `PUBLISH` per batch,
/// delivered to every subscriber (fan-out grows with the instance count), and one connection
/// per instance. Messages published while an instance is disconnected are lost to it, so it
/// flushes its L1 when it resubscribes.
#[derive(Clone)]
pub struct RedisPubSub {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPubSub")
            .field("url", &self.inner.redacted_url)
            .field("channel", &self.inner.channel)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RedisPubSub {
    /// A builder for the backplane on the Redis at `url`, with the defaults above.
    pub fn builder(url: impl Into<String>) -> RedisPubSubBuilder {
        RedisPubSubBuilder {
            cluster: None,
            url: url.into(),
            channel: DEFAULT_CHANNEL.to_owned(),
            settings: LinkSettings::default(),
            root_ca: RootCa::default(),
        }
    }

    /// A builder for the backplane on the Redis Cluster reachable through `nodes` (give several:
    /// the subscriber moves to the next when its node is lost). Each batch is published once and
    /// the cluster bus carries it to every node, so each message costs every node of the cluster
    /// (see `docs/scaling.md`).
    pub fn cluster_builder<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
    ) -> RedisPubSubBuilder {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut builder = Self::builder(nodes.first().cloned().unwrap_or_default());
        builder.cluster = Some(nodes);
        builder
    }

    /// Whether the subscription is up now.
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }

    /// Waits until the subscription is up, at most `timeout`; `true` when it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.inner.link.wait_connected(timeout).await
    }

    /// The counters so far.
    pub fn stats(&self) -> PubSubStats {
        let c = &self.inner.counters;
        PubSubStats {
            published: c.published.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            decode_failures: c.decode_failures.load(Ordering::Relaxed),
            subscriptions: self.inner.link.state.sessions.load(Ordering::Relaxed),
            disconnects: self.inner.link.state.disconnects.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl InvalidationTransport for RedisPubSub {
    fn attach(&self, origin: u64, sink: Weak<dyn InvalidationSink>) -> Result<()> {
        let subscriber = Subscriber {
            clients: self.inner.clients.clone(),
            next: 0,
            channel: self.inner.channel.clone(),
            settings: self.inner.link.settings,
            counters: Arc::clone(&self.inner.counters),
            origin,
        };
        self.inner.link.start(subscriber, sink, "pubsub")
    }

    async fn publish(&self, batch: &InvalidationBatch) -> Result<()> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.inner.channel).arg(batch.encode());
        let publisher = match &self.inner.publisher {
            Publisher::Ready(conn) => conn,
            Publisher::Cluster {
                nodes,
                root_ca,
                conn,
            } => {
                let settings = self.inner.link.settings;
                conn.get_or_try_init(|| async {
                    let cluster = crate::cluster::connect(crate::cluster::ClusterSettings {
                        nodes,
                        root_ca,
                        connect_timeout: settings.connect_timeout,
                        response_timeout: settings.command_timeout,
                    })
                    .await?;
                    Ok::<_, Error>(Connection::cluster(cluster, settings.command_timeout))
                })
                .await?
            }
        };
        let _: u64 = publisher.query(Request::Cmd(&cmd), Idempotent::No).await?;
        self.inner
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "pubsub"
    }
}

/// The backplane's side of its link: subscribe, then deliver what arrives and ping.
struct Subscriber {
    clients: Vec<redis::Client>,
    /// The candidate to try next: after a lost or failed connection, the next one.
    next: usize,
    channel: String,
    settings: LinkSettings,
    counters: Arc<Counters>,
    origin: u64,
}

impl Session for Subscriber {
    type Conn = redis::aio::PubSub;

    async fn connect(&mut self) -> Result<redis::aio::PubSub> {
        let index = self.next % self.clients.len().max(1);
        let Some(client) = self.clients.get(index) else {
            return Err(Error::config("the backplane has no node to subscribe on"));
        };
        // Whatever ends this session, the next one starts on the next node.
        self.next = index + 1;
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        tokio::time::timeout(self.settings.connect_timeout, connect)
            .await
            .map_err(|_| Error::timeout("subscribing to the backplane timed out"))?
            .map_err(redis_error)
    }

    async fn listen(
        &mut self,
        pubsub: redis::aio::PubSub,
        sink: &Weak<dyn InvalidationSink>,
        stop: &mut watch::Receiver<()>,
    ) -> Ended {
        let (mut control, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(self.settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return Ended::Lost };
                    let Some(sink) = sink.upgrade() else { return Ended::Stopped };
                    match InvalidationBatch::decode(message.get_payload_bytes()) {
                        Ok(batch) if batch.origin == self.origin => {}
                        Ok(batch) => {
                            self.counters.received.fetch_add(1, Ordering::Relaxed);
                            sink.receive(batch);
                        }
                        Err(error) => {
                            self.counters.decode_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%error, channel = %self.channel, "a message on the backplane is not an invalidation batch; ignored");
                        }
                    }
                }
                _ = ping.tick() => {
                    let answered = tokio::time::timeout(
                        self.settings.command_timeout,
                        control.ping::<redis::Value>(),
                    )
                    .await;
                    if !matches!(answered, Ok(Ok(_))) {
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
