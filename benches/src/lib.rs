//! Shared fixtures for the layercache benchmarks (`benches/benches/*.rs`).
//!
//! Every group measures layercache against its raw baseline (moka, redis-rs) in the same run, on
//! the same value: a [`Payload`] whose JSON is exactly [`PAYLOAD_JSON_LEN`] bytes (1 KiB).
//!
//! Timing: each group sets its own warm-up and measurement times (which criterion's
//! `--measurement-time` does not override); with [`QUICK_ENV`] set (what `cargo xtask bench` does)
//! they shrink to [`QUICK_WARM_UP`] and [`QUICK_MEASUREMENT`] through [`warm_up_time`] and
//! [`measurement_time`], so the whole suite runs in a few minutes.

use std::time::Duration;

pub mod data;

use serde::{Deserialize, Serialize};

/// The environment variable that shortens every group's timing (any value but `0` or empty).
pub const QUICK_ENV: &str = "LAYERCACHE_BENCH_QUICK";
/// A group's warm-up time in quick mode: 1 s.
pub const QUICK_WARM_UP: Duration = Duration::from_secs(1);
/// A group's measurement time in quick mode: 2 s.
pub const QUICK_MEASUREMENT: Duration = Duration::from_secs(2);

/// Whether [`QUICK_ENV`] asks for short timings.
pub fn quick() -> bool {
    std::env::var(QUICK_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `default`, or at most [`QUICK_MEASUREMENT`] in quick mode.
pub fn measurement_time(default: Duration) -> Duration {
    if quick() {
        default.min(QUICK_MEASUREMENT)
    } else {
        default
    }
}

/// `default`, or at most [`QUICK_WARM_UP`] in quick mode.
pub fn warm_up_time(default: Duration) -> Duration {
    if quick() {
        default.min(QUICK_WARM_UP)
    } else {
        default
    }
}

/// Whether a group runs its interleaved check after criterion's pass: under `cargo bench` (which
/// passes `--bench`), not under `cargo test --benches`, nor under `--profile-time` (a profiler
/// looks at one id at a time).
pub fn interleaved_wanted() -> bool {
    let bench = std::env::args().any(|a| a == "--bench");
    bench && !std::env::args().any(|a| a.starts_with("--profile-time"))
}

/// The median of `values` (the upper one of an even count; 0 when empty).
///
/// ```
/// assert_eq!(benches::median(vec![3.0, 1.0, 2.0]), 2.0);
/// assert_eq!(benches::median(Vec::new()), 0.0);
/// ```
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The runtime every async group uses: tokio multi-thread with 2 workers, as on the 2-core CI
/// machine.
#[allow(
    clippy::expect_used,
    reason = "a benchmark cannot run without its runtime; failing to build one is fatal"
)]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Writes the plain JSON of `Payload::new(i)` under `keys[i]` with raw `SET`s (with `EX ttl` when
/// `ttl` is given), `batch` keys (at least one) per pipeline: the values the raw redis-rs
/// baselines read.
#[allow(
    clippy::expect_used,
    reason = "a Payload is strings and integers: its JSON encoding cannot fail"
)]
pub async fn set_raw_payloads(
    connection: &mut impl redis::aio::ConnectionLike,
    keys: &[String],
    ttl: Option<Duration>,
    batch: usize,
) -> redis::RedisResult<()> {
    let batch = batch.max(1);
    for (start, chunk) in keys.chunks(batch).enumerate() {
        let mut pipe = redis::pipe();
        for (j, key) in chunk.iter().enumerate() {
            let id = (start * batch + j) as u64;
            let json = serde_json::to_vec(&Payload::new(id)).expect("payload encodes");
            let set = pipe.cmd("SET").arg(key).arg(json);
            if let Some(ttl) = ttl {
                set.arg("EX").arg(ttl.as_secs());
            }
            set.ignore();
        }
        pipe.query_async::<()>(connection).await?;
    }
    Ok(())
}

/// The length, in bytes, of the JSON of every [`Payload::new`].
pub const PAYLOAD_JSON_LEN: usize = 1024;

/// A typical cached record: a few fields and a body, about 1 KiB as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// An identifier.
    pub id: u64,
    /// A short name.
    pub name: String,
    /// A handful of tags.
    pub tags: Vec<String>,
    /// The bulk of the record, padded so the JSON is exactly [`PAYLOAD_JSON_LEN`] bytes.
    pub body: String,
}

impl Payload {
    /// A payload for `id` whose JSON (`serde_json::to_vec`) is exactly [`PAYLOAD_JSON_LEN`] bytes
    /// for any `id` up to `10^12` (the body absorbs the length of the other fields).
    pub fn new(id: u64) -> Self {
        let mut payload = Payload {
            id,
            name: format!("user-{id}"),
            tags: ["alpha", "beta", "gamma", "delta"]
                .iter()
                .map(|t| format!("{t}-{id}"))
                .collect(),
            body: String::new(),
        };
        // Plain ASCII without quotes or backslashes: one JSON byte per character.
        let overhead = serde_json::to_vec(&payload).map_or(0, |json| json.len());
        let pad = PAYLOAD_JSON_LEN.saturating_sub(overhead);
        payload.body = "lorem ipsum dolor sit amet "
            .chars()
            .cycle()
            .take(pad)
            .collect();
        payload
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn payload_json_is_one_kib_and_round_trips() {
        for id in [0, 7, 42_000, 999_999_999_999] {
            let payload = Payload::new(id);
            let json = serde_json::to_vec(&payload).unwrap();
            assert_eq!(json.len(), PAYLOAD_JSON_LEN, "id {id}");
            let back: Payload = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, payload);
        }
    }
}
