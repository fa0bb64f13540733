//! Signals to a server process, and its state as the kernel reports it.

use std::fs;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::SIGNAL_TIMEOUT;

/// Sends `signal` (a name such as `STOP`) to `pid` with the shell's `kill`.
pub(crate) fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
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
pub(crate) fn wait_proc_state(pid: u32, want_stopped: bool) -> bool {
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
