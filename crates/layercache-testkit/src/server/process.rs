//! [`RedisServer`]: one server process, and stopping, restarting, pausing and resuming it.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::builder::RedisServerBuilder;
use super::files::last_lines;
use super::launch::{LaunchError, Running, Spec, State};
use super::signals::{send_signal, wait_proc_state};
use super::{HOST, POLL_INTERVAL, SIGNAL_TIMEOUT, START_ATTEMPTS, lock};

/// How long a graceful shutdown may take before the process is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// One `redis-server` child process listening on a free `127.0.0.1` port.
///
/// Persistence is off (`save ""`, `appendonly no`), protected mode is off, and the working
/// directory and log file live in a fresh temporary directory. The port never changes, not even
/// across [`RedisServer::restart`].
///
/// All methods take `&self` (the process handle sits behind a mutex), so a server can live in a
/// `static OnceLock`, an `Arc`, or be shared across threads and tokio tasks; the type is
/// `Send + Sync`. Calls on one server are serialised.
///
/// Dropping the server resumes it if paused, kills it, waits for it and removes its temporary
/// directory; this also happens while a panicking test unwinds.
#[derive(Debug)]
pub struct RedisServer {
    pub(crate) spec: Spec,
    pub(crate) port: u16,
    pub(crate) cluster_port: Option<u16>,
    pub(crate) tls_port: Option<u16>,
    pub(crate) state: Mutex<State>,
}

impl RedisServer {
    /// Starts a server with the default configuration; same as `RedisServer::builder().start()`.
    ///
    /// # Panics
    ///
    /// See [`RedisServerBuilder::start`].
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// A builder to add configuration directives or IPv6 before starting.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The TCP port the server listens on (stable for the server's whole life).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The server's socket address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The connection URL, `redis://127.0.0.1:PORT/` (no credentials, even with `requirepass`).
    pub fn url(&self) -> String {
        format!("redis://{HOST}:{}/", self.port)
    }

    /// The cluster bus port, for servers started with `cluster-enabled yes`.
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster_port
    }

    /// The process id, or `None` while the server is stopped (after [`RedisServer::stop`] or
    /// [`RedisServer::shutdown`], or once the process has exited on its own).
    pub fn pid(&self) -> Option<u32> {
        let mut state = lock(&self.state);
        Self::reap_if_exited(&mut state);
        state.running.as_ref().map(Running::pid)
    }

    /// Whether the process is alive (it may be paused).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Kills the server with SIGKILL and waits for it: a crash, not a graceful shutdown.
    ///
    /// Works while paused. Idempotent: does nothing while stopped. The port stays reserved for
    /// [`RedisServer::restart`].
    pub fn stop(&self) {
        let mut state = lock(&self.state);
        if let Some(running) = state.running.take() {
            running.kill();
        }
        state.paused = false;
    }

    /// Shuts the server down gracefully with SIGTERM (resuming it first if paused) and waits for
    /// it to exit. Does nothing while stopped.
    ///
    /// # Panics
    ///
    /// If the process has not exited 10 s after SIGTERM (it is then killed), or the signal
    /// cannot be sent.
    pub fn shutdown(&self) {
        let mut state = lock(&self.state);
        let Some(mut running) = state.running.take() else {
            state.paused = false;
            return;
        };
        let pid = running.pid();
        // A stopped process would only act on SIGTERM once continued.
        let result = if state.paused {
            send_signal(pid, "CONT")
        } else {
            Ok(())
        };
        state.paused = false;
        running.disarm_watchdog();
        if let Err(message) = result.and_then(|()| send_signal(pid, "TERM")) {
            running.kill();
            panic!("shutdown of redis-server on port {}: {message}", self.port);
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            match running.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
                Ok(None) => {
                    running.kill();
                    panic!(
                        "redis-server on port {} did not exit within {SHUTDOWN_TIMEOUT:?} after \
                         SIGTERM; killed it{}",
                        self.port,
                        self.spec.diagnostics()
                    );
                }
                Err(error) => {
                    running.kill();
                    panic!(
                        "waiting for redis-server on port {} failed: {error}",
                        self.port
                    );
                }
            }
        }
    }

    /// Stops the server if it is running (SIGKILL, like [`RedisServer::stop`]) and starts it
    /// again on the same port, with the same configuration and directory, then waits until it
    /// answers `PING`. Data is not kept (persistence is off); a cluster node keeps its
    /// `nodes.conf` and rejoins.
    ///
    /// # Panics
    ///
    /// If the server does not come back within the retry budget (for instance because another
    /// process took the port meanwhile). The message carries the tail of its log.
    pub fn restart(&self) {
        let mut state = lock(&self.state);
        if let Some(running) = state.running.take() {
            running.kill();
        }
        state.paused = false;
        let mut last = String::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                // Back off: whoever holds the port (a lingering socket, another test) may let go.
                thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            match self
                .spec
                .launch(self.port, self.cluster_port, self.tls_port)
            {
                Ok(running) => {
                    state.running = Some(running);
                    return;
                }
                Err(LaunchError::AddrInUse(message)) => last = message,
                Err(LaunchError::Failed(message)) => {
                    drop(state);
                    panic!(
                        "restart of redis-server on port {} failed: {message}{}",
                        self.port,
                        self.spec.diagnostics()
                    );
                }
            }
        }
        drop(state);
        panic!(
            "restart of redis-server on port {} failed: the port stayed in use over \
             {START_ATTEMPTS} attempts (last: {last}){}",
            self.port,
            self.spec.diagnostics()
        );
    }

    /// Freezes the process with SIGSTOP: connections are still accepted by the kernel, but no
    /// request is answered until [`RedisServer::resume`]. Returns once the process is stopped
    /// (observed through `/proc` on Linux). Idempotent.
    ///
    /// # Panics
    ///
    /// If the server is not running, or the signal cannot be sent.
    pub fn pause(&self) {
        let mut state = lock(&self.state);
        if state.paused {
            return;
        }
        Self::reap_if_exited(&mut state);
        let Some(running) = state.running.as_ref() else {
            drop(state);
            panic!(
                "pause() on redis-server port {}: the server is not running{}",
                self.port,
                self.spec.diagnostics()
            );
        };
        let pid = running.pid();
        if let Err(message) = send_signal(pid, "STOP") {
            drop(state);
            panic!("pause() on redis-server port {}: {message}", self.port);
        }
        state.paused = true;
        if !wait_proc_state(pid, true) {
            drop(state);
            panic!(
                "pause() on redis-server port {}: process {pid} did not stop within \
                 {SIGNAL_TIMEOUT:?}",
                self.port
            );
        }
    }

    /// Continues a process frozen by [`RedisServer::pause`] with SIGCONT. Returns once the
    /// process runs again (observed through `/proc` on Linux). Does nothing unless paused.
    ///
    /// # Panics
    ///
    /// If the signal cannot be sent.
    pub fn resume(&self) {
        let mut state = lock(&self.state);
        if !state.paused {
            return;
        }
        state.paused = false;
        let Some(pid) = state.running.as_ref().map(Running::pid) else {
            return;
        };
        if let Err(message) = send_signal(pid, "CONT") {
            drop(state);
            panic!("resume() on redis-server port {}: {message}", self.port);
        }
        if !wait_proc_state(pid, false) {
            drop(state);
            panic!(
                "resume() on redis-server port {}: process {pid} did not continue within \
                 {SIGNAL_TIMEOUT:?}",
                self.port
            );
        }
    }

    /// Whether the server is paused by [`RedisServer::pause`].
    pub fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// The last `lines` lines of the server's log file (across restarts), for failure messages.
    /// Never panics; describes the problem instead if the log cannot be read.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.spec.log_path) {
            Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), lines),
            Err(error) => format!("<cannot read {}: {error}>", self.spec.log_path.display()),
        }
    }

    /// The server's temporary directory (working directory and log); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// Drops the process handle if the process exited on its own.
    fn reap_if_exited(state: &mut State) {
        if let Some(running) = state.running.as_mut()
            && running.has_exited().is_some()
        {
            state.running = None;
            state.paused = false;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(running) = state.running.take() {
            if state.paused {
                let _ = send_signal(running.pid(), "CONT");
            }
            running.kill();
        }
        state.paused = false;
        let _ = fs::remove_dir_all(&self.spec.dir);
    }
}
