//! [`PostgresServer`]: one `postgres` child process, its start and its shutdown.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::binaries::Binaries;
use super::files::{create_temp_dir, file_len, last_lines, read_from};
use super::ports::reserve_port;
use super::user::RunAs;
use super::watchdog::spawn_watchdog;
use super::{DEFAULT_POSTGRES_PORT, HOST, POLL_INTERVAL, lock};

/// The superuser `initdb` creates, and the user of [`PostgresServer::url`].
const SUPERUSER: &str = "postgres";
/// The database `start` creates.
const DATABASE: &str = "layercache";
/// How long `start` waits for the server to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the process is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a start is retried when the port turned out to be taken.
const START_ATTEMPTS: u32 = 5;
/// Lines of log shown in panic messages.
const DIAGNOSTIC_LINES: usize = 40;

/// Settings for speed over durability: test data need not survive a crash.
const FAST_SETTINGS: &[&str] = &[
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "shared_buffers=32MB",
    "jit=off",
];

/// One `postgres` child process listening on a free `127.0.0.1` port, with a database
/// `layercache` the superuser `postgres` reaches without a password.
///
/// All methods take `&self`, so a server can live in a `static OnceLock` or an `Arc`; the type is
/// `Send + Sync`. See the [module documentation](super) for what `start` does, running as root
/// and cleaning up.
#[derive(Debug)]
pub struct PostgresServer {
    binaries: Binaries,
    run_as: Option<RunAs>,
    dir: PathBuf,
    port: u16,
    running: Mutex<Option<Running>>,
}

/// The server process plus its watchdog.
#[derive(Debug)]
struct Running {
    child: Child,
    watchdog: Option<Child>,
}

/// Why a launch failed.
enum LaunchError {
    /// The port was taken by someone else: retry with another port.
    AddrInUse(String),
    /// Anything else: give up.
    Failed(String),
}

impl PostgresServer {
    /// Runs `initdb`, starts `postgres` on a free loopback port, waits until it is ready and
    /// creates the database `layercache`.
    ///
    /// # Panics
    ///
    /// When the binaries are missing (the message says how to install them), when the test
    /// process is root and the `postgres` user cannot be created, or when `initdb`, the server or
    /// `createdb` fails or the server is not ready within 30 s (the message carries the log tail).
    pub fn start() -> Self {
        let binaries = Binaries::find().unwrap_or_else(|message| panic!("{message}"));
        let dir = create_temp_dir();
        let mut server = PostgresServer {
            binaries,
            run_as: None,
            dir,
            port: 0,
            running: Mutex::new(None),
        };
        // From here on a panic drops `server`, which removes the directory.
        server.run_as = RunAs::for_dir(&server.dir).unwrap_or_else(|message| panic!("{message}"));
        server.initdb();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut port = reserve_port(false);
            while port == DEFAULT_POSTGRES_PORT {
                port = reserve_port(false);
            }
            match server.launch(port) {
                Ok(running) => {
                    server.port = port;
                    *lock(&server.running) = Some(running);
                    server.create_database();
                    return server;
                }
                Err(LaunchError::AddrInUse(message)) => last_error = message,
                Err(LaunchError::Failed(message)) => {
                    panic!("{message}{}", server.diagnostics())
                }
            }
        }
        panic!(
            "postgres could not bind a free port in {START_ATTEMPTS} attempts: {last_error}{}",
            server.diagnostics()
        );
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL, `postgres://postgres@127.0.0.1:PORT/layercache`.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{DATABASE}", self.port)
    }

    /// The database `start` created: `layercache`.
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// The server's temporary directory (data directory, Unix socket, log), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the server process is alive.
    pub fn is_running(&self) -> bool {
        let mut running = lock(&self.running);
        if let Some(process) = running.as_mut()
            && !matches!(process.child.try_wait(), Ok(None))
            && let Some(process) = running.take()
        {
            process.kill();
        }
        running.is_some()
    }

    /// Shuts the server down with a fast shutdown (SIGINT: open transactions are rolled back,
    /// clients disconnected) and waits for it to exit; kills it if that takes over 10 s.
    /// Idempotent. The data directory stays until the server is dropped.
    pub fn stop(&self) {
        if let Some(process) = lock(&self.running).take() {
            process.shutdown();
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// A command for one of the server binaries, as the server's user, in its directory.
    fn server_command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(&self.dir).stdin(Stdio::null());
        if let Some(user) = self.run_as {
            user.apply(&mut command);
        }
        command
    }

    /// Stdout and stderr handles appending to the log file.
    fn log_handles(&self) -> (Stdio, Stdio) {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .unwrap_or_else(|error| {
                    panic!("could not open {}: {error}", self.log_path().display())
                })
        };
        (Stdio::from(open()), Stdio::from(open()))
    }

    fn initdb(&self) {
        let (stdout, stderr) = self.log_handles();
        let status = self
            .server_command(&self.binaries.initdb)
            .arg("--pgdata")
            .arg(self.data_dir())
            .args([
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ])
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .unwrap_or_else(|error| {
                panic!("could not run {}: {error}", self.binaries.initdb.display())
            });
        assert!(
            status.success(),
            "initdb failed ({status}){}",
            self.diagnostics()
        );
    }

    /// Spawns `postgres` on `port` and waits until its `postmaster.pid` says it is ready.
    fn launch(&self, port: u16) -> Result<Running, LaunchError> {
        let log_offset = file_len(&self.log_path());
        let (stdout, stderr) = self.log_handles();
        let mut command = self.server_command(&self.binaries.postgres);
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &port.to_string(), "-h", HOST, "-k"])
            .arg(&self.dir);
        for setting in FAST_SETTINGS {
            command.args(["-c", setting]);
        }
        let child = command
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|error| {
                LaunchError::Failed(format!(
                    "could not spawn {}: {error}",
                    self.binaries.postgres.display()
                ))
            })?;
        let watchdog = spawn_watchdog(child.id(), &self.dir);
        let mut running = Running { child, watchdog };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = match running.child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(status.to_string()),
                Err(error) => Some(format!("waiting for it failed: {error}")),
            };
            if let Some(status) = exited {
                running.kill();
                let message = format!("postgres exited during startup ({status})");
                return Err(
                    if read_from(&self.log_path(), log_offset).contains("Address already in use") {
                        LaunchError::AddrInUse(message)
                    } else {
                        LaunchError::Failed(message)
                    },
                );
            }
            if self.is_ready(running.child.id()) {
                return Ok(running);
            }
            if Instant::now() >= deadline {
                running.kill();
                return Err(LaunchError::Failed(format!(
                    "postgres was not ready within {READY_TIMEOUT:?}"
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether `postmaster.pid` names process `pid` and the status `ready`: the postmaster then
    /// listens on its sockets and accepts connections (the signal `pg_ctl start --wait` uses).
    fn is_ready(&self, pid: u32) -> bool {
        let Ok(contents) = fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = contents.lines().map(str::trim).collect();
        lines.first() == Some(&pid.to_string().as_str()) && lines.get(7) == Some(&"ready")
    }

    /// Creates the database over TCP, which also proves the port accepts connections.
    fn create_database(&self) {
        let output = Command::new(&self.binaries.createdb)
            .args(["--host", HOST, "--port", &self.port.to_string()])
            .args(["--username", SUPERUSER, "--no-password", DATABASE])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "could not run {}: {error}",
                    self.binaries.createdb.display()
                )
            });
        assert!(
            output.status.success(),
            "createdb {DATABASE} on port {} failed ({}): {}{}",
            self.port,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            self.diagnostics()
        );
    }

    /// The log tail, for panic messages.
    fn diagnostics(&self) -> String {
        let log = last_lines(&read_from(&self.log_path(), 0), DIAGNOSTIC_LINES);
        format!(
            "\n--- {} (last {DIAGNOSTIC_LINES} lines) ---\n{}\n---",
            self.log_path().display(),
            if log.is_empty() { "<empty>" } else { &log },
        )
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Running {
    /// Kills and reaps the watchdog. Must happen before the server process is reaped, so the
    /// watchdog never signals a reused pid.
    fn disarm_watchdog(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// SIGKILL and reap. Never panics.
    fn kill(mut self) {
        self.disarm_watchdog();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fast shutdown (SIGINT), then SIGKILL after [`SHUTDOWN_TIMEOUT`]. Never panics.
    fn shutdown(mut self) {
        self.disarm_watchdog();
        // The shell's `kill`, as in the server module: no `unsafe`, no extra dependency.
        let signalled = Command::new("sh")
            .args(["-c", r#"kill -s INT "$1""#, "layercache-kill"])
            .arg(self.child.id().to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while signalled && Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(POLL_INTERVAL);
        }
        self.kill();
    }
}
