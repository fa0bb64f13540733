//! Real `redis-server` processes for tests and benches.
//!
//! [`RedisServer`] runs one `redis-server` child process on a free `127.0.0.1` port, with its
//! own temporary directory and log file, and gives tests control over it: crash it
//! ([`RedisServer::stop`]), shut it down gracefully ([`RedisServer::shutdown`]), bring it back on
//! the same port ([`RedisServer::restart`]) and freeze it ([`RedisServer::pause`] /
//! [`RedisServer::resume`]). [`RedisCluster`] starts a small Redis Cluster out of such servers.
//!
//! The API is synchronous and uses only `std`, so it works the same from `#[test]`,
//! `#[tokio::test]` and criterion benches. Every method that needs the process waits until the
//! process is in the requested state before it returns: `start`/`restart` return once the server
//! answers `PING`, `stop`/`shutdown` once the process has been reaped, `pause`/`resume` once the
//! kernel reports the process stopped/running (on Linux).
//!
//! Failures panic with a message that names the cause and carries the tail of the server's log:
//! in a test kit a clear panic is the intended failure mode. Tests never skip when Redis is
//! missing.
//!
//! # Finding `redis-server`
//!
//! The binary named by the `LAYERCACHE_REDIS_SERVER` environment variable is used if it is set,
//! otherwise `redis-server` is searched on `PATH`; see [`redis_server_binary`].
//!
//! # Cleaning up
//!
//! Dropping a [`RedisServer`] kills the process, waits for it and removes its temporary
//! directory; drop also runs while a panicking test unwinds. For the cases where no destructor
//! runs at all (a server kept in a `static`, `std::process::exit`, an abort or a killed test
//! process), each server is paired with a tiny `sh` watchdog that holds a pipe to the test
//! process and kills the server (and removes its directory) when that pipe closes, that is when
//! the test process is gone.
//!
//! # Example
//!
//! ```no_run
//! use layercache_testkit::server::RedisServer;
//!
//! let server = RedisServer::start();
//! let url = server.url(); // "redis://127.0.0.1:PORT/"
//! # let _ = url;
//! server.pause(); // every request now hangs
//! server.resume();
//! server.stop(); // a crash: SIGKILL
//! server.restart(); // same port, answers PING again
//! ```

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable naming the `redis-server` binary to use instead of the one on `PATH`.
pub const REDIS_SERVER_ENV: &str = "LAYERCACHE_REDIS_SERVER";

/// Environment variable naming the `redis-cli` binary [`RedisCluster`] uses. Without it,
/// `redis-cli` is looked up next to `redis-server`, then on `PATH`.
pub const REDIS_CLI_ENV: &str = "LAYERCACHE_REDIS_CLI";

/// The loopback address every server listens on.
const HOST: &str = "127.0.0.1";
/// How long `start`/`restart` wait for a server to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Connect/read/write timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How many times a start is retried when the port turned out to be taken.
const START_ATTEMPTS: u32 = 5;
/// How long a graceful shutdown may take before the process is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `pause`/`resume` wait for the kernel to report the new process state.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`RedisCluster`] waits for `cluster_state:ok` on every node.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of log shown in panic messages.
const DIAGNOSTIC_LINES: usize = 40;
/// The port of a system Redis that may run on the machine; never handed out.
const DEFAULT_REDIS_PORT: u16 = 6379;

/// Directives the server manages itself; setting them through [`RedisServerBuilder::config`]
/// would break port handling, readiness checks or cleanup.
const MANAGED_DIRECTIVES: &[&str] = &[
    "port",
    "bind",
    "dir",
    "logfile",
    "daemonize",
    "cluster-port",
];

/// Text of the panic (and of the [`redis_server_binary`] error) when no binary is found.
const NOT_FOUND: &str = "redis-server was not found on PATH (set LAYERCACHE_REDIS_SERVER to \
override). Install it: `cargo xtask redis` (runs apt-get as root), `sudo apt-get install \
redis-server` (Debian/Ubuntu) or `brew install redis` (macOS). Tests never skip when Redis is \
absent.";

/// `sh` script of the watchdog: wait until the test process closes our stdin (by exiting in any
/// way), then kill the server (`$1`) and remove its directory (`$2`). While the test process
/// lives it kills the watchdog itself before it reaps the server, so `$1` is never a reused pid.
const WATCHDOG_SCRIPT: &str =
    r#"while read -r _; do :; done; kill -s KILL "$1" 2>/dev/null; rm -rf -- "$2""#;

/// Ports handed out by this process; never handed out twice.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Makes temporary directory names unique within this process.
static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Locks `mutex`, ignoring poisoning: the guarded state stays consistent across the panics this
/// module raises, and `Drop` must never panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Binary lookup
// ---------------------------------------------------------------------------------------------

/// Locates the `redis-server` binary.
///
/// Uses the path in the `LAYERCACHE_REDIS_SERVER` environment variable if it is set (a bare
/// name there is searched on `PATH`), otherwise searches the directories of `PATH` for an
/// executable `redis-server`.
///
/// # Errors
///
/// Returns a message explaining how to install Redis when no binary is found, or naming the bad
/// value when `LAYERCACHE_REDIS_SERVER` points nowhere.
pub fn redis_server_binary() -> Result<PathBuf, String> {
    locate(
        "redis-server",
        REDIS_SERVER_ENV,
        std::env::var_os(REDIS_SERVER_ENV),
        std::env::var_os("PATH"),
        None,
    )
    .ok_or_else(|| NOT_FOUND.to_owned())
    .and_then(|found| found)
}

/// Locates `redis-cli`: `LAYERCACHE_REDIS_CLI`, then next to `server_binary`, then `PATH`.
fn redis_cli_binary(server_binary: &Path) -> Result<PathBuf, String> {
    locate(
        "redis-cli",
        REDIS_CLI_ENV,
        std::env::var_os(REDIS_CLI_ENV),
        std::env::var_os("PATH"),
        server_binary.parent(),
    )
    .ok_or_else(|| {
        format!(
            "redis-cli was not found next to {} or on PATH (set {REDIS_CLI_ENV} to override); \
             it ships with redis-server (`sudo apt-get install redis-server`, `brew install redis`)",
            server_binary.display()
        )
    })
    .and_then(|found| found)
}

/// Shared lookup logic, free of global state so it can be unit tested.
///
/// Returns `None` when nothing was found, `Some(Err)` when the override is set but invalid.
fn locate(
    name: &str,
    env_name: &str,
    env_override: Option<OsString>,
    path_var: Option<OsString>,
    sibling_dir: Option<&Path>,
) -> Option<Result<PathBuf, String>> {
    if let Some(value) = env_override.filter(|value| !value.is_empty()) {
        let candidate = PathBuf::from(&value);
        if is_executable(&candidate) {
            return Some(Ok(candidate));
        }
        if candidate.components().count() == 1
            && let Some(found) = search_path(&value, path_var.as_ref())
        {
            return Some(Ok(found));
        }
        return Some(Err(format!(
            "{env_name} is set to {}, but that is not an executable file (and not a program on \
             PATH)",
            candidate.display()
        )));
    }
    if let Some(dir) = sibling_dir {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Some(Ok(candidate));
        }
    }
    search_path(name.as_ref(), path_var.as_ref()).map(Ok)
}

/// Searches the directories of a `PATH`-style variable for an executable `name`.
fn search_path(name: &std::ffi::OsStr, path_var: Option<&OsString>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file that may be executed.
fn is_executable(path: &Path) -> bool {
    let Ok(metadata) = fs::metadata(path) else {
        return false;
    };
    if !metadata.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        metadata.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and directories
// ---------------------------------------------------------------------------------------------

/// Picks a port that is free on 127.0.0.1 (and on ::1 when `ipv6`) right now and has not been
/// handed out by this process before.
///
/// Another process may still take it before `redis-server` binds it; starts detect that and
/// retry with a new port.
fn reserve_port(ipv6: bool) -> u16 {
    let mut last_error = String::from("no candidate port");
    for _ in 0..500 {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
            Ok(listener) => listener,
            Err(error) => {
                last_error = format!("binding 127.0.0.1:0 failed: {error}");
                continue;
            }
        };
        let port = match listener.local_addr() {
            Ok(addr) => addr.port(),
            Err(error) => {
                last_error = format!("reading the bound address failed: {error}");
                continue;
            }
        };
        if port == DEFAULT_REDIS_PORT {
            continue;
        }
        if ipv6 && let Err(error) = TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
            last_error = format!("binding [::1]:{port} failed: {error}");
            continue;
        }
        drop(listener);
        if lock(&RESERVED_PORTS).insert(port) {
            return port;
        }
    }
    panic!("could not find a free loopback port for redis-server: {last_error}");
}

/// Creates a fresh, uniquely named directory under the system temporary directory.
fn create_temp_dir() -> PathBuf {
    let base = std::env::temp_dir();
    let mut last_error = None;
    for _ in 0..100 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let name = format!(
            "layercache-redis-{}-{}-{nanos}",
            std::process::id(),
            DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = base.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some(error),
            Err(error) => panic!(
                "could not create a temporary directory for redis-server at {}: {error}",
                dir.display()
            ),
        }
    }
    panic!(
        "could not create a uniquely named temporary directory for redis-server under {}: {:?}",
        base.display(),
        last_error
    );
}

/// Length of the file at `path`, 0 if it does not exist.
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |metadata| metadata.len())
}

/// The contents of `path` from byte `offset` on, lossily decoded; empty if unreadable.
fn read_from(path: &Path, offset: u64) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last `lines` lines of `text`.
fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Signals and process state
// ---------------------------------------------------------------------------------------------

/// Sends `signal` (a name such as `STOP`) to `pid` with the shell's `kill`.
fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"kill -s "$1" "$2""#)
        .arg("layercache-kill")
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|error| format!("could not run `sh -c kill` to send SIG{signal}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`kill -s {signal} {pid}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Whether the process is in the stopped state according to `/proc` (Linux).
///
/// `None` when that cannot be observed (no procfs, or the process is gone).
fn proc_stopped(pid: u32) -> Option<bool> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name, which may itself contain ") ".
    let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
    match state {
        'T' | 't' => Some(true),
        'Z' | 'X' | 'x' => None,
        _ => Some(false),
    }
}

/// Waits until `/proc` reports the process stopped (`want_stopped`) or running.
///
/// Returns `true` at once where the state cannot be observed.
fn wait_proc_state(pid: u32, want_stopped: bool) -> bool {
    let deadline = Instant::now() + SIGNAL_TIMEOUT;
    loop {
        match proc_stopped(pid) {
            None => return true,
            Some(stopped) if stopped == want_stopped => return true,
            Some(_) => {}
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Starts the watchdog for server process `pid` whose directory is `dir`. Best effort: without
/// `sh` there is no watchdog, and only `Drop` cleans up.
fn spawn_watchdog(pid: u32, dir: &Path) -> Option<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("layercache-redis-watchdog")
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Minimal RESP2 client
// ---------------------------------------------------------------------------------------------

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(#[allow(dead_code)] i64),
    Bulk(Option<Vec<u8>>),
    Array(#[allow(dead_code)] Option<Vec<Reply>>),
}

/// Upper bound for bulk strings and arrays, so a foreign service on the port cannot make the
/// probe allocate without bound.
const MAX_RESP_LEN: i64 = 64 * 1024 * 1024;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one `\r\n`-terminated line (without the terminator).
fn read_resp_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    let read = reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut buf)?;
    if read == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !buf.ends_with(b"\r\n") {
        return Err(invalid("RESP line without CRLF"));
    }
    buf.truncate(buf.len() - 2);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn parse_len(text: &str) -> io::Result<i64> {
    let len: i64 = text
        .parse()
        .map_err(|_| invalid(format!("bad RESP length {text:?}")))?;
    if !(-1..=MAX_RESP_LEN).contains(&len) {
        return Err(invalid(format!("RESP length {len} out of range")));
    }
    Ok(len)
}

/// Reads one RESP2 reply.
fn read_reply(reader: &mut impl BufRead, depth: usize) -> io::Result<Reply> {
    if depth > 8 {
        return Err(invalid("RESP reply nested too deeply"));
    }
    let line = read_resp_line(reader)?;
    let mut chars = line.chars();
    let kind = chars.next().ok_or_else(|| invalid("empty RESP line"))?;
    let rest = chars.as_str();
    match kind {
        '+' => Ok(Reply::Simple(rest.to_owned())),
        '-' => Ok(Reply::Error(rest.to_owned())),
        ':' => rest
            .parse()
            .map(Reply::Integer)
            .map_err(|_| invalid(format!("bad RESP integer {rest:?}"))),
        '$' => {
            let len = parse_len(rest)?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Reply::Bulk(None));
            };
            let mut data = vec![0; len + 2];
            reader.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(invalid("RESP bulk string without CRLF"));
            }
            data.truncate(len);
            Ok(Reply::Bulk(Some(data)))
        }
        '*' => {
            let len = parse_len(rest)?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Reply::Array(None));
            };
            let mut items = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                items.push(read_reply(reader, depth + 1)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(invalid(format!("unexpected RESP type byte {other:?}"))),
    }
}

/// A blocking RESP connection with timeouts.
struct RespConnection {
    reader: BufReader<TcpStream>,
}

impl RespConnection {
    fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&request)?;
        read_reply(&mut self.reader, 0)
    }
}

/// The value of `field` in `INFO`/`CLUSTER INFO` output (`field:value` lines).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}

/// Outcome of one readiness probe.
enum Probe {
    /// Nothing (usable) answers on the port yet.
    NotReady,
    /// Our process answers.
    Ready,
    /// Some other process answers on the port; ours will fail to bind it.
    Foreign(String),
}

// ---------------------------------------------------------------------------------------------
// Launching
// ---------------------------------------------------------------------------------------------

/// Everything needed to (re)launch the process.
#[derive(Debug)]
struct Spec {
    binary: PathBuf,
    bind_ipv6: bool,
    /// User directives, already flattened to `--name value` arguments, then raw arguments.
    user_args: Vec<OsString>,
    /// The `requirepass` value, used to verify the process identity during readiness checks.
    password: Option<String>,
    /// Whether `PING` answering `NOAUTH` is expected without a known password (ACL directives,
    /// raw arguments).
    auth_unknown: bool,
    cluster: bool,
    dir: PathBuf,
    log_path: PathBuf,
    output_path: PathBuf,
}

/// A running process plus its watchdog.
#[derive(Debug)]
struct Running {
    child: Child,
    watchdog: Option<Child>,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills and reaps the watchdog. Must happen before the server process is reaped.
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

    /// Whether the process has exited on its own; reaps it (after the watchdog) if so.
    fn has_exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.disarm_watchdog();
                Some(status.to_string())
            }
            Ok(None) => None,
            Err(error) => Some(format!("waiting for it failed: {error}")),
        }
    }
}

/// Why a launch failed.
enum LaunchError {
    /// The port (or cluster bus port) was taken by someone else: retry with another port.
    AddrInUse(String),
    /// Anything else: give up.
    Failed(String),
}

/// Mutable process state.
#[derive(Debug, Default)]
struct State {
    running: Option<Running>,
    paused: bool,
}

impl Spec {
    fn args(&self, port: u16, cluster_port: Option<u16>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--port".into(),
            port.to_string().into(),
            "--bind".into(),
            HOST.into(),
        ];
        if self.bind_ipv6 {
            args.push("::1".into());
        }
        args.extend(
            [
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
            ]
            .map(OsString::from),
        );
        args.push("--dir".into());
        args.push(self.dir.clone().into());
        args.push("--logfile".into());
        args.push(self.log_path.clone().into());
        if let Some(cluster_port) = cluster_port {
            args.push("--cluster-port".into());
            args.push(cluster_port.to_string().into());
        }
        args.extend(self.user_args.iter().cloned());
        args
    }

    /// Spawns the process and waits until it answers `PING` on `port`.
    fn launch(&self, port: u16, cluster_port: Option<u16>) -> Result<Running, LaunchError> {
        let log_offset = file_len(&self.log_path);
        let output_offset = file_len(&self.output_path);
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output_path)
            .map_err(|error| {
                LaunchError::Failed(format!(
                    "could not open {}: {error}",
                    self.output_path.display()
                ))
            })?;
        let output_clone = output.try_clone().map_err(|error| {
            LaunchError::Failed(format!(
                "could not duplicate the output file handle: {error}"
            ))
        })?;
        let child = Command::new(&self.binary)
            .args(self.args(port, cluster_port))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(output_clone))
            .spawn()
            .map_err(|error| {
                LaunchError::Failed(format!(
                    "could not spawn {}: {error}",
                    self.binary.display()
                ))
            })?;
        let watchdog = spawn_watchdog(child.id(), &self.dir);
        let mut running = Running { child, watchdog };
        match self.wait_ready(port, &mut running, log_offset, output_offset) {
            Ok(()) => Ok(running),
            Err(error) => {
                running.kill();
                Err(error)
            }
        }
    }

    fn wait_ready(
        &self,
        port: u16,
        running: &mut Running,
        log_offset: u64,
        output_offset: u64,
    ) -> Result<(), LaunchError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_foreign = None;
        loop {
            if let Some(status) = running.has_exited() {
                let new_output = format!(
                    "{}\n{}",
                    read_from(&self.log_path, log_offset),
                    read_from(&self.output_path, output_offset)
                );
                let message = format!("redis-server exited during startup ({status})");
                return Err(
                    if new_output.contains("Address already in use")
                        || new_output.contains("EADDRINUSE")
                    {
                        LaunchError::AddrInUse(message)
                    } else {
                        LaunchError::Failed(message)
                    },
                );
            }
            match self.probe(port, running.pid()) {
                Probe::Ready => return Ok(()),
                Probe::Foreign(what) => last_foreign = Some(what),
                Probe::NotReady => {}
            }
            if Instant::now() >= deadline {
                let mut message =
                    format!("redis-server did not answer PING within {READY_TIMEOUT:?}");
                if let Some(what) = last_foreign {
                    message.push_str(&format!("; another process answers on the port: {what}"));
                }
                return Err(LaunchError::Failed(message));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// One readiness probe: `PING`, then `INFO server` to check that the answering process is
    /// ours (another test process may have grabbed the port in the meantime).
    fn probe(&self, port: u16, pid: u32) -> Probe {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        let Ok(mut conn) = RespConnection::connect(addr, PROBE_TIMEOUT) else {
            return Probe::NotReady;
        };
        match conn.call(&[b"PING"]) {
            Ok(Reply::Simple(pong)) if pong == "PONG" => {}
            Ok(Reply::Error(error)) if error.starts_with("NOAUTH") => match &self.password {
                Some(password) => match conn.call(&[b"AUTH", password.as_bytes()]) {
                    Ok(Reply::Simple(_)) => {}
                    Ok(Reply::Error(error)) => {
                        return Probe::Foreign(format!(
                            "AUTH with our requirepass failed: {error}"
                        ));
                    }
                    _ => return Probe::NotReady,
                },
                // ACL setups we cannot authenticate against: the identity cannot be checked.
                None if self.auth_unknown => return Probe::Ready,
                None => return Probe::Foreign(format!("PING answered -{error}")),
            },
            _ => return Probe::NotReady,
        }
        match conn.call(&[b"INFO", b"server"]) {
            Ok(Reply::Bulk(Some(info))) => {
                let info = String::from_utf8_lossy(&info);
                match info_field(&info, "process_id") {
                    Some(found) if found == pid.to_string() => Probe::Ready,
                    Some(found) => Probe::Foreign(format!("redis-server with pid {found}")),
                    None => Probe::Ready,
                }
            }
            // INFO renamed away or forbidden by ACLs: the identity cannot be checked.
            Ok(_) => Probe::Ready,
            Err(_) => Probe::NotReady,
        }
    }

    /// Log tail plus captured stdout/stderr, for panic messages.
    fn diagnostics(&self) -> String {
        let log = last_lines(&read_from(&self.log_path, 0), DIAGNOSTIC_LINES);
        let output = last_lines(&read_from(&self.output_path, 0), DIAGNOSTIC_LINES);
        format!(
            "\n--- {} (last {DIAGNOSTIC_LINES} lines) ---\n{}\n--- stdout/stderr ---\n{}\n---",
            self.log_path.display(),
            if log.is_empty() { "<empty>" } else { &log },
            if output.is_empty() {
                "<empty>"
            } else {
                &output
            },
        )
    }
}

// ---------------------------------------------------------------------------------------------
// RedisServer
// ---------------------------------------------------------------------------------------------

/// Builder for a [`RedisServer`]; see [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    binary: Option<PathBuf>,
    bind_ipv6: bool,
    config: Vec<(String, String)>,
    raw_args: Vec<OsString>,
}

impl RedisServerBuilder {
    /// Adds a configuration directive, passed as the two arguments `--name value`.
    ///
    /// Directives are applied after the built-in ones (`--save "" --appendonly no
    /// --protected-mode no`), so they may override those. The value is one argument; Redis
    /// parses multi-token values such as `.config("save", "900 1")` from it.
    ///
    /// # Panics
    ///
    /// For the directives the server manages itself: `port`, `bind`, `dir`, `logfile`,
    /// `daemonize`, `cluster-port` (use [`RedisServerBuilder::bind_ipv6`] for `bind`).
    #[must_use]
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        let name = name.trim_start_matches("--").to_owned();
        if MANAGED_DIRECTIVES.contains(&name.to_ascii_lowercase().as_str()) {
            panic!(
                "RedisServerBuilder::config({name:?}, ..): `{name}` is managed by RedisServer and \
                 cannot be set"
            );
        }
        self.config.push((name, value.into()));
        self
    }

    /// Appends a raw command-line argument after all directives, unchecked (e.g. a directive
    /// with several separate arguments). Prefer [`RedisServerBuilder::config`].
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.raw_args.push(arg.into());
        self
    }

    /// Also listen on the IPv6 loopback `::1` (same port). Default: IPv4 only.
    #[must_use]
    pub fn bind_ipv6(mut self, bind_ipv6: bool) -> Self {
        self.bind_ipv6 = bind_ipv6;
        self
    }

    /// Uses this `redis-server` binary instead of looking it up (see [`redis_server_binary`]).
    #[must_use]
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Starts the server on a free port and waits until it answers `PING`.
    ///
    /// If the port turns out to be taken by another process between choosing and binding it,
    /// the start is retried with a new port (up to 5 attempts).
    ///
    /// # Panics
    ///
    /// When `redis-server` cannot be found (see [`redis_server_binary`]), when it exits during
    /// startup (bad directive, ...) or does not answer `PING` within 10 s. The message carries
    /// the tail of its log.
    pub fn start(self) -> RedisServer {
        // Built before the process so that `Drop` removes the directory if starting panics.
        let mut server = RedisServer {
            spec: self.into_spec(),
            port: 0,
            cluster_port: None,
            state: Mutex::new(State::default()),
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = reserve_port(server.spec.bind_ipv6);
            server.cluster_port = server.spec.cluster.then(|| reserve_port(false));
            match server.spec.launch(server.port, server.cluster_port) {
                Ok(running) => {
                    lock(&server.state).running = Some(running);
                    return server;
                }
                Err(LaunchError::AddrInUse(message)) => last = message,
                Err(LaunchError::Failed(message)) => panic!(
                    "redis-server ({}) failed to start on port {}: {message}{}",
                    server.spec.binary.display(),
                    server.port,
                    server.spec.diagnostics()
                ),
            }
        }
        panic!(
            "redis-server could not start: the port was taken {START_ATTEMPTS} times in a row \
             (last: {last}){}",
            server.spec.diagnostics()
        );
    }

    /// Resolves the binary, flattens the directives and creates the temporary directory.
    fn into_spec(self) -> Spec {
        let binary = match self.binary {
            Some(binary) => binary,
            None => redis_server_binary().unwrap_or_else(|message| panic!("{message}")),
        };
        let lower = |name: &str| name.to_ascii_lowercase();
        let password = self
            .config
            .iter()
            .rev()
            .find(|(name, _)| lower(name) == "requirepass")
            .map(|(_, value)| value.clone())
            .filter(|value| !value.is_empty());
        let auth_unknown = !self.raw_args.is_empty()
            || self
                .config
                .iter()
                .any(|(name, _)| matches!(lower(name).as_str(), "user" | "aclfile"));
        let cluster = self
            .config
            .iter()
            .rev()
            .find(|(name, _)| lower(name) == "cluster-enabled")
            .is_some_and(|(_, value)| value.eq_ignore_ascii_case("yes"));
        let mut user_args = Vec::new();
        for (name, value) in self.config {
            user_args.push(OsString::from(format!("--{name}")));
            user_args.push(OsString::from(value));
        }
        user_args.extend(self.raw_args);
        let dir = create_temp_dir();
        Spec {
            binary,
            bind_ipv6: self.bind_ipv6,
            user_args,
            password,
            auth_unknown,
            cluster,
            log_path: dir.join("redis.log"),
            output_path: dir.join("redis.out"),
            dir,
        }
    }
}

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
    spec: Spec,
    port: u16,
    cluster_port: Option<u16>,
    state: Mutex<State>,
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
            match self.spec.launch(self.port, self.cluster_port) {
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

// ---------------------------------------------------------------------------------------------
// RedisCluster
// ---------------------------------------------------------------------------------------------

/// A Redis Cluster of master-only [`RedisServer`] nodes (no replicas), created with
/// `redis-cli --cluster create`. Requires Redis 7 or newer (nodes get their own cluster bus
/// port through `cluster-port`).
///
/// Construction returns once every node reports `cluster_state:ok`, knows all nodes and sees
/// all 16384 slots served. Dropping the cluster drops (kills) every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts a cluster of 3 masters.
    ///
    /// # Panics
    ///
    /// See [`RedisCluster::with_masters`].
    pub fn start() -> Self {
        Self::with_masters(3)
    }

    /// Starts a cluster of `masters` master nodes.
    ///
    /// # Panics
    ///
    /// If `masters < 3` (Redis Cluster needs at least 3 masters), if a node fails to start, if
    /// `redis-cli` is not found or `--cluster create` fails, or if the cluster does not reach
    /// `cluster_state:ok` within 30 s.
    pub fn with_masters(masters: usize) -> Self {
        if masters < 3 {
            panic!("RedisCluster::with_masters({masters}): Redis Cluster needs at least 3 masters");
        }
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::builder()
                    .config("cluster-enabled", "yes")
                    .config("cluster-config-file", "nodes.conf")
                    .config("cluster-node-timeout", "5000")
                    .start()
            })
            .collect();
        let cluster = Self { nodes };
        cluster.create();
        cluster.wait_ok();
        cluster
    }

    fn create(&self) {
        let cli = redis_cli_binary(&self.nodes[0].spec.binary)
            .unwrap_or_else(|message| panic!("{message}"));
        let mut command = Command::new(&cli);
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(format!("{HOST}:{}", node.port));
        }
        let output = command
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("could not run {}: {error}", cli.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() || stdout.contains("[ERR]") {
            panic!(
                "`{} --cluster create` failed ({}):\n{stdout}\n{stderr}\n{}",
                cli.display(),
                output.status,
                self.node_diagnostics()
            );
        }
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let expected_nodes = self.nodes.len().to_string();
        for node in &self.nodes {
            loop {
                let info = RespConnection::connect(node.addr(), PROBE_TIMEOUT)
                    .and_then(|mut conn| conn.call(&[b"CLUSTER", b"INFO"]));
                let last = match info {
                    Ok(Reply::Bulk(Some(info))) => {
                        let info = String::from_utf8_lossy(&info).into_owned();
                        if info_field(&info, "cluster_state") == Some("ok")
                            && info_field(&info, "cluster_slots_ok") == Some("16384")
                            && info_field(&info, "cluster_known_nodes")
                                == Some(expected_nodes.as_str())
                        {
                            break;
                        }
                        info
                    }
                    Ok(other) => format!("{other:?}"),
                    Err(error) => error.to_string(),
                };
                if Instant::now() >= deadline {
                    panic!(
                        "Redis Cluster did not reach cluster_state:ok within {CLUSTER_TIMEOUT:?}; \
                         node on port {} last reported:\n{last}\n{}",
                        node.port,
                        self.node_diagnostics()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn node_diagnostics(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("node port {}:{}", node.port, node.spec.diagnostics()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The URL of every node, `redis://127.0.0.1:PORT/`, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Node `index` (0-based).
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    pub fn node(&self, index: usize) -> &RedisServer {
        self.nodes.get(index).unwrap_or_else(|| {
            panic!(
                "RedisCluster::node({index}): the cluster has {} nodes",
                self.nodes.len()
            )
        })
    }

    /// All nodes, in order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir_with(files: &[&str]) -> PathBuf {
        let dir = create_temp_dir();
        for name in files {
            let path = dir.join(name);
            fs::File::create(&path)
                .unwrap_or_else(|error| panic!("create {}: {error}", path.display()));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .unwrap_or_else(|error| panic!("chmod {}: {error}", path.display()));
            }
        }
        dir
    }

    #[test]
    fn locate_prefers_override_then_sibling_then_path() {
        let path_dir = temp_dir_with(&["redis-server", "redis-cli"]);
        let sibling = temp_dir_with(&["redis-cli"]);
        let path_var = Some(path_dir.clone().into_os_string());

        let found = locate("redis-server", "X", None, path_var.clone(), None);
        assert_eq!(found, Some(Ok(path_dir.join("redis-server"))));

        let found = locate("redis-cli", "X", None, path_var.clone(), Some(&sibling));
        assert_eq!(found, Some(Ok(sibling.join("redis-cli"))));

        let explicit = sibling.join("redis-cli");
        let found = locate(
            "redis-server",
            "X",
            Some(explicit.clone().into()),
            path_var.clone(),
            None,
        );
        assert_eq!(found, Some(Ok(explicit)));

        // A bare name in the override is searched on PATH.
        let found = locate(
            "redis-server",
            "X",
            Some("redis-cli".into()),
            path_var.clone(),
            None,
        );
        assert_eq!(found, Some(Ok(path_dir.join("redis-cli"))));

        let _ = fs::remove_dir_all(path_dir);
        let _ = fs::remove_dir_all(sibling);
    }

    #[test]
    fn locate_reports_missing_binaries() {
        let empty = temp_dir_with(&[]);
        let path_var = Some(empty.clone().into_os_string());
        assert_eq!(
            locate("redis-server", "X", None, path_var.clone(), None),
            None
        );
        assert_eq!(locate("redis-server", "X", None, None, None), None);
        match locate(
            "redis-server",
            "MY_ENV",
            Some("/nonexistent/redis".into()),
            path_var,
            None,
        ) {
            Some(Err(message)) => assert!(message.contains("MY_ENV"), "{message}"),
            other => panic!("expected an error for a bad override, got {other:?}"),
        }
        let _ = fs::remove_dir_all(empty);
    }

    #[test]
    fn not_found_message_explains_installation() {
        assert!(NOT_FOUND.contains("redis-server was not found on PATH"));
        assert!(NOT_FOUND.contains("LAYERCACHE_REDIS_SERVER"));
        assert!(NOT_FOUND.contains("cargo xtask redis"));
        assert!(NOT_FOUND.contains("Tests never skip"));
    }

    #[test]
    fn resp_replies_parse() {
        let mut input: &[u8] = b"+PONG\r\n-NOAUTH Authentication required.\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n";
        assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Simple(s)) if s == "PONG"));
        assert!(
            matches!(read_reply(&mut input, 0), Ok(Reply::Error(s)) if s.starts_with("NOAUTH"))
        );
        assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Integer(42))));
        assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Bulk(Some(b))) if b == b"abc"));
        assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Bulk(None))));
        assert!(
            matches!(read_reply(&mut input, 0), Ok(Reply::Array(Some(items))) if items.len() == 2)
        );
        assert!(read_reply(&mut input, 0).is_err());
        let mut garbage: &[u8] = b"HTTP/1.1 400 Bad Request\r\n";
        assert!(read_reply(&mut garbage, 0).is_err());
        let mut huge: &[u8] = b"$99999999999\r\n";
        assert!(read_reply(&mut huge, 0).is_err());
    }

    #[test]
    fn info_fields_and_tails() {
        let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:1234\r\n";
        assert_eq!(info_field(info, "process_id"), Some("1234"));
        assert_eq!(info_field(info, "missing"), None);
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb", 5), "a\nb");
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn reserved_ports_are_unique() {
        let ports: BTreeSet<u16> = (0..50).map(|_| reserve_port(false)).collect();
        assert_eq!(ports.len(), 50);
        assert!(!ports.contains(&DEFAULT_REDIS_PORT));
    }

    /// Launches a process for `port` and expects the port-in-use verdict that makes `start`
    /// retry with another port.
    fn expect_addr_in_use(port: u16) {
        let spec = RedisServer::builder().into_spec();
        let result = spec.launch(port, None);
        let diagnostics = spec.diagnostics();
        let _ = fs::remove_dir_all(&spec.dir);
        match result {
            Err(LaunchError::AddrInUse(_)) => {}
            Err(LaunchError::Failed(message)) => {
                panic!("expected AddrInUse, got Failed({message}){diagnostics}")
            }
            Ok(running) => {
                running.kill();
                panic!("the launch on a taken port {port} succeeded");
            }
        }
    }

    #[test]
    fn launch_on_a_port_held_by_a_listener_reports_addr_in_use() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|error| panic!("bind: {error}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("local_addr: {error}"))
            .port();
        expect_addr_in_use(port);
    }

    #[test]
    fn launch_on_a_port_held_by_another_redis_reports_addr_in_use() {
        // The other server answers PING on the port; the identity check must not mistake it
        // for ours.
        let other = RedisServer::start();
        expect_addr_in_use(other.port());
        let other = RedisServer::builder()
            .config("requirepass", "other-secret")
            .start();
        expect_addr_in_use(other.port());
    }

    #[test]
    #[should_panic(expected = "managed by RedisServer")]
    fn managed_directives_are_rejected() {
        let _ = RedisServer::builder().config("port", "1234");
    }
}
