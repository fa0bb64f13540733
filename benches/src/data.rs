//! Machine-readable results of the groups that print more than criterion keeps (the ops/s and
//! ratios of `workload_zipf`, the hit ratios of `hit_ratio`), for the charts of
//! `cargo xtask bench` (`benches/report`).
//!
//! A group calls [`write()`] with a JSON value; it lands in `$LAYERCACHE_BENCH_DATA/<group>.json`
//! when [`DATA_ENV`] names a directory (what `cargo xtask bench` sets: `target/bench-data`), and
//! nowhere otherwise, so a plain `cargo bench` leaves no files behind.

use std::path::PathBuf;

/// The environment variable naming the directory the results go to.
pub const DATA_ENV: &str = "LAYERCACHE_BENCH_DATA";

/// Where [`write()`] puts `group`'s results, if anywhere.
pub fn path(group: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(DATA_ENV).filter(|dir| !dir.is_empty())?;
    Some(PathBuf::from(dir).join(format!("{group}.json")))
}

/// Writes `value` as `group`'s results (pretty JSON), replacing an earlier file. A failure to
/// write is reported on standard error and does not fail the benchmark.
pub fn write(group: &str, value: &serde_json::Value) {
    let Some(path) = path(group) else {
        return;
    };
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
            std::fs::write(&path, json)
        });
    match written {
        Ok(()) => eprintln!("{group}: results written to {}", path.display()),
        Err(error) => eprintln!("{group}: could not write {}: {error}", path.display()),
    }
}
