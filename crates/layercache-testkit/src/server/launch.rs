//! Launching one server process and waiting until it is ready.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::files::{file_len, last_lines, read_from};
use super::resp::{Reply, RespConnection, info_field};
use super::tls::{TlsFiles, no_tls_hint};
use super::watchdog::spawn_watchdog;
use super::{HOST, POLL_INTERVAL, PROBE_TIMEOUT};

/// How long `start`/`restart` wait for a server to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of log shown in panic messages.
const DIAGNOSTIC_LINES: usize = 40;

/// Outcome of one readiness probe.
enum Probe {
    /// Nothing (usable) answers on the port yet.
    NotReady,
    /// Our process answers.
    Ready,
    /// Some other process answers on the port; ours will fail to bind it.
    Foreign(String),
}

/// Everything needed to (re)launch the process.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) binary: PathBuf,
    pub(crate) bind_ipv6: bool,
    /// User directives, already flattened to `--name value` arguments, then raw arguments.
    pub(crate) user_args: Vec<OsString>,
    /// The `requirepass` value, used to verify the process identity during readiness checks.
    pub(crate) password: Option<String>,
    /// Whether `PING` answering `NOAUTH` is expected without a known password (ACL directives,
    /// raw arguments).
    pub(crate) auth_unknown: bool,
    pub(crate) cluster: bool,
    /// The certificates of a TLS server; its `tls-port` is chosen at start like the port.
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) dir: PathBuf,
    pub(crate) log_path: PathBuf,
    pub(crate) output_path: PathBuf,
}

/// A running process plus its watchdog.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) watchdog: Option<Child>,
}

impl Running {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills and reaps the watchdog. Must happen before the server process is reaped.
    pub(crate) fn disarm_watchdog(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// SIGKILL and reap. Never panics.
    pub(crate) fn kill(mut self) {
        self.disarm_watchdog();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has exited on its own; reaps it (after the watchdog) if so.
    pub(crate) fn has_exited(&mut self) -> Option<String> {
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
pub(crate) enum LaunchError {
    /// The port (or cluster bus port) was taken by someone else: retry with another port.
    AddrInUse(String),
    /// Anything else: give up.
    Failed(String),
}

/// Mutable process state.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) running: Option<Running>,
    pub(crate) paused: bool,
}

impl Spec {
    fn args(&self, port: u16, cluster_port: Option<u16>, tls_port: Option<u16>) -> Vec<OsString> {
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
        if let (Some(tls), Some(tls_port)) = (&self.tls, tls_port) {
            args.extend(tls.args(tls_port));
        }
        args.extend(self.user_args.iter().cloned());
        args
    }

    /// Spawns the process and waits until it answers `PING` on `port` (a TLS server listens on
    /// `tls_port` by then too: Redis opens every listener before it serves any).
    pub(crate) fn launch(
        &self,
        port: u16,
        cluster_port: Option<u16>,
        tls_port: Option<u16>,
    ) -> Result<Running, LaunchError> {
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
            .args(self.args(port, cluster_port, tls_port))
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
                let hint = if self.tls.is_some() {
                    no_tls_hint(&new_output)
                } else {
                    ""
                };
                let message = format!("redis-server exited during startup ({status}){hint}");
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
    pub(crate) fn diagnostics(&self) -> String {
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
