//! Finding `initdb`, `postgres` and `createdb`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

/// Environment variable naming the directory that holds `initdb` and `postgres`, used instead
/// of `PATH` and `/usr/lib/postgresql/*/bin`.
pub const POSTGRES_BIN_ENV: &str = "LAYERCACHE_POSTGRES_BIN";

/// Where Debian and Ubuntu install the server binaries, one directory per major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// Text of the panic when no binaries are found.
const NOT_FOUND: &str = "the PostgreSQL server binaries (initdb and postgres) were not found on \
PATH or under /usr/lib/postgresql/*/bin (set LAYERCACHE_POSTGRES_BIN to their directory to \
override). Install them: `cargo xtask postgres` (runs apt-get as root), `sudo apt-get install \
postgresql` (Debian/Ubuntu) or `brew install postgresql` (macOS). Tests never skip when \
PostgreSQL is absent.";

/// The programs a [`PostgresServer`](super::PostgresServer) runs.
#[derive(Clone, Debug)]
pub(crate) struct Binaries {
    pub(crate) initdb: PathBuf,
    pub(crate) postgres: PathBuf,
    pub(crate) createdb: PathBuf,
}

impl Binaries {
    /// Finds the binaries; `Err` says how to install them.
    pub(crate) fn find() -> Result<Self, String> {
        let dir = postgres_bin_dir()?;
        let createdb = Some(dir.join("createdb"))
            .filter(|path| is_executable(path))
            .or_else(|| search_path("createdb", std::env::var_os("PATH").as_ref()))
            .ok_or_else(|| {
                format!(
                    "createdb was not found in {} or on PATH; it ships with PostgreSQL's client \
                     (`sudo apt-get install postgresql`)",
                    dir.display()
                )
            })?;
        Ok(Binaries {
            initdb: dir.join("initdb"),
            postgres: dir.join("postgres"),
            createdb,
        })
    }
}

/// Locates the directory holding `initdb` and `postgres`.
///
/// Uses the directory in the `LAYERCACHE_POSTGRES_BIN` environment variable if it is set,
/// otherwise the directory of `initdb` on `PATH` (after following symlinks, as
/// `/usr/local/bin/initdb` may point into a versioned directory), otherwise the newest
/// `/usr/lib/postgresql/VERSION/bin`, where Debian puts them off `PATH`.
///
/// # Errors
///
/// Returns a message explaining how to install PostgreSQL when nothing is found, or naming the
/// bad value when `LAYERCACHE_POSTGRES_BIN` points to a directory without the binaries.
pub fn postgres_bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(POSTGRES_BIN_ENV).filter(|value| !value.is_empty()) {
        let dir = PathBuf::from(dir);
        return if holds_server(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "{POSTGRES_BIN_ENV} is set to {}, but that directory does not hold executable \
                 initdb and postgres",
                dir.display()
            ))
        };
    }
    let on_path = search_path("initdb", std::env::var_os("PATH").as_ref())
        .and_then(|initdb| fs::canonicalize(initdb).ok())
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .filter(|dir| holds_server(dir));
    on_path
        .or_else(|| newest_versioned_dir(Path::new(DEBIAN_ROOT)))
        .ok_or_else(|| NOT_FOUND.to_owned())
}

/// The `bin` directory of the highest version under `root` (`root/VERSION/bin`) that holds the
/// server binaries.
pub(crate) fn newest_versioned_dir(root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(root)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|(_, dir)| dir)
        .find(|dir| holds_server(dir))
}

/// Whether `dir` holds executable `initdb` and `postgres`.
fn holds_server(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"))
}

/// Searches the directories of a `PATH`-style variable for an executable `name`.
fn search_path(name: &str, path_var: Option<&OsString>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file (after symlinks) with an execute bit set.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn picks_the_newest_version_that_holds_the_server() {
        let root = super::super::files::create_temp_dir();
        for (version, complete) in [("9.6", true), ("15", true), ("16", false), ("notes", true)] {
            let bin = root.join(version).join("bin");
            fs::create_dir_all(&bin).unwrap();
            let names: &[&str] = if complete {
                &["initdb", "postgres"]
            } else {
                &["initdb"]
            };
            for name in names {
                fs::write(bin.join(name), "#!/bin/sh\n").unwrap();
                fs::set_permissions(bin.join(name), fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        assert_eq!(
            newest_versioned_dir(&root),
            Some(root.join("15").join("bin"))
        );
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(newest_versioned_dir(&root), None);
    }
}
