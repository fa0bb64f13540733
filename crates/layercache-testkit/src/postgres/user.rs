//! Running the server as a non-root user when the test process is root.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The system user the server runs as when the test process is root.
const SERVER_USER: &str = "postgres";

/// The user and group a server process runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// Who runs the server whose fresh directory is `dir`: nobody else (`None`) unless `dir` was
    /// created by root, in which case the `postgres` user (created when missing), which is then
    /// given `dir`.
    pub(crate) fn for_dir(dir: &Path) -> Result<Option<Self>, String> {
        let owner = fs::metadata(dir)
            .map_err(|error| format!("could not read {}: {error}", dir.display()))?
            .uid();
        if owner != 0 {
            return Ok(None);
        }
        let user = ensure_user()?;
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(|error| {
            format!(
                "could not give {} to the user {SERVER_USER}: {error}",
                dir.display()
            )
        })?;
        Ok(Some(user))
    }

    /// Makes `command` run as this user (and group, without supplementary groups).
    pub(crate) fn apply(self, command: &mut Command) {
        command.uid(self.uid).gid(self.gid);
    }
}

/// The `postgres` user, created as a system user (with its own group) when missing.
fn ensure_user() -> Result<RunAs, String> {
    if let Some(user) = lookup() {
        return Ok(user);
    }
    let created = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_USER,
        ])
        .stdin(Stdio::null())
        .output();
    // Another test process may have created it meanwhile: look again either way.
    lookup().ok_or_else(|| {
        let outcome = match created {
            Ok(output) => format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => error.to_string(),
        };
        format!(
            "PostgreSQL refuses to run as root and the user {SERVER_USER} does not exist; \
             `useradd --system {SERVER_USER}` failed ({outcome}). Create it, or run the tests \
             as a non-root user."
        )
    })
}

/// The uid and gid of the `postgres` user, through `id` (so NSS sources count).
fn lookup() -> Option<RunAs> {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id")
            .args([flag, SERVER_USER])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    Some(RunAs {
        uid: id("-u")?,
        gid: id("-g")?,
    })
}
