//! The watched connection both invalidation transports keep: connect, listen until the connection
//! is lost, tell the cache, reconnect with a capped backoff; stop when the transport or the cache
//! is gone.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use layercache_core::{InvalidationSink, Result};
use tokio::sync::watch;

/// The first pause before reconnecting; it doubles up to the transport's maximum.
const FIRST_DELAY: Duration = Duration::from_millis(25);

/// Why a session ended.
pub(crate) enum Ended {
    /// The transport or the cache is gone: stop.
    Stopped,
    /// The connection was lost: tell the cache, reconnect.
    Lost,
}

/// A transport's connection, as the link drives it.
pub(crate) trait Session: Send + 'static {
    /// The live connection.
    type Conn: Send;

    /// Connects (and subscribes, or turns tracking on), bounded by the transport's timeouts.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn>> + Send;

    /// Delivers what arrives on `conn` to `sink` until the connection is lost or `stop` fires.
    fn listen(
        &mut self,
        conn: Self::Conn,
        sink: &Weak<dyn InvalidationSink>,
        stop: &mut watch::Receiver<()>,
    ) -> impl Future<Output = Ended> + Send;
}

/// Counters and state a transport shares with its link.
#[derive(Debug, Default)]
pub(crate) struct LinkState {
    pub(crate) sessions: AtomicU64,
    pub(crate) disconnects: AtomicU64,
}

/// Everything the link task holds: nothing that keeps the transport alive.
pub(crate) struct Link<S> {
    pub(crate) session: S,
    pub(crate) sink: Weak<dyn InvalidationSink>,
    pub(crate) connected: Arc<watch::Sender<bool>>,
    pub(crate) state: Arc<LinkState>,
    pub(crate) stop: watch::Receiver<()>,
    pub(crate) max_delay: Duration,
    pub(crate) what: &'static str,
}

impl<S: Session> Link<S> {
    /// Runs until the transport or the cache is gone. The cache hears `reconnected` after each
    /// connect and `disconnected` once per outage (also when the first connect fails).
    pub(crate) async fn run(mut self) {
        let mut delay = FIRST_DELAY;
        let mut told_down = false;
        loop {
            if self.sink.strong_count() == 0 {
                return;
            }
            match self.session.connect().await {
                Ok(conn) => {
                    delay = FIRST_DELAY;
                    told_down = false;
                    self.state.sessions.fetch_add(1, Ordering::Relaxed);
                    self.connected.send_replace(true);
                    if let Some(sink) = self.sink.upgrade() {
                        sink.reconnected();
                    }
                    let ended = self.session.listen(conn, &self.sink, &mut self.stop).await;
                    self.connected.send_replace(false);
                    if let Ended::Stopped = ended {
                        return;
                    }
                    self.state.disconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        transport = self.what,
                        "invalidation connection lost; reconnecting"
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, transport = self.what, "invalidation connection failed");
                }
            }
            if !told_down {
                told_down = true;
                if let Some(sink) = self.sink.upgrade() {
                    sink.disconnected();
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = self.stop.changed() => return,
            }
            delay = (delay * 2).min(self.max_delay);
        }
    }
}
