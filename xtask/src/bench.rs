//! `cargo xtask bench`: the criterion suite with short timings, then `target/bench-summary.md` and
//! the charts in `target/bench-charts/`.
//!
//! The benches shorten their own warm-up and measurement times when `LAYERCACHE_BENCH_QUICK` is
//! set (criterion's `--measurement-time` does not override what a group sets; `benches/src/lib.rs`).
//! Their standard error is shown as it comes and kept in `target/bench-output.log`: the summary
//! copies the blocks the benches print there (`workload_zipf`'s ops/s and interleaved ratios,
//! `hit_ratio`'s table, `stampede`'s load counts). Medians come from criterion's
//! `target/criterion/<group>/<id>/new/estimates.json`, only those this run wrote.
//!
//! The benches run with `LAYERCACHE_BENCH_DATA=target/bench-data`, where the groups that measure
//! more than criterion keeps (`workload_zipf`, `hit_ratio`) write their results as JSON
//! (`benches::data`). After the run — also a failed one, with what ran — the report binary
//! (`benches/report`, `layercache-bench-report`) draws `latency_by_tier.png`,
//! `workload_zipf_ops.png` and `hit_ratio.png` into `target/bench-charts/` from the files this run
//! wrote, and the summary lists them. `--charts-only` redraws the charts from whatever the last
//! runs left (every group's latest files), without running the benches, and updates the summary's
//! list. The charts' text needs DejaVu Sans (`fonts-dejavu-core`), installed with apt-get when
//! missing and running as root, like redis-server.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::SystemTime;

use crate::{Error, Result, apt_get, cargo, is_root, output, show, which, workspace_root};

/// What makes the benches use short timings (read by `benches/src/lib.rs`).
const QUICK_ENV: &str = "LAYERCACHE_BENCH_QUICK";
/// Where the benches write their JSON results (read by `benches/src/data.rs`).
const DATA_ENV: &str = "LAYERCACHE_BENCH_DATA";
/// The package of the charts' binary.
const REPORT_PACKAGE: &str = "layercache-bench-report";
/// The font the charts draw text with (the report's default), its Debian package, and the variable
/// naming another.
const CHART_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const CHART_FONT_PACKAGE: &str = "fonts-dejavu-core";
const CHART_FONT_ENV: &str = "LAYERCACHE_CHART_FONT";
/// The heading of the summary's list of charts (replaced by `--charts-only`).
const CHARTS_HEADING: &str = "## Charts";

/// The groups in the order of the summary; any other group found is listed after them.
const GROUPS: &[&str] = &[
    "backend_get",
    "single_flight",
    "stampede",
    "tiered_get",
    "bulk",
    "tiered_write",
    "workload_zipf",
    "hit_ratio",
    "rate_limit",
];

/// The ratios of medians the issues name: (label, group, numerator id, denominator id, goal).
/// A ratio of times: below 1 the first is faster.
const TIME_RATIOS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "l1_hit / moka_raw",
        "tiered_get",
        "l1_hit",
        "moka_raw",
        "≤ 1.15",
    ),
    (
        "l2_hit / redis_raw",
        "tiered_get",
        "l2_hit",
        "redis_raw",
        "≤ 1.10",
    ),
    (
        "l1_hit_with_tracking / l1_hit",
        "tiered_get",
        "l1_hit_with_tracking",
        "l1_hit",
        "≤ 1.05",
    ),
    (
        "moka_backend / moka_raw",
        "backend_get",
        "moka_backend",
        "moka_raw",
        "≤ 1.2",
    ),
    (
        "redis_backend / redis_raw",
        "backend_get",
        "redis_backend",
        "redis_raw",
        "≤ 1.15",
    ),
    (
        "hit_guarded / hit_direct",
        "single_flight",
        "hit_guarded",
        "hit_direct",
        "",
    ),
    (
        "cold_1000 / cold_1000_moka_raw",
        "stampede",
        "cold_1000",
        "cold_1000_moka_raw",
        "",
    ),
    (
        "get_many_100 / get_sequential_100",
        "bulk",
        "get_many_100",
        "get_sequential_100",
        "",
    ),
    (
        "get_many_100 / mget_raw_100",
        "bulk",
        "get_many_100",
        "mget_raw_100",
        "",
    ),
    (
        "set_64_concurrent / set_64_sequential",
        "tiered_write",
        "set_64_concurrent",
        "set_64_sequential",
        "",
    ),
    (
        "layer / raw_evalsha",
        "rate_limit",
        "layer",
        "raw_evalsha",
        "≤ 1.15",
    ),
    (
        "l1_tinylfu / moka_raw_tinylfu",
        "hit_ratio",
        "l1_tinylfu",
        "moka_raw_tinylfu",
        "",
    ),
];

/// The lines of the benches' standard error that start a block the summary copies (the block
/// goes on while lines are indented).
const PRINTED_BLOCKS: &[&str] = &[
    "workload_zipf summary",
    "workload_zipf interleaved",
    "hit_ratio summary",
    "hit_ratio:",
    "stampede:",
    "rate_limit interleaved",
    "tiered_get interleaved",
];

/// The target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Runs `cargo bench -p benches -- ARGS` (quick timings unless ARGS has `--full`), then writes and
/// prints the summary and draws the charts; with `--charts-only`, only the charts.
pub(crate) fn bench(args: &[String]) -> Result {
    if args.iter().any(|a| a == "--charts-only") {
        return charts_only();
    }
    let full = args.iter().any(|a| a == "--full");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--full").collect();
    let started = SystemTime::now();
    let target = target_dir();
    let mut command = cargo();
    command
        .args(["bench", "-p", "benches", "--"])
        .args(&args)
        .env(DATA_ENV, target.join("bench-data"));
    if !full {
        command.env(QUICK_ENV, "1");
    }
    let shown = show(&command);
    println!("$ {shown}");
    let mut child = command
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("could not start `{shown}`: {e}")))?;
    fs::create_dir_all(&target).map_err(|e| Error::new(format!("{}: {e}", target.display())))?;
    let log_path = target.join("bench-output.log");
    let mut log = fs::File::create(&log_path)
        .map_err(|e| Error::new(format!("{}: {e}", log_path.display())))?;
    let mut printed = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr)
            .lines()
            .map_while(std::io::Result::ok)
        {
            eprintln!("{line}");
            // The log is a convenience: a failed write loses it, not the run.
            let _ = writeln!(log, "{line}");
            printed.push(line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::new(format!("`{shown}`: {e}")))?;
    let mode = if full {
        "the groups' own timings (`--full`)"
    } else {
        "quick timings (LAYERCACHE_BENCH_QUICK: warm-up ≤ 1 s, measurement ≤ 2 s per id)"
    };
    let mut summary = summary(&target.join("criterion"), started, &printed, mode, &shown);
    if !status.success() {
        // What ran is still worth a summary; say that the rest did not run.
        let _ = writeln!(
            summary,
            "**The run failed ({status})**: the groups after the failing one did not run; its \
             error is in target/bench-output.log."
        );
    }
    // The charts of what ran, a failed run too.
    let drawn = charts(&target, Some(started));
    summary = with_charts(&summary, &charts_section(&drawn));
    let path = target.join("bench-summary.md");
    fs::write(&path, &summary).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    println!("\n{summary}");
    println!("(written to {})", path.display());
    if !status.success() {
        return Err(Error::new(format!("`{shown}` failed ({status})")));
    }
    drawn.map(|_| ())
}

/// `--charts-only`: the charts from what earlier runs left, and the summary's list of them.
fn charts_only() -> Result {
    let target = target_dir();
    let drawn = charts(&target, None);
    let section = charts_section(&drawn);
    let path = target.join("bench-summary.md");
    match fs::read_to_string(&path) {
        Ok(summary) => {
            fs::write(&path, with_charts(&summary, &section))
                .map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
            println!("\n{section}(the list is in {})", path.display());
        }
        // No summary yet: the list is printed only.
        Err(_) => println!("\n{section}"),
    }
    drawn.map(|_| ())
}

/// What the report printed: a line per chart, `drew PATH` or `skipped NAME: why`.
type Drawn = Result<Vec<String>>;

/// Draws the charts of `target` into `target/bench-charts` with the report binary (only the files
/// written since `since`, if given); returns the report's lines.
fn charts(target: &Path, since: Option<SystemTime>) -> Drawn {
    println!("\n==> charts");
    ensure_chart_font()?;
    let mut command = cargo();
    command.args(["run", "--quiet", "-p", REPORT_PACKAGE, "--"]);
    if let Some(since) = since {
        let seconds = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        command.args(["--since", &seconds.to_string()]);
    }
    command.arg(target).arg(target.join("bench-charts"));
    let stdout = output(&mut command)?;
    let lines: Vec<String> = stdout.lines().map(String::from).collect();
    for line in &lines {
        println!("    {line}");
    }
    Ok(lines)
}

/// The summary's section listing the charts (paths relative to the workspace).
fn charts_section(drawn: &Drawn) -> String {
    let mut out = format!("{CHARTS_HEADING}\n\n");
    match drawn {
        Ok(lines) => {
            // Paths relative to the workspace, as the rest of the summary gives them.
            let root = format!("{}/", workspace_root().display());
            for line in lines {
                let line = line.replace(&root, "");
                if let Some(path) = line.strip_prefix("drew ") {
                    let _ = writeln!(out, "- `{path}`");
                } else if !line.trim().is_empty() {
                    let _ = writeln!(out, "- {line}");
                }
            }
            if lines.is_empty() {
                let _ = writeln!(out, "- (the report drew nothing)");
            }
        }
        Err(error) => {
            let _ = writeln!(out, "**The charts could not be drawn**: {error}");
        }
    }
    out
}

/// `summary` with its charts section replaced by `section` (appended if it has none).
fn with_charts(summary: &str, section: &str) -> String {
    let Some(at) = summary.find(&format!("\n{CHARTS_HEADING}\n")) else {
        let gap = if summary.is_empty() || summary.ends_with("\n\n") {
            ""
        } else if summary.ends_with('\n') {
            "\n"
        } else {
            "\n\n"
        };
        return format!("{summary}{gap}{section}");
    };
    let start = at + 1;
    let body = start + CHARTS_HEADING.len();
    // The section goes on to the next heading of its level.
    let end = summary[body..]
        .find("\n## ")
        .map_or(summary.len(), |i| body + i + 1);
    let (before, after) = (&summary[..start], &summary[end..]);
    if after.is_empty() {
        format!("{before}{section}")
    } else {
        format!("{before}{section}\n{after}")
    }
}

/// Makes sure the charts' font is there: `LAYERCACHE_CHART_FONT`, or DejaVu Sans, installed with
/// apt-get when missing and running as root (the report names the package otherwise).
fn ensure_chart_font() -> Result {
    if std::env::var_os(CHART_FONT_ENV).is_some_and(|f| !f.is_empty())
        || Path::new(CHART_FONT).is_file()
    {
        return Ok(());
    }
    println!("    {CHART_FONT} not found (Debian package {CHART_FONT_PACKAGE})");
    if !is_root() || which("apt-get").is_none() {
        // The report fails with the package's name; nothing more to do here.
        return Ok(());
    }
    apt_get(&["update"])?;
    apt_get(&[
        "install",
        "-y",
        "--no-install-recommends",
        CHART_FONT_PACKAGE,
    ])
}

/// A median and its 95 % confidence interval, in ns.
#[derive(Clone, Copy, Debug)]
struct Median {
    point: f64,
    low: f64,
    high: f64,
}

/// The median of `estimates.json` (criterion's format: `"median": {"confidence_interval":
/// {"confidence_level", "lower_bound", "upper_bound"}, "point_estimate", ...}`), read without a
/// JSON parser (xtask has no dependencies).
fn parse_median(json: &str) -> Option<Median> {
    let median = &json[json.find("\"median\"")?..];
    let number = |field: &str| -> Option<f64> {
        let at = median.find(&format!("\"{field}\":"))? + field.len() + 3;
        let rest = &median[at..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end].trim().parse().ok()
    };
    Some(Median {
        point: number("point_estimate")?,
        low: number("lower_bound")?,
        high: number("upper_bound")?,
    })
}

/// Every (group, id, median) criterion wrote since `since`, groups in [`GROUPS`] order.
fn medians(criterion: &Path, since: SystemTime) -> Vec<(String, String, Median)> {
    let mut groups: Vec<String> = fs::read_dir(criterion)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name != "report")
        .collect();
    groups.sort_by_key(|g| {
        (
            GROUPS.iter().position(|k| k == g).unwrap_or(GROUPS.len()),
            g.clone(),
        )
    });
    let mut found = Vec::new();
    for group in groups {
        let mut ids: Vec<(String, Median)> = fs::read_dir(criterion.join(&group))
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let id = entry.ok()?.file_name().into_string().ok()?;
                let path = criterion.join(&group).join(&id).join("new/estimates.json");
                let written = fs::metadata(&path).ok()?.modified().ok()?;
                if written < since {
                    return None;
                }
                Some((id, parse_median(&fs::read_to_string(&path).ok()?)?))
            })
            .collect();
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        found.extend(ids.into_iter().map(|(id, m)| (group.clone(), id, m)));
    }
    found
}

/// A duration in ns as a short human figure.
fn time(ns: f64) -> String {
    match ns {
        ns if ns >= 1e9 => format!("{:.2} s", ns / 1e9),
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{ns:.1} ns"),
    }
}

/// The Markdown summary.
fn summary(
    criterion: &Path,
    since: SystemTime,
    printed: &[String],
    mode: &str,
    command: &str,
) -> String {
    let found = medians(criterion, since);
    let get = |group: &str, id: &str| {
        found
            .iter()
            .find(|(g, i, _)| g == group && i == id)
            .map(|(_, _, m)| *m)
    };
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark summary\n");
    let _ = writeln!(
        out,
        "`{command}` with {mode}. Medians of criterion's samples with their 95 % confidence \
         interval (the spread); one iteration is what each group's doc comment says (a \
         `workload_zipf` iteration is a chunk of requests). Ratios are of medians of the same run; \
         on a busy machine trust the ratios more than the absolute figures.\n"
    );
    let _ = writeln!(out, "## Medians\n");
    let _ = writeln!(out, "| group | id | median | 95 % CI | spread |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|");
    for (group, id, m) in &found {
        let spread = if m.point > 0.0 {
            format!("±{:.1} %", 50.0 * (m.high - m.low) / m.point)
        } else {
            String::from("-")
        };
        let _ = writeln!(
            out,
            "| {group} | {id} | {} | {} – {} | {spread} |",
            time(m.point),
            time(m.low),
            time(m.high)
        );
    }
    if found.is_empty() {
        let _ = writeln!(out, "| (no group ran) | | | | |");
    }
    let _ = writeln!(out, "\n## Ratios\n");
    let _ = writeln!(
        out,
        "| ratio (of median times; < 1: the first is faster) | value | goal |"
    );
    let _ = writeln!(out, "|---|---:|---|");
    for (label, group, a, b, goal) in TIME_RATIOS {
        if let (Some(a), Some(b)) = (get(group, a), get(group, b)) {
            let _ = writeln!(
                out,
                "| {group}: {label} | {:.3} | {goal} |",
                a.point / b.point
            );
        }
    }
    // workload_zipf: ops/s ratios (the inverse of the time ratios), against the prototype and
    // every other id (the peers).
    if let Some(tiered) = get("workload_zipf", "tiered") {
        for (group, id, m) in &found {
            if group == "workload_zipf" && id != "tiered" {
                let goal = if id == "raw_prototype" { "≥ 0.9" } else { "" };
                let _ = writeln!(
                    out,
                    "| workload_zipf (criterion pass): ops/s tiered / {id} | {:.3} | {goal} |",
                    m.point / tiered.point
                );
            }
        }
    }
    if get("workload_zipf", "tiered").is_some() {
        let _ = writeln!(
            out,
            "\nThe `workload_zipf` ratios above come from criterion's pass, where the ids run one \
             after the other, each meeting the machine and Redis in another state; the \
             **interleaved** ratios printed below, where the ids take turns, are the \
             reference."
        );
    }
    let blocks = printed_blocks(printed);
    if !blocks.is_empty() {
        let _ = writeln!(out, "\n## What the benches printed\n");
        for block in blocks {
            let table = block
                .iter()
                .skip(1)
                .any(|l| l.trim_start().starts_with('|'));
            if table {
                // hit_ratio's lines are a Markdown table: keep them as one.
                let _ = writeln!(out, "{}\n", block[0]);
                for line in &block[1..] {
                    let line = line.trim_start();
                    // A line after the table is a paragraph of its own.
                    let gap = if line.starts_with('|') { "" } else { "\n" };
                    let _ = writeln!(out, "{gap}{line}");
                }
                let _ = writeln!(out);
            } else {
                let _ = writeln!(out, "```text");
                for line in &block {
                    let _ = writeln!(out, "{line}");
                }
                let _ = writeln!(out, "```\n");
            }
        }
    }
    out
}

/// The blocks of [`PRINTED_BLOCKS`] in the benches' standard error: each starting line and the
/// indented lines after it.
fn printed_blocks(lines: &[String]) -> Vec<Vec<String>> {
    let mut blocks: Vec<Vec<String>> = Vec::new();
    let mut open = false;
    for line in lines {
        if line.contains(": results written to ") {
            // `benches::data`'s note of where the JSON went; the charts use it, not the summary.
            open = false;
        } else if PRINTED_BLOCKS.iter().any(|start| line.starts_with(start)) {
            blocks.push(vec![line.clone()]);
            open = true;
        } else if open && line.starts_with("  ") && !line.starts_with("   ") {
            // Two spaces: the benches' own lines; cargo's `     Running ...` has more.
            if let Some(block) = blocks.last_mut() {
                block.push(line.clone());
            }
        } else {
            open = false;
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_read_from_criterion_estimates() {
        let json = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":28265794.6,"upper_bound":30587617.3},"point_estimate":29684847.0,"standard_error":498143.8},"slope":null}"#;
        let median = parse_median(json).map(|m| (m.point, m.low, m.high));
        assert_eq!(median, Some((29684847.0, 28265794.6, 30587617.3)));
        assert!(parse_median("{}").is_none());
    }

    #[test]
    fn printed_blocks_are_the_marked_lines_and_their_indented_lines() {
        let lines: Vec<String> = [
            "Benchmarking x",
            "hit_ratio summary (…):",
            "  | a | b |",
            "  |---|---|",
            "hit_ratio/l1_lru time: [1 ms]",
            "  indented but not in a block",
            "stampede: cold_1000 1000 loads",
            "     Running benches/tiered_get.rs",
        ]
        .map(String::from)
        .to_vec();
        let blocks = printed_blocks(&lines);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].len(), 3);
        assert_eq!(
            blocks[1],
            vec![String::from("stampede: cold_1000 1000 loads")]
        );
        assert_eq!(time(1_500.0), "1.50 µs");
        let lines = ["hit_ratio: results written to target/bench-data/hit_ratio.json"]
            .map(String::from)
            .to_vec();
        assert!(printed_blocks(&lines).is_empty());
    }

    #[test]
    fn the_charts_section_is_appended_or_replaced() {
        let drawn: Drawn = Ok(vec![
            String::from("drew /x/latency_by_tier.png"),
            String::from("skipped hit_ratio.png: no hit_ratio.json"),
        ]);
        let section = charts_section(&drawn);
        assert_eq!(
            section,
            "## Charts\n\n- `/x/latency_by_tier.png`\n- skipped hit_ratio.png: no hit_ratio.json\n"
        );
        let summary = "# Benchmark summary\n\n## Medians\n\n| a |\n";
        let with = with_charts(summary, &section);
        assert_eq!(with, format!("{summary}\n{section}"));
        // Replaced, not added twice; what follows the section stays.
        let again = with_charts(&with, "## Charts\n\n- none\n");
        assert_eq!(again, format!("{summary}\n## Charts\n\n- none\n"));
        let middle = format!("{summary}\n{section}\n## What the benches printed\n\nx\n");
        assert_eq!(
            with_charts(&middle, "## Charts\n\n- none\n"),
            format!("{summary}\n## Charts\n\n- none\n\n## What the benches printed\n\nx\n")
        );
        let failed = charts_section(&Err(Error::new("no font")));
        assert!(failed.contains("could not be drawn**: no font"), "{failed}");
    }
}
