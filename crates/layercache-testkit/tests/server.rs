//! Integration tests for `layercache_testkit::server`: real `redis-server` processes.
//!
//! These tests need `redis-server` (and `redis-cli` for the cluster test); they never skip.
//! Synchronisation is by polling a condition with a deadline, never by sleeping.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use layercache_testkit::server::{RedisCluster, RedisServer, redis_server_binary};

/// Connect/write timeout, and read timeout where a reply is expected.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Read timeout that proves a paused server does not answer.
const PAUSED_READ_TIMEOUT: Duration = Duration::from_millis(200);
/// Deadline for conditions polled with [`eventually`].
const DEADLINE: Duration = Duration::from_secs(10);

/// A raw RESP connection, independent of the module under test.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr, read_timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends a command and returns the first line of the reply, without CRLF.
    fn line(&mut self, args: &[&str]) -> io::Result<String> {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim_end().to_owned())
    }

    /// Sends a command whose reply is a bulk string and returns the string.
    fn bulk(&mut self, args: &[&str]) -> io::Result<String> {
        let header = self.line(args)?;
        let len: usize = header
            .strip_prefix('$')
            .and_then(|len| len.parse().ok())
            .ok_or_else(|| io::Error::other(format!("expected a bulk string, got {header:?}")))?;
        let mut data = vec![0; len + 2];
        self.reader.read_exact(&mut data)?;
        data.truncate(len);
        Ok(String::from_utf8_lossy(&data).into_owned())
    }
}

/// `PING` on a fresh connection; the first reply line.
fn ping(addr: SocketAddr, read_timeout: Duration) -> io::Result<String> {
    Conn::open(addr, read_timeout)?.line(&["PING"])
}

fn assert_pong(server: &RedisServer) {
    match ping(server.addr(), TIMEOUT) {
        Ok(reply) => assert_eq!(reply, "+PONG", "server on port {}", server.port()),
        Err(error) => panic!(
            "PING to port {} failed: {error}\n{}",
            server.port(),
            server.log_tail(20)
        ),
    }
}

fn assert_refused(port: u16) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
        Err(error) => panic!("connecting to port {port}: expected refusal, got {error}"),
        Ok(_) => panic!("port {port} still accepts connections"),
    }
}

/// Polls `condition` until it holds, panicking with `what` after [`DEADLINE`].
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        thread::yield_now();
    }
}

/// Runs `f` on its own thread and returns its panic message (panicking if it did not panic).
fn panic_message_of(f: impl FnOnce() + Send + 'static) -> String {
    match thread::spawn(f).join() {
        Ok(()) => panic!("expected a panic"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "<non-string panic payload>".to_owned()),
    }
}

#[test]
fn binary_is_found() {
    let binary = redis_server_binary().unwrap_or_else(|message| panic!("{message}"));
    assert!(binary.is_file(), "{}", binary.display());
}

#[test]
fn start_answers_ping() {
    let server = RedisServer::start();
    assert_pong(&server);
    assert_eq!(server.host(), "127.0.0.1");
    assert_ne!(server.port(), 6379);
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_eq!(
        server.addr(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()))
    );
    assert!(server.pid().is_some());
    assert!(server.is_running());
    assert!(!server.is_paused());
    assert!(server.dir().is_dir());
    assert!(
        server.log_tail(50).contains("Ready to accept connections"),
        "log: {}",
        server.log_tail(50)
    );
    assert!(server.log_tail(1).lines().count() <= 1);
}

#[test]
fn persistence_is_off() {
    let server = RedisServer::start();
    let mut conn = Conn::open(server.addr(), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}"));
    let save = conn
        .line(&["CONFIG", "GET", "save"])
        .unwrap_or_else(|e| panic!("CONFIG GET: {e}"));
    assert_eq!(save, "*2");
}

#[test]
fn two_servers_get_different_ports() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    assert_ne!(first.port(), second.port());
    assert_ne!(first.dir(), second.dir());
    assert_pong(&first);
    assert_pong(&second);
}

#[test]
fn parallel_starts_get_distinct_ports() {
    let servers: Vec<RedisServer> = (0..8)
        .map(|_| thread::spawn(RedisServer::start))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().unwrap_or_else(|_| panic!("a start panicked")))
        .collect();
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for server in &servers {
        assert_pong(server);
    }
}

#[test]
fn stop_then_connecting_fails() {
    let server = RedisServer::start();
    let port = server.port();
    server.stop();
    assert_eq!(server.pid(), None);
    assert!(!server.is_running());
    assert_refused(port);
    server.stop(); // idempotent
    assert_refused(port);
}

#[test]
fn restart_keeps_the_port_and_answers_again() {
    let server = RedisServer::start();
    let port = server.port();
    let pid = server.pid();
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    assert_pong(&server);

    server.stop();
    assert_refused(port);
    server.restart();
    assert_eq!(server.port(), port);
    assert_pong(&server);
}

#[test]
fn restart_forgets_data() {
    let server = RedisServer::start();
    let mut conn = Conn::open(server.addr(), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}"));
    assert_eq!(
        conn.line(&["SET", "k", "v"])
            .unwrap_or_else(|e| panic!("SET: {e}")),
        "+OK"
    );
    server.restart();
    let mut conn = Conn::open(server.addr(), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}"));
    assert_eq!(
        conn.line(&["GET", "k"])
            .unwrap_or_else(|e| panic!("GET: {e}")),
        "$-1"
    );
}

#[test]
fn shutdown_is_graceful_and_restartable() {
    let server = RedisServer::start();
    let port = server.port();
    server.shutdown();
    assert_eq!(server.pid(), None);
    assert_refused(port);
    assert!(
        server.log_tail(20).contains("ready to exit, bye bye"),
        "log: {}",
        server.log_tail(20)
    );
    server.shutdown(); // no-op while stopped
    server.restart();
    assert_pong(&server);
}

#[test]
fn pause_blocks_replies_and_resume_restores_them() {
    let server = RedisServer::start();
    server.pause();
    assert!(server.is_paused());
    server.pause(); // idempotent
    match ping(server.addr(), PAUSED_READ_TIMEOUT) {
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => {
            panic!("a paused server must not answer within {PAUSED_READ_TIMEOUT:?}: {other:?}")
        }
    }
    server.resume();
    assert!(!server.is_paused());
    assert_pong(&server);
    server.resume(); // no-op when not paused
    assert_pong(&server);
}

#[test]
fn stop_and_shutdown_work_while_paused() {
    let server = RedisServer::start();
    let port = server.port();
    server.pause();
    server.stop();
    assert!(!server.is_paused());
    assert_refused(port);

    server.restart();
    server.pause();
    server.shutdown();
    assert!(!server.is_paused());
    assert_refused(port);

    server.restart();
    server.pause();
    server.restart();
    assert!(!server.is_paused());
    assert_pong(&server);
}

#[test]
fn server_started_in_a_panicking_thread_is_killed() {
    let (sender, receiver) = mpsc::channel();
    let handle = thread::spawn(move || {
        let server = RedisServer::start();
        sender
            .send((server.port(), server.dir().to_path_buf()))
            .unwrap_or_else(|e| panic!("send: {e}"));
        panic!("deliberate panic (expected by this test) while a redis-server runs");
    });
    assert!(handle.join().is_err(), "the thread was supposed to panic");
    let (port, dir): (u16, PathBuf) = receiver.recv().unwrap_or_else(|e| panic!("recv: {e}"));
    assert_refused(port);
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn drop_kills_the_server_and_removes_its_directory() {
    let server = RedisServer::start();
    let port = server.port();
    let dir = server.dir().to_path_buf();
    server.pause();
    drop(server);
    assert_refused(port);
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn requirepass_yields_noauth() {
    let server = RedisServer::builder()
        .config("requirepass", "secret")
        .start();
    let mut conn = Conn::open(server.addr(), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}"));
    let reply = conn.line(&["PING"]).unwrap_or_else(|e| panic!("PING: {e}"));
    assert!(reply.starts_with("-NOAUTH"), "{reply}");
    assert_eq!(
        conn.line(&["AUTH", "secret"])
            .unwrap_or_else(|e| panic!("AUTH: {e}")),
        "+OK"
    );
    assert_eq!(
        conn.line(&["PING"]).unwrap_or_else(|e| panic!("PING: {e}")),
        "+PONG"
    );
    server.restart();
    let reply = ping(server.addr(), TIMEOUT).unwrap_or_else(|e| panic!("PING: {e}"));
    assert!(reply.starts_with("-NOAUTH"), "{reply}");
}

#[test]
fn config_directives_are_applied() {
    let server = RedisServer::builder()
        .config("maxmemory", "12345678")
        .start();
    let mut conn = Conn::open(server.addr(), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}"));
    assert_eq!(
        conn.line(&["CONFIG", "GET", "maxmemory"])
            .unwrap_or_else(|e| panic!("{e}")),
        "*2"
    );
    let mut rest = String::new();
    for _ in 0..4 {
        conn.reader
            .read_line(&mut rest)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(rest.contains("12345678"), "{rest:?}");
}

#[test]
fn ipv6_loopback_can_be_bound() {
    let server = RedisServer::builder().bind_ipv6(true).start();
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, server.port()));
    assert_eq!(
        ping(v6, TIMEOUT).unwrap_or_else(|e| panic!("PING over ::1: {e}")),
        "+PONG"
    );
    assert_pong(&server);
}

#[test]
fn a_server_that_exits_by_itself_reports_no_pid() {
    let server = RedisServer::start();
    let mut conn = Conn::open(server.addr(), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}"));
    // SHUTDOWN closes the connection without a reply.
    let _ = conn.line(&["SHUTDOWN", "NOSAVE"]);
    eventually("the server has exited", || server.pid().is_none());
    assert_refused(server.port());
    server.restart();
    assert_pong(&server);
}

#[test]
fn bad_directive_panics_with_the_servers_output() {
    let message = panic_message_of(|| {
        let _server = RedisServer::builder()
            .config("no-such-directive", "1")
            .start();
    });
    assert!(message.contains("failed to start"), "{message}");
    assert!(message.contains("no-such-directive"), "{message}");
}

#[test]
fn missing_binary_panics_clearly() {
    let message = panic_message_of(|| {
        let _server = RedisServer::builder()
            .binary("/nonexistent/redis-server")
            .start();
    });
    assert!(
        message.contains("could not spawn /nonexistent/redis-server"),
        "{message}"
    );
}

#[test]
fn managed_directives_are_rejected() {
    let message = panic_message_of(|| {
        let _builder = RedisServer::builder().config("port", "7000");
    });
    assert!(message.contains("managed by RedisServer"), "{message}");
}

#[test]
fn a_server_can_live_in_a_static_and_be_shared() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RedisServer>();
    assert_send_sync::<RedisCluster>();

    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(|| {
                let server = SHARED.get_or_init(RedisServer::start);
                assert_pong(server);
                server.port()
            })
        })
        .collect();
    let ports: Vec<u16> = threads
        .into_iter()
        .map(|handle| {
            handle
                .join()
                .unwrap_or_else(|_| panic!("a thread panicked"))
        })
        .collect();
    assert!(ports.windows(2).all(|pair| pair[0] == pair[1]), "{ports:?}");
}

/// Environment variable that turns [`helper_exit_without_drop`] on.
const HELPER_ENV: &str = "LAYERCACHE_TESTKIT_EXIT_HELPER";

#[test]
fn watchdog_cleans_up_when_the_test_process_exits_without_drop() {
    // The test runs itself again as a child process (marked by HELPER_ENV) that starts a server
    // and exits without running any destructor, as a process holding a server in a `static` does.
    if std::env::var_os(HELPER_ENV).is_some() {
        let server = RedisServer::start();
        println!(
            "HELPER port={} dir={}",
            server.port(),
            server.dir().display()
        );
        let _ = io::stdout().flush();
        std::process::exit(0);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let output = Command::new(exe)
        .args([
            "--exact",
            "watchdog_cleans_up_when_the_test_process_exits_without_drop",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .output()
        .unwrap_or_else(|e| panic!("running the helper process: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.split_once("HELPER ").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "helper printed no server line:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let (port, dir) = line
        .strip_prefix("port=")
        .and_then(|rest| rest.split_once(" dir="))
        .unwrap_or_else(|| panic!("unexpected helper line {line:?}"));
    let port: u16 = port
        .parse()
        .unwrap_or_else(|e| panic!("port {port:?}: {e}"));
    let dir = PathBuf::from(dir);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    eventually("the orphaned server is killed", || {
        TcpStream::connect_timeout(&addr, TIMEOUT).is_err()
    });
    eventually("the orphaned server's directory is removed", || {
        !dir.exists()
    });
}

#[test]
fn cluster_of_three_masters_reaches_ok() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    assert_eq!(cluster.nodes().len(), 3);
    for (index, url) in urls.iter().enumerate() {
        let node = cluster.node(index);
        assert_eq!(*url, node.url());
        assert!(node.cluster_port().is_some());
        let mut conn = Conn::open(node.addr(), TIMEOUT).unwrap_or_else(|e| panic!("connect: {e}"));
        let info = conn
            .bulk(&["CLUSTER", "INFO"])
            .unwrap_or_else(|e| panic!("CLUSTER INFO: {e}"));
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
    let mut sorted = urls.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3);

    // Every key is served by exactly one node; the others redirect.
    let replies: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|node| {
            Conn::open(node.addr(), TIMEOUT)
                .and_then(|mut conn| conn.line(&["SET", "some-key", "v"]))
                .unwrap_or_else(|e| panic!("SET: {e}"))
        })
        .collect();
    assert_eq!(
        replies.iter().filter(|reply| *reply == "+OK").count(),
        1,
        "{replies:?}"
    );
    assert_eq!(
        replies
            .iter()
            .filter(|reply| reply.starts_with("-MOVED"))
            .count(),
        2,
        "{replies:?}"
    );

    // A crashed node comes back on its port with its nodes.conf and rejoins.
    let node = cluster.node(1);
    node.restart();
    eventually("the restarted node reports cluster_state:ok", || {
        Conn::open(node.addr(), TIMEOUT)
            .and_then(|mut conn| conn.bulk(&["CLUSTER", "INFO"]))
            .is_ok_and(|info| info.contains("cluster_state:ok"))
    });
}
