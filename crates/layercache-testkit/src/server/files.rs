//! Temporary directories and reading the servers' log files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Makes temporary directory names unique within this process.
static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a fresh, uniquely named directory under the system temporary directory.
pub(crate) fn create_temp_dir() -> PathBuf {
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
pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |metadata| metadata.len())
}

/// The contents of `path` from byte `offset` on, lossily decoded; empty if unreadable.
pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last `lines` lines of `text`.
pub(crate) fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
