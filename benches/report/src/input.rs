//! What the charts read: criterion's estimates and the groups' own results in `bench-data/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

/// A file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    /// The file exists but could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not the JSON expected.
    #[error("{}: not the expected JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// One criterion id's median time and its confidence interval, in ns.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Latency {
    /// The id (criterion's directory name).
    pub(crate) id: String,
    /// The median's point estimate.
    pub(crate) median: f64,
    /// The lower bound of the median's confidence interval.
    pub(crate) low: f64,
    /// The upper bound of the median's confidence interval.
    pub(crate) high: f64,
}

/// The part of criterion's `estimates.json` the charts use.
#[derive(Debug, Deserialize)]
struct Estimates {
    median: Estimate,
}

#[derive(Debug, Deserialize)]
struct Estimate {
    point_estimate: f64,
    confidence_interval: Interval,
}

#[derive(Debug, Deserialize)]
struct Interval {
    lower_bound: f64,
    upper_bound: f64,
}

/// The median of criterion's `estimates.json`.
pub(crate) fn parse_estimates(id: &str, json: &str) -> Result<Latency, serde_json::Error> {
    let estimates: Estimates = serde_json::from_str(json)?;
    let median = estimates.median;
    Ok(Latency {
        id: id.to_owned(),
        median: median.point_estimate,
        low: median.confidence_interval.lower_bound,
        high: median.confidence_interval.upper_bound,
    })
}

/// Every id of `group` under `criterion/` (criterion's `<group>/<id>/new/estimates.json`), sorted
/// by id; with `since`, only the estimates written since then. An absent group is empty.
pub(crate) fn latencies(
    criterion: &Path,
    group: &str,
    since: Option<SystemTime>,
) -> Result<Vec<Latency>, InputError> {
    let Ok(entries) = fs::read_dir(criterion.join(group)) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(id) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path().join("new").join("estimates.json");
        let Ok(metadata) = fs::metadata(&path) else {
            // criterion's `report/` directory, or an id that never finished.
            continue;
        };
        let written = metadata.modified().ok();
        if let (Some(since), Some(written)) = (since, written)
            && written < since
        {
            continue;
        }
        let json = read(&path)?;
        let latency =
            parse_estimates(&id, &json).map_err(|source| InputError::Json { path, source })?;
        found.push(latency);
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// A median with its spread (min and max over rounds or replays). A `null` (what serde_json
/// writes for a non-finite number, e.g. the min of no rounds) reads as NaN, drawn as nothing.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub(crate) struct Spread {
    /// The median.
    #[serde(deserialize_with = "number_or_nan")]
    pub(crate) median: f64,
    /// The smallest value.
    #[serde(deserialize_with = "number_or_nan")]
    pub(crate) min: f64,
    /// The largest value.
    #[serde(deserialize_with = "number_or_nan")]
    pub(crate) max: f64,
}

fn nan() -> f64 {
    f64::NAN
}

fn number_or_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// What a `workload_zipf` id stands for.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// The raw baseline (the prototype without layercache).
    Baseline,
    /// layercache.
    Ours,
    /// Another caching library.
    Peer,
    /// A role this report does not know yet.
    #[serde(other)]
    Other,
}

/// `target/bench-data/workload_zipf.json`.
#[derive(Debug, Deserialize)]
pub(crate) struct Workload {
    /// The run's settings (keys, tasks, …), shown under the chart's title.
    #[serde(default)]
    pub(crate) config: serde_json::Map<String, serde_json::Value>,
    /// The ids measured.
    pub(crate) ids: Vec<WorkloadId>,
    /// The ratios the issue names.
    #[serde(default)]
    pub(crate) ratios: Vec<WorkloadRatio>,
}

/// One `workload_zipf` id.
#[derive(Debug, Deserialize)]
pub(crate) struct WorkloadId {
    /// The criterion id.
    pub(crate) id: String,
    /// What it stands for.
    pub(crate) role: Role,
    /// Operations per second over the rounds.
    pub(crate) ops_per_sec: Spread,
    /// The L1's hit ratio (0–1), where it has one.
    #[serde(default)]
    pub(crate) l1_hit_ratio: Option<f64>,
}

/// One ratio of `workload_zipf`'s ops/s.
#[derive(Debug, Deserialize)]
pub(crate) struct WorkloadRatio {
    /// What is divided by what.
    pub(crate) label: String,
    /// The median ratio.
    #[serde(deserialize_with = "number_or_nan")]
    pub(crate) median: f64,
    /// The smallest of the rounds' ratios (NaN when not given).
    #[serde(default = "nan", deserialize_with = "number_or_nan")]
    pub(crate) min: f64,
    /// The largest of the rounds' ratios (NaN when not given).
    #[serde(default = "nan", deserialize_with = "number_or_nan")]
    pub(crate) max: f64,
    /// The issue's goal, if any (an empty one is none).
    #[serde(default)]
    pub(crate) goal: Option<String>,
}

/// `target/bench-data/hit_ratio.json` (written by `benches/benches/hit_ratio.rs`).
#[derive(Debug, Deserialize)]
pub(crate) struct HitRatios {
    /// Replays per row and the goal.
    pub(crate) config: HitRatioConfig,
    /// One per (trace, capacity, policy).
    pub(crate) rows: Vec<HitRatioRow>,
}

/// How `hit_ratio` replayed.
#[derive(Debug, Deserialize)]
pub(crate) struct HitRatioConfig {
    /// Replays of each TinyLFU row per side.
    pub(crate) tinylfu_runs: usize,
    /// ours − raw allowed, in points.
    pub(crate) goal_points: f64,
}

/// One (trace, capacity, policy) of `hit_ratio`: hit ratios in %.
#[derive(Debug, Deserialize)]
pub(crate) struct HitRatioRow {
    /// The trace's name.
    pub(crate) trace: String,
    /// Requests replayed.
    pub(crate) requests: u64,
    /// The cache's capacity in entries.
    pub(crate) capacity: u64,
    /// `TinyLFU` or `LRU`.
    pub(crate) policy: String,
    /// `MokaBackend`'s replays.
    pub(crate) ours: Spread,
    /// Raw moka's replays.
    pub(crate) raw: Spread,
}

/// `bench-data/<group>.json` parsed as `T`, or `None` when the file is absent (or, with `since`,
/// older than that).
pub(crate) fn bench_data<T: for<'de> Deserialize<'de>>(
    data: &Path,
    group: &str,
    since: Option<SystemTime>,
) -> Result<Option<T>, InputError> {
    let path = data.join(format!("{group}.json"));
    let Ok(metadata) = fs::metadata(&path) else {
        return Ok(None);
    };
    if let (Some(since), Ok(written)) = (since, metadata.modified())
        && written < since
    {
        return Ok(None);
    }
    let json = read(&path)?;
    serde_json::from_str(&json)
        .map(Some)
        .map_err(|source| InputError::Json { path, source })
}

fn read(path: &Path) -> Result<String, InputError> {
    fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn the_median_and_its_interval_come_from_criterion_estimates() {
        let json = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":150.1,"upper_bound":160.2},"point_estimate":156.3,"standard_error":2.0},"slope":null}"#;
        let latency = parse_estimates("l1_hit", json).unwrap();
        assert_eq!(
            latency,
            Latency {
                id: String::from("l1_hit"),
                median: 156.3,
                low: 150.1,
                high: 160.2
            }
        );
        assert!(parse_estimates("x", "{}").is_err());
    }

    #[test]
    fn workload_zipf_json_is_read_with_its_roles_and_null_hit_ratios() {
        let json = r#"{"group":"workload_zipf","config":{"keys":100000,"tasks":64},
          "ids":[{"id":"raw_prototype","role":"baseline","description":"d","ops_per_sec":{"median":430000.0,"min":400000.0,"max":450000.0},"cpu_us_per_request":3.3,"l1_hit_ratio":0.78},
                 {"id":"peer_cached_redis","role":"peer","ops_per_sec":{"median":1.0,"min":1.0,"max":2.0},"l1_hit_ratio":null},
                 {"id":"new_kind","role":"someday","ops_per_sec":{"median":1.0,"min":1.0,"max":1.0}}],
          "ratios":[{"label":"tiered / raw_prototype","median":0.86,"min":0.8,"max":0.9,"goal":"≥ 0.90"}]}"#;
        let workload: Workload = serde_json::from_str(json).unwrap();
        assert_eq!(workload.ids.len(), 3);
        assert_eq!(workload.ids[0].role, Role::Baseline);
        assert_eq!(workload.ids[0].ops_per_sec.max, 450_000.0);
        assert_eq!(workload.ids[0].l1_hit_ratio, Some(0.78));
        assert_eq!(workload.ids[1].role, Role::Peer);
        assert_eq!(workload.ids[1].l1_hit_ratio, None);
        assert_eq!(workload.ids[2].role, Role::Other);
        assert_eq!(workload.ratios[0].goal.as_deref(), Some("≥ 0.90"));
        assert_eq!((workload.ratios[0].min, workload.ratios[0].max), (0.8, 0.9));
        assert_eq!(workload.config["tasks"], 64);
        let json = r#"{"ids":[{"id":"a","role":"ours","ops_per_sec":{"median":null,"min":null,"max":1.0}}]}"#;
        let workload: Workload = serde_json::from_str(json).unwrap();
        assert!(workload.ids[0].ops_per_sec.median.is_nan());
        assert_eq!(workload.ids[0].ops_per_sec.max, 1.0);
        let json = r#"{"ids":[],"ratios":[{"label":"a / b","median":1.0}]}"#;
        let workload: Workload = serde_json::from_str(json).unwrap();
        assert!(workload.ratios[0].min.is_nan() && workload.ratios[0].goal.is_none());
    }

    #[test]
    fn hit_ratio_json_is_read() {
        let json = r#"{"group":"hit_ratio","config":{"max_requests":500000,"tinylfu_runs":5,"lru_runs":1,"goal_points":0.5},
          "rows":[{"trace":"OLTP","requests":500000,"trace_requests":914145,"capacity":250,"policy":"TinyLFU",
                   "ours":{"runs":[23.6,23.7],"median":23.65,"min":23.6,"max":23.7},
                   "raw":{"runs":[23.7],"median":23.7,"min":23.7,"max":23.7},
                   "ours_minus_raw":-0.05,"within_goal":true}]}"#;
        let ratios: HitRatios = serde_json::from_str(json).unwrap();
        assert_eq!(ratios.config.tinylfu_runs, 5);
        assert_eq!(ratios.rows[0].capacity, 250);
        assert_eq!(ratios.rows[0].ours.min, 23.6);
        assert_eq!(ratios.rows[0].policy, "TinyLFU");
    }

    #[test]
    fn absent_data_is_none_and_bad_data_an_error() {
        let dir = std::env::temp_dir().join(format!("bench-report-input-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(
            bench_data::<HitRatios>(&dir, "hit_ratio", None)
                .unwrap()
                .is_none()
        );
        fs::write(dir.join("hit_ratio.json"), "{").unwrap();
        let error = bench_data::<HitRatios>(&dir, "hit_ratio", None).unwrap_err();
        assert!(error.to_string().contains("hit_ratio.json"), "{error}");
        let later = SystemTime::now() + std::time::Duration::from_secs(3_600);
        assert!(
            bench_data::<HitRatios>(&dir, "hit_ratio", Some(later))
                .unwrap()
                .is_none()
        );
        assert!(latencies(&dir, "tiered_get", None).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
