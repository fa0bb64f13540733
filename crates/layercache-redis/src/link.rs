//! The watched connection both invalidation transports keep: connect, listen until the connection
//! is lost, tell the cache, reconnect with a capped backoff; stop when the transport or the cache
//! is gone.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use layercache_core::{Error, InvalidationSink, Result};
use tokio::sync::watch;

use crate::backend::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RECONNECT_DELAY,
};

/// The default interval of a transport's `PING` (1 s): a connection that stops answering is
/// treated as lost after at most about twice this.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(1);

/// The bounds both transports take, with their defaults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkSettings {
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_reconnect_delay: Duration,
    pub(crate) ping_interval: Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_reconnect_delay: DEFAULT_MAX_RECONNECT_DELAY,
            ping_interval: DEFAULT_PING_INTERVAL,
        }
    }
}

impl LinkSettings {
    /// A `Config` error naming `what` when a bound is zero.
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        let LinkSettings {
            command_timeout,
            connect_timeout,
            max_reconnect_delay,
            ping_interval,
        } = *self;
        if [
            command_timeout,
            connect_timeout,
            max_reconnect_delay,
            ping_interval,
        ]
        .iter()
        .any(Duration::is_zero)
        {
            return Err(Error::config(format!(
                "{what}: the timeouts, ping interval and reconnect delay must be greater than zero"
            )));
        }
        Ok(())
    }
}

/// The builder methods of [`LinkSettings`], for a builder with a `settings` field.
macro_rules! link_setters {
    () => {
        /// The bound on each command and `PING` (default
        /// [`DEFAULT_COMMAND_TIMEOUT`](crate::DEFAULT_COMMAND_TIMEOUT)).
        #[must_use]
        pub fn command_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.settings.command_timeout = timeout;
            self
        }

        /// The bound on connecting and setting the connection up (default
        /// [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT)).
        #[must_use]
        pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.settings.connect_timeout = timeout;
            self
        }

        /// The longest pause between attempts to reconnect (default
        /// [`DEFAULT_MAX_RECONNECT_DELAY`](crate::DEFAULT_MAX_RECONNECT_DELAY)).
        #[must_use]
        pub fn max_reconnect_delay(mut self, delay: std::time::Duration) -> Self {
            self.settings.max_reconnect_delay = delay;
            self
        }

        /// How often the connection is pinged (default
        /// [`DEFAULT_PING_INTERVAL`](crate::DEFAULT_PING_INTERVAL)).
        #[must_use]
        pub fn ping_interval(mut self, interval: std::time::Duration) -> Self {
            self.settings.ping_interval = interval;
            self
        }

        /// Trust the CA certificates in `pem` for `rediss://` instead of the default roots
        /// (feature `tls`; default: no private CA), as
        /// [`RedisBackendBuilder::tls_root_ca`](crate::RedisBackendBuilder::tls_root_ca) does.
        #[cfg(feature = "tls")]
        #[must_use]
        pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
            self.root_ca = crate::tls::RootCa(Some(pem.into()));
            self
        }
    };
}
pub(crate) use link_setters;

/// A transport's end of its link: whether it is up, its counters, the signal that stops it, and
/// the rule that one transport serves one cache.
pub(crate) struct LinkHandle {
    pub(crate) settings: LinkSettings,
    connected: Arc<watch::Sender<bool>>,
    pub(crate) state: Arc<LinkState>,
    attached: Mutex<bool>,
    /// Dropped with the transport: the link task then ends.
    stop: watch::Sender<()>,
}

impl LinkHandle {
    pub(crate) fn new(settings: LinkSettings) -> Self {
        LinkHandle {
            settings,
            connected: Arc::new(watch::channel(false).0),
            state: Arc::default(),
            attached: Mutex::new(false),
            stop: watch::channel(()).0,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    pub(crate) async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut connected = self.connected.subscribe();
        tokio::time::timeout(timeout, connected.wait_for(|up| *up))
            .await
            .is_ok_and(|up| up.is_ok())
    }

    /// Starts the link task of `session` for `sink`; a second call is a `Config` error.
    pub(crate) fn start<S: Session>(
        &self,
        session: S,
        sink: Weak<dyn InvalidationSink>,
        what: &'static str,
    ) -> Result<()> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(format!(
                "the {what} transport must be attached within a tokio runtime"
            )));
        }
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        if *attached {
            return Err(Error::config(format!(
                "a {what} transport serves one cache; build one per cache"
            )));
        }
        *attached = true;
        let link = Link {
            session,
            sink,
            connected: Arc::clone(&self.connected),
            state: Arc::clone(&self.state),
            stop: self.stop.subscribe(),
            max_delay: self.settings.max_reconnect_delay,
            what,
        };
        tokio::spawn(link.run());
        Ok(())
    }
}

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
struct Link<S> {
    session: S,
    sink: Weak<dyn InvalidationSink>,
    connected: Arc<watch::Sender<bool>>,
    state: Arc<LinkState>,
    stop: watch::Receiver<()>,
    max_delay: Duration,
    what: &'static str,
}

impl<S: Session> Link<S> {
    /// Runs until the transport or the cache is gone. The cache hears `reconnected` after each
    /// connect and `disconnected` once per outage (also when the first connect fails).
    async fn run(mut self) {
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
                    // The cache hears of the connection (and flushes L1 after an outage) before
                    // anyone waiting for it does: a warm-up that waited is not flushed after.
                    if let Some(sink) = self.sink.upgrade() {
                        sink.reconnected();
                    }
                    self.connected.send_replace(true);
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
