//! What every Redis Cluster client of this crate shares: the cluster connection redis-rs's
//! cluster-async makes (slot routing, MOVED/ASK, topology refresh after a failover), and the
//! primaries as `CLUSTER NODES` lists them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use layercache_core::{Error, Result};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::connection::redis_error;
use crate::tls::RootCa;
use crate::url::redact;

/// How a cluster connection is made.
pub(crate) struct ClusterSettings<'a> {
    pub(crate) nodes: &'a [String],
    pub(crate) root_ca: &'a RootCa,
    pub(crate) connect_timeout: Duration,
    /// redis-rs's own bound on one reply (ours is around the whole call).
    pub(crate) response_timeout: Duration,
}

/// The cluster's seed nodes, passwords redacted, for messages.
pub(crate) fn shown(nodes: &[String]) -> String {
    nodes
        .iter()
        .map(|n| redact(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shortest time between two renewals of a [`Renewable`] cluster connection.
const RENEW_INTERVAL: Duration = Duration::from_millis(500);

/// A cluster connection that can be made again from the seed nodes.
///
/// redis-rs (1.8) refreshes its slot map on `MOVED`, and on some connection errors of
/// single-slot commands; a request split by slot (`MGET`, `UNLINK` of many keys) that fails on a
/// dead primary, or a request that times out, makes it keep the old map and keep repairing the
/// dead node's connection. So after such a failure the connection layer asks for a renewal: a new
/// cluster connection, which reads the topology afresh from the seed nodes, replaces the old one
/// in the background (at most once per 500 ms). Requests in flight finish on the old one.
pub(crate) struct Renewable {
    client: ClusterClient,
    conn: Mutex<ClusterConnection>,
    connect_timeout: Duration,
    renewing: AtomicBool,
    last: Mutex<Option<Instant>>,
}

impl Renewable {
    /// The current connection (a cheap handle).
    pub(crate) fn current(&self) -> ClusterConnection {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts a renewal in the background unless one runs or one ran less than 500 ms ago.
    pub(crate) fn renew(self: &Arc<Self>) {
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < RENEW_INTERVAL)
                || self.renewing.swap(true, Ordering::AcqRel)
            {
                return;
            }
            *last = Some(Instant::now());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.renewing.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        runtime.spawn(async move {
            let made =
                tokio::time::timeout(this.connect_timeout, this.client.get_async_connection());
            match made.await {
                Ok(Ok(conn)) => {
                    tracing::debug!("renewed the cluster connection (topology read afresh)");
                    *this.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn;
                }
                Ok(Err(error)) => tracing::debug!(%error, "renewing the cluster connection failed"),
                Err(_) => tracing::debug!("renewing the cluster connection timed out"),
            }
            this.renewing.store(false, Ordering::Release);
        });
    }
}

/// Connects to the cluster reachable through `settings.nodes`, bounded by the connect timeout;
/// the connection renews itself after failures (see [`Renewable`]).
pub(crate) async fn connect(settings: ClusterSettings<'_>) -> Result<Arc<Renewable>> {
    let ClusterSettings {
        nodes,
        root_ca,
        connect_timeout,
        response_timeout,
    } = settings;
    if nodes.is_empty() {
        return Err(Error::config("a Redis Cluster needs at least one node URL"));
    }
    root_ca.check(nodes.iter().map(String::as_str))?;
    let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(connect_timeout)
        .response_timeout(response_timeout);
    #[cfg(feature = "tls")]
    let client = match root_ca.certificates() {
        Some(certificates) => client.certs(certificates),
        None => client,
    };
    let client = client.build().map_err(|e| {
        Error::config(format!("invalid cluster nodes {}", shown(nodes))).with_source(e)
    })?;
    let conn = tokio::time::timeout(connect_timeout, client.get_async_connection())
        .await
        .map_err(|_| {
            Error::timeout(format!(
                "connecting to the cluster {} timed out",
                shown(nodes)
            ))
        })?
        .map_err(|e| {
            redis_error(e).context(format!("connecting to the cluster {}", shown(nodes)))
        })?;
    Ok(Arc::new(Renewable {
        client,
        conn: Mutex::new(conn),
        connect_timeout,
        renewing: AtomicBool::new(false),
        last: Mutex::new(None),
    }))
}

/// The addresses of the primaries serving slots in `CLUSTER NODES` output; `None` when one of
/// them is failing (`fail` or `fail?`): its slots are not served until its replica takes over.
/// Primaries without slots (a failed one whose replica took over) are left out.
pub(crate) fn primaries_in(nodes: &str) -> Option<Vec<(String, u16)>> {
    let mut primaries = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(flags) = fields.get(2) else { continue };
        if !flags.split(',').any(|f| f == "master") || fields.len() <= 8 {
            continue;
        }
        if flags.contains("fail") {
            return None;
        }
        let Some((host, port)) = fields
            .get(1)
            .and_then(|address| address.split('@').next())
            .and_then(|address| address.rsplit_once(':'))
        else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        primaries.push((
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        ));
    }
    Some(primaries)
}

#[cfg(test)]
mod tests {
    use super::primaries_in;

    #[test]
    fn primaries_are_the_masters_serving_slots() {
        let nodes = "\
a 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
c 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected
d 127.0.0.1:7004@17004 slave b 0 0 2 connected
e [::1]:7005@17005 master - 0 0 4 connected 10923-16383
";
        assert_eq!(
            primaries_in(nodes),
            Some(vec![
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7002),
                ("::1".to_owned(), 7005),
            ])
        );
        let failing = "a 127.0.0.1:7001@17001 master,fail? - 0 0 1 connected 0-5460\n";
        assert_eq!(primaries_in(failing), None);
    }
}
