//! Finding the `redis-server` and `redis-cli` binaries.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

#[cfg(doc)]
use super::RedisCluster;

/// Environment variable naming the `redis-server` binary to use instead of the one on `PATH`.
pub const REDIS_SERVER_ENV: &str = "LAYERCACHE_REDIS_SERVER";

/// Environment variable naming the `redis-cli` binary [`RedisCluster`] uses. Without it,
/// `redis-cli` is looked up next to `redis-server`, then on `PATH`.
pub const REDIS_CLI_ENV: &str = "LAYERCACHE_REDIS_CLI";

/// Text of the panic (and of the [`redis_server_binary`] error) when no binary is found.
pub(crate) const NOT_FOUND: &str = "redis-server was not found on PATH (set \
LAYERCACHE_REDIS_SERVER to override). Install it: `cargo xtask redis` (runs apt-get as root), \
`sudo apt-get install redis-server` (Debian/Ubuntu) or `brew install redis` (macOS). Tests never \
skip when Redis is absent.";

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
pub(crate) fn redis_cli_binary(server_binary: &Path) -> Result<PathBuf, String> {
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
pub(crate) fn locate(
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
