//! [`RedisServerBuilder`]: configuring and starting a [`RedisServer`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;

use super::binary::redis_server_binary;
use super::files::create_temp_dir;
use super::launch::{LaunchError, Spec, State};
use super::ports::reserve_port;
use super::process::RedisServer;
use super::tls::{DEFAULT_TLS_NAMES, TlsFiles};
use super::{START_ATTEMPTS, lock};

/// Directives the server manages itself; setting them through [`RedisServerBuilder::config`]
/// would break port handling, readiness checks or cleanup.
const MANAGED_DIRECTIVES: &[&str] = &[
    "port",
    "bind",
    "dir",
    "logfile",
    "daemonize",
    "cluster-port",
    "tls-port",
];

/// Builder for a [`RedisServer`]; see [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    binary: Option<PathBuf>,
    bind_ipv6: bool,
    config: Vec<(String, String)>,
    raw_args: Vec<OsString>,
    /// The names of the server certificate; `Some` turns TLS on.
    tls_names: Option<Vec<String>>,
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
    /// `daemonize`, `cluster-port`, `tls-port` (use [`RedisServerBuilder::bind_ipv6`] for `bind`,
    /// [`RedisServerBuilder::tls`] for `tls-port`).
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

    /// Also listen with TLS (default: off), on a second free loopback port beside the plain one.
    ///
    /// At start, a fresh CA ([`TestCa`](super::TestCa)) issues a certificate for `localhost`,
    /// `127.0.0.1` and `::1` (see [`RedisServerBuilder::tls_names`]); the CA, the certificate and
    /// its key are written into the server's directory and passed as `tls-ca-cert-file`,
    /// `tls-cert-file` and `tls-key-file`. Clients need no certificate (`tls-auth-clients no`;
    /// `.config("tls-auth-clients", "optional")` changes that). The server then offers
    /// [`RedisServer::tls_url`], [`RedisServer::tls_ca_pem`] and [`RedisServer::tls_ca_path`].
    ///
    /// Needs a `redis-server` built with TLS (`BUILD_TLS=yes`, as Debian's); with another,
    /// [`RedisServerBuilder::start`] panics and says so.
    #[must_use]
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls_names = match (tls, self.tls_names.take()) {
            (false, _) => None,
            (true, Some(names)) => Some(names),
            (true, None) => Some(
                DEFAULT_TLS_NAMES
                    .iter()
                    .map(|&name| name.to_owned())
                    .collect(),
            ),
        };
        self
    }

    /// Turns TLS on (see [`RedisServerBuilder::tls`]) with a server certificate valid only for
    /// `names` (DNS names or IP addresses): a client connecting by any other name must refuse it.
    #[must_use]
    pub fn tls_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tls_names = Some(names.into_iter().map(Into::into).collect());
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
    /// startup (bad directive, no TLS support, ...) or does not answer `PING` within 10 s. The
    /// message carries the tail of its log.
    pub fn start(self) -> RedisServer {
        // Built before the process so that `Drop` removes the directory if starting panics.
        let mut server = RedisServer {
            spec: self.into_spec(),
            port: 0,
            cluster_port: None,
            tls_port: None,
            state: Mutex::new(State::default()),
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = reserve_port(server.spec.bind_ipv6);
            server.cluster_port = server.spec.cluster.then(|| reserve_port(false));
            server.tls_port = server.spec.tls.is_some().then(|| reserve_port(false));
            match server
                .spec
                .launch(server.port, server.cluster_port, server.tls_port)
            {
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
    pub(crate) fn into_spec(self) -> Spec {
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
        let tls = self.tls_names.map(|names| TlsFiles::create(&dir, &names));
        Spec {
            binary,
            bind_ipv6: self.bind_ipv6,
            user_args,
            password,
            auth_unknown,
            cluster,
            tls,
            log_path: dir.join("redis.log"),
            output_path: dir.join("redis.out"),
            dir,
        }
    }
}
