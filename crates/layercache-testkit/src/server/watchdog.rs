//! The `sh` watchdog that kills a server once the test process is gone.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `sh` script of the watchdog: wait until the test process closes our stdin (by exiting in any
/// way), then kill the server (`$1`) and remove its directory (`$2`). While the test process
/// lives it kills the watchdog itself before it reaps the server, so `$1` is never a reused pid.
const WATCHDOG_SCRIPT: &str =
    r#"while read -r _; do :; done; kill -s KILL "$1" 2>/dev/null; rm -rf -- "$2""#;

/// Starts the watchdog for server process `pid` whose directory is `dir`. Best effort: without
/// `sh` there is no watchdog, and only `Drop` cleans up.
pub(crate) fn spawn_watchdog(pid: u32, dir: &Path) -> Option<Child> {
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
