//! How commands reach Redis: one shared multiplexed `ConnectionManager`, or a deadpool pool.
//!
//! Every command goes through [`Connection::query`], which bounds it by the command timeout and
//! retries an idempotent command once after a dropped connection (a `ConnectionManager` fails the
//! first request after a drop while it reconnects). A Redis Cluster connection becomes one more
//! variant here; nothing above this module knows which kind it talks to.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use layercache_core::{Error, Result};

use crate::cluster::Renewable;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, ScriptInvocation};

/// One command or one pipeline.
#[derive(Clone, Copy)]
pub(crate) enum Request<'a> {
    Cmd(&'a Cmd),
    Pipe(&'a Pipeline),
    /// EVALSHA, with the script loaded and the call repeated on NOSCRIPT.
    Script(&'a ScriptInvocation<'a>),
}

/// Whether a request may be sent twice.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotent {
    Yes,
    No,
}

#[derive(Clone)]
enum Inner {
    Manager(ConnectionManager),
    Pool(deadpool_redis::Pool),
    Cluster(Arc<Renewable>),
}

/// Counters kept by the connection layer.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) retries: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct Connection {
    inner: Inner,
    timeout: Duration,
    /// Bytes per second a value is allowed on top of the timeout (see [`Connection::query_sized`]).
    transfer_rate: u64,
    /// A second shared connection, made on first use, for requests that must not queue behind
    /// the first one's traffic (see [`Connection::aside`]).
    aside: Option<ConnectionManager>,
    pub(crate) counters: Arc<ConnCounters>,
}

/// The default pace a large value is allowed on top of the command timeout: 16 MiB/s, so a
/// 1 MiB value gets 62.5 ms more and a 64 MiB one 4 s more — slow networks and a busy Redis
/// included.
pub const DEFAULT_TRANSFER_RATE: u64 = 16 * 1024 * 1024;

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Manager(_) => "ConnectionManager",
            Inner::Pool(_) => "Pool",
            Inner::Cluster(_) => "Cluster",
        };
        f.debug_struct("Connection")
            .field("kind", &kind)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// [`exec`] on a connection checked out of `pool`.
async fn pooled<T: FromRedisValue>(
    pool: &deadpool_redis::Pool,
    req: Request<'_>,
) -> Result<T, Attempt> {
    let mut conn = pool.get().await.map_err(|e| {
        Attempt::Other(Error::unavailable("no pooled redis connection").with_source(e))
    })?;
    exec(&mut *conn, req).await.map_err(Attempt::Redis)
}

async fn exec<T: FromRedisValue>(
    conn: &mut impl ConnectionLike,
    req: Request<'_>,
) -> Result<T, RedisError> {
    match req {
        Request::Cmd(cmd) => cmd.query_async(conn).await,
        Request::Pipe(pipe) => pipe.query_async(conn).await,
        Request::Script(script) => script.invoke_async(conn).await,
    }
}

fn is_dropped(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal()
}

/// Server error codes that mean "not now" rather than "never": out of memory, busy, loading,
/// failing over.
const TEMPORARY_CODES: &[&str] = &[
    "OOM",
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "READONLY",
];

/// Server error codes of refused rights: an ACL's `NOPERM`, a missing or wrong password.
const PERMISSION_CODES: &[&str] = &["NOPERM", "NOAUTH", "WRONGPASS"];

/// Our error for a redis-rs error: `Timeout`, `Permission` (permanent) or `Unavailable`
/// (temporary when the connection dropped or the server said "not now").
pub(crate) fn redis_error(e: RedisError) -> Error {
    if e.is_timeout() {
        return Error::timeout("redis command timed out").with_source(e);
    }
    // The server's error codes: the command's, or those of the failed commands of a pipeline.
    let codes: Vec<String> = e
        .clone()
        .into_server_errors()
        .map(|errors| errors.iter().map(|(_, e)| e.code().to_owned()).collect())
        .unwrap_or_default();
    let any = |list: &[&str]| codes.iter().any(|code| list.contains(&code.as_str()));
    if e.kind() == redis::ErrorKind::AuthenticationFailed || any(PERMISSION_CODES) {
        return Error::permission("redis refused the command: the user lacks the permission")
            .with_source(e);
    }
    // rustls's refusal of the server's certificate reaches us as an I/O error: it will not go
    // away by retrying (a wrong CA, or a name the certificate does not carry).
    if e.is_io_error() && e.to_string().contains("invalid peer certificate") {
        return Error::unavailable("TLS: the server's certificate was refused")
            .with_source(e)
            .set_temporary(false);
    }
    let temporary = is_dropped(&e) || e.is_cluster_error() || any(TEMPORARY_CODES);
    Error::unavailable("redis command failed")
        .with_source(e)
        .set_temporary(temporary)
}

impl Connection {
    pub(crate) fn manager(manager: ConnectionManager, timeout: Duration) -> Self {
        Self::new(Inner::Manager(manager), timeout)
    }

    pub(crate) fn pool(pool: deadpool_redis::Pool, timeout: Duration) -> Self {
        Self::new(Inner::Pool(pool), timeout)
    }

    pub(crate) fn cluster(cluster: Arc<Renewable>, timeout: Duration) -> Self {
        Self::new(Inner::Cluster(cluster), timeout)
    }

    /// Keeps a second connection manager (lazy: it connects on first use), for
    /// [`aside`](Self::aside).
    pub(crate) fn with_aside(mut self, aside: ConnectionManager) -> Self {
        self.aside = Some(aside);
        self
    }

    /// The connection for a request that must not queue behind this one's traffic (a large
    /// reply in transit, say): the second manager of a shared connection; pools and clusters
    /// hand out such connections already, so them as they are.
    pub(crate) fn aside(&self) -> Connection {
        match &self.aside {
            Some(aside) => Connection {
                inner: Inner::Manager(aside.clone()),
                timeout: self.timeout,
                transfer_rate: self.transfer_rate,
                aside: None,
                counters: Arc::clone(&self.counters),
            },
            None => self.clone(),
        }
    }

    /// Allows values `rate` bytes per second on top of the timeout.
    pub(crate) fn with_transfer_rate(mut self, rate: u64) -> Self {
        self.transfer_rate = rate.max(1);
        self
    }

    /// Whether commands go to a Redis Cluster (multi-key pipelines must then stay in one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// The addresses of the cluster's primaries, from `CLUSTER NODES`; a temporary
    /// `Unavailable` error while one of them is failing (before its replica took over).
    pub(crate) async fn primaries(&self) -> Result<Vec<(String, u16)>> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let nodes: String = self.query(Request::Cmd(&cmd), Idempotent::Yes).await?;
        crate::cluster::primaries_in(&nodes).ok_or_else(|| {
            Error::unavailable("a primary of the cluster is failing; its slots are not served")
        })
    }

    /// Sends `cmd` to the cluster node at `host:port`, bounded by the command timeout.
    pub(crate) async fn query_node<T: FromRedisValue>(
        &self,
        host: &str,
        port: u16,
        cmd: &Cmd,
    ) -> Result<T> {
        let Inner::Cluster(cluster) = &self.inner else {
            return self.query(Request::Cmd(cmd), Idempotent::Yes).await;
        };
        let mut conn = cluster.current();
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        });
        let call = async {
            let value = conn.route_command(cmd.clone(), routing).await?;
            redis::from_redis_value::<T>(value).map_err(RedisError::from)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                Err(redis_error(e))
            }
            Err(_) => {
                self.timed_out();
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                Err(Error::timeout(format!(
                    "redis command exceeded its {:?} timeout",
                    self.timeout
                )))
            }
        }
    }

    /// Counts a request that overran its bound; on a cluster, the slot map may be stale (a dead
    /// primary's replica took over): the connection is renewed.
    fn timed_out(&self) {
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        if let Inner::Cluster(cluster) = &self.inner {
            cluster.renew();
        }
    }

    fn new(inner: Inner, timeout: Duration) -> Self {
        Connection {
            inner,
            timeout,
            transfer_rate: DEFAULT_TRANSFER_RATE,
            aside: None,
            counters: Arc::default(),
        }
    }

    async fn once<T: FromRedisValue>(&self, req: Request<'_>) -> Result<T, Attempt> {
        match &self.inner {
            Inner::Manager(manager) => {
                // A clone of a ConnectionManager is a handle on the same multiplexed connection.
                let mut conn = manager.clone();
                exec(&mut conn, req).await.map_err(Attempt::Redis)
            }
            Inner::Cluster(cluster) => {
                let mut conn = cluster.current();
                exec(&mut conn, req).await.map_err(|e| {
                    if is_dropped(&e) || e.is_timeout() || e.is_cluster_error() {
                        cluster.renew();
                    }
                    Attempt::Redis(e)
                })
            }
            // Boxed: a pool's checkout future is kilobytes, and an unboxed arm would make every
            // request's future (on every connection kind) that large, copied at each await.
            Inner::Pool(pool) => Box::pin(pooled(pool, req)).await,
        }
    }

    /// Sends `req`, bounded by the command timeout, retrying once after a dropped connection when
    /// the request is idempotent.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        req: Request<'_>,
        idempotent: Idempotent,
    ) -> Result<T> {
        self.bounded(req, idempotent, 0, false).await
    }

    /// [`query`](Self::query) of a write carrying `bytes` of values: its bound grows by the time
    /// those bytes take at the transfer rate, and a write that overruns it is reported as one
    /// whose outcome is unknown (Redis may have stored it).
    pub(crate) async fn query_sized<T: FromRedisValue>(
        &self,
        req: Request<'_>,
        idempotent: Idempotent,
        bytes: usize,
    ) -> Result<T> {
        self.bounded(req, idempotent, bytes, true).await
    }

    /// [`query`](Self::query) of a read whose answer is `bytes` long: its bound grows by the time
    /// those bytes take at the transfer rate.
    pub(crate) async fn query_large_read<T: FromRedisValue>(
        &self,
        req: Request<'_>,
        bytes: usize,
    ) -> Result<T> {
        self.bounded(req, Idempotent::Yes, bytes, false).await
    }

    async fn bounded<T: FromRedisValue>(
        &self,
        req: Request<'_>,
        idempotent: Idempotent,
        bytes: usize,
        write: bool,
    ) -> Result<T> {
        let bound = self.timeout.saturating_add(Duration::from_secs_f64(
            bytes as f64 / self.transfer_rate as f64,
        ));
        // The attempt is built in the timeout's argument: held in a local first, it would take
        // a second slot in this future (a future is moved, whole, at every await).
        let result = match tokio::time::timeout(bound, async {
            match self.once(req).await {
                Err(Attempt::Redis(e)) if idempotent == Idempotent::Yes && is_dropped(&e) => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "redis connection dropped; retrying once");
                    self.once(req).await
                }
                other => other,
            }
        })
        .await
        {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(Attempt::Redis(e))) => redis_error(e),
            Ok(Err(Attempt::Other(e))) => e,
            Err(_) => {
                self.timed_out();
                if write && bytes > 0 {
                    Error::timeout(format!(
                        "a redis write of {bytes} bytes exceeded its {bound:?} bound: its outcome \
                         is unknown (Redis may have stored it)"
                    ))
                } else {
                    Error::timeout(format!("redis command exceeded its {bound:?} timeout"))
                }
            }
        };
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        Err(result)
    }
}

enum Attempt {
    Redis(RedisError),
    Other(Error),
}
