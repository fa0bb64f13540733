//! `layercache-bench-report`: the charts of `cargo xtask bench`, as PNGs.
//!
//! ```text
//! layercache-bench-report [--since UNIX_SECONDS] TARGET_DIR OUT_DIR
//! ```
//!
//! Reads criterion's `TARGET_DIR/criterion/<group>/<id>/new/estimates.json` and the groups' own
//! results in `TARGET_DIR/bench-data/<group>.json` (`benches::data`) — with `--since`, only the
//! files written since then (what one run of the benches wrote) — and draws into `OUT_DIR`:
//!
//! - `latency_by_tier.png`: `tiered_get` and `backend_get`, each id's median with its confidence
//!   interval, ours beside the raw baseline, log scale;
//! - `workload_zipf_ops.png`: ops/s of each `workload_zipf` id (min–max of the rounds), coloured
//!   by role (baseline, ours, peer), and the ratios below;
//! - `hit_ratio.png`: hit ratio by capacity and policy, a panel per trace, ours and raw moka.
//!
//! A chart whose data is absent is skipped with a line saying so (and an older PNG of it removed,
//! so the directory holds only charts of the data found). Text is drawn with a TrueType font read
//! at run time: `LAYERCACHE_CHART_FONT`, else DejaVu Sans (Debian package `fonts-dejavu-core`).

#![forbid(unsafe_code)]

mod charts;
mod input;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use plotters::style::FontStyle;

use crate::input::{HitRatios, Workload};

/// The environment variable naming the TTF file to draw text with.
const FONT_ENV: &str = "LAYERCACHE_CHART_FONT";
/// The font used without [`FONT_ENV`].
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The Debian package that holds [`DEFAULT_FONT`].
const FONT_PACKAGE: &str = "fonts-dejavu-core";

const USAGE: &str = "usage: layercache-bench-report [--since UNIX_SECONDS] TARGET_DIR OUT_DIR";

/// The groups of `latency_by_tier.png`, in panel order.
const LATENCY_GROUPS: &[&str] = &["tiered_get", "backend_get"];

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    target: PathBuf,
    out: PathBuf,
    since: Option<SystemTime>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut since = None;
    let mut paths = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--since" {
            let seconds = args
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| format!("--since takes a number of seconds; {USAGE}"))?;
            since = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
        } else if arg.starts_with("--") {
            return Err(format!("unknown option {arg}; {USAGE}"));
        } else {
            paths.push(PathBuf::from(arg));
        }
    }
    let [target, out]: [PathBuf; 2] = paths
        .try_into()
        .map_err(|_| format!("two directories expected; {USAGE}"))?;
    Ok(Args { target, out, since })
}

/// Reads the TTF of [`FONT_ENV`] (else [`DEFAULT_FONT`]) and registers it as plotters' sans-serif.
fn register_font() -> Result<(), String> {
    let path = std::env::var_os(FONT_ENV)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_FONT), PathBuf::from);
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "the charts need a TrueType font and {} could not be read ({e}): install the Debian \
             package {FONT_PACKAGE} (`apt-get install {FONT_PACKAGE}`; `cargo xtask bench` does \
             it when root) or set {FONT_ENV} to a .ttf file",
            path.display()
        )
    })?;
    // plotters keeps fonts for the life of the process; one font, read once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(charts::FONT, FontStyle::Normal, bytes)
        .map_err(|_| format!("{} is not a TrueType font plotters can use", path.display()))
}

/// A chart drawn or skipped.
enum Outcome {
    Drawn,
    Skipped(String),
}

/// What a skip line adds with `--since`.
fn this_run(args: &Args) -> &'static str {
    if args.since.is_some() {
        " written by this run"
    } else {
        ""
    }
}

fn latency_chart(args: &Args, path: &Path) -> Result<Outcome, Box<dyn Error>> {
    let criterion = args.target.join("criterion");
    let mut groups = Vec::new();
    for group in LATENCY_GROUPS {
        let mut ids = input::latencies(&criterion, group, args.since)?;
        if !ids.is_empty() {
            charts::latency_order(group, &mut ids);
            groups.push((*group, ids));
        }
    }
    if groups.is_empty() {
        return Ok(Outcome::Skipped(format!(
            "no estimates of {} under {}{}",
            LATENCY_GROUPS.join(" or "),
            criterion.display(),
            this_run(args)
        )));
    }
    charts::latency_by_tier(path, &groups)?;
    Ok(Outcome::Drawn)
}

fn workload_chart(args: &Args, path: &Path) -> Result<Outcome, Box<dyn Error>> {
    let data = args.target.join("bench-data");
    match input::bench_data::<Workload>(&data, "workload_zipf", args.since)? {
        Some(workload) if !workload.ids.is_empty() => {
            charts::workload_zipf_ops(path, &workload)?;
            Ok(Outcome::Drawn)
        }
        Some(_) => Ok(Outcome::Skipped(String::from(
            "workload_zipf.json lists no ids",
        ))),
        None => Ok(Outcome::Skipped(format!(
            "no {}{}",
            data.join("workload_zipf.json").display(),
            this_run(args)
        ))),
    }
}

fn hit_ratio_chart(args: &Args, path: &Path) -> Result<Outcome, Box<dyn Error>> {
    let data = args.target.join("bench-data");
    match input::bench_data::<HitRatios>(&data, "hit_ratio", args.since)? {
        Some(ratios) if !ratios.rows.is_empty() => {
            charts::hit_ratio(path, &ratios)?;
            Ok(Outcome::Drawn)
        }
        Some(_) => Ok(Outcome::Skipped(String::from("hit_ratio.json has no rows"))),
        None => Ok(Outcome::Skipped(format!(
            "no {}{}",
            data.join("hit_ratio.json").display(),
            this_run(args)
        ))),
    }
}

type Chart = fn(&Args, &Path) -> Result<Outcome, Box<dyn Error>>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let args = parse_args(&raw)?;
    register_font()?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let all: [(&str, Chart); 3] = [
        ("latency_by_tier.png", latency_chart),
        ("workload_zipf_ops.png", workload_chart),
        ("hit_ratio.png", hit_ratio_chart),
    ];
    for (name, draw) in all {
        let path = args.out.join(name);
        match draw(&args, &path).map_err(|e| format!("{name}: {e}"))? {
            Outcome::Drawn => println!("drew {}", path.display()),
            Outcome::Skipped(why) => {
                // An older chart of data this run did not produce would be read as this run's.
                let stale = std::fs::remove_file(&path).is_ok();
                println!(
                    "skipped {name}: {why}{}",
                    if stale {
                        " (removed the older chart)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn the_command_line_is_two_directories_and_an_optional_since() {
        let args = parse_args(&strings(&["target", "target/bench-charts"])).unwrap();
        assert_eq!(args.target, PathBuf::from("target"));
        assert_eq!(args.out, PathBuf::from("target/bench-charts"));
        assert!(args.since.is_none());
        let args = parse_args(&strings(&["--since", "1700000000", "t", "o"])).unwrap();
        assert_eq!(
            args.since,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert!(parse_args(&strings(&["t"])).is_err());
        assert!(parse_args(&strings(&["--since", "soon", "t", "o"])).is_err());
        assert!(parse_args(&strings(&["--bogus", "t", "o"])).is_err());
    }
}
