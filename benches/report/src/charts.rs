//! The three charts, drawn as PNGs with plotters.
//!
//! Colours say what a bar or line stands for, the same in every chart: layercache in blue, the
//! raw baseline (moka, redis-rs, the prototype) in grey, peers (other caching libraries) in
//! orange.

use std::error::Error;
use std::iter::once;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::RangedCoordusize;
use plotters::prelude::*;

use crate::input::{Latency, Role, Workload};

mod hit_ratio;
pub(crate) use hit_ratio::hit_ratio;

/// What a drawing function returns: plotters' errors are boxed, the binary only reports them.
pub(crate) type DrawResult = Result<(), Box<dyn Error>>;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// The font family every text uses (the TTF registered under this name in `main.rs`).
pub(crate) const FONT: &str = "sans-serif";

const OURS: RGBColor = RGBColor(31, 119, 180);
const BASELINE: RGBColor = RGBColor(127, 127, 127);
const PEER: RGBColor = RGBColor(255, 127, 14);
const OTHER: RGBColor = RGBColor(148, 103, 189);
/// The hit-ratio chart's second policy (LRU), beside [`OURS`] for TinyLFU.
const LRU: RGBColor = RGBColor(214, 39, 40);

/// Width of every chart, in pixels.
pub(crate) const WIDTH: u32 = 1200;

/// A duration in ns as a short human figure.
fn time(ns: f64) -> String {
    match ns {
        ns if ns >= 1e9 => format!("{:.2} s", ns / 1e9),
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{ns:.1} ns"),
    }
}

/// Operations per second as a short human figure.
fn rate(ops: f64) -> String {
    match ops {
        ops if ops >= 1e6 => format!("{:.2} M", ops / 1e6),
        ops if ops >= 1e3 => format!("{:.0} k", ops / 1e3),
        ops => format!("{ops:.0}"),
    }
}

/// `n` segments of a bar chart's category axis (plotters' integer ranges include their end).
fn segments(n: usize) -> SegmentedCoord<RangedCoordusize> {
    (0..n.saturating_sub(1).max(1)).into_segmented()
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether a criterion id is a raw baseline (`moka_raw`, `redis_raw`, `mget_raw_100`, …).
fn is_baseline(id: &str) -> bool {
    id.split('_').any(|part| part == "raw")
}

/// The ids of a latency group in reading order: each raw baseline followed by the ids of ours
/// that go with it (same first word: `moka_raw` → `moka_backend`; `redis_raw` → `redis_backend`;
/// `tiered_get` pairs by tier: `l1_*` with moka, `l2_*` with redis), then the rest by name.
pub(crate) fn latency_order(group: &str, ids: &mut [Latency]) {
    let rank = |id: &str| -> (usize, usize) {
        let tier = if id.starts_with("moka") || (group == "tiered_get" && id.starts_with("l1")) {
            0
        } else if id.starts_with("redis") || (group == "tiered_get" && id.starts_with("l2")) {
            1
        } else {
            2
        };
        (tier, usize::from(!is_baseline(id)))
    };
    ids.sort_by(|a, b| (rank(&a.id), &a.id).cmp(&(rank(&b.id), &b.id)));
}

/// `latency_by_tier.png`: one panel per group, a bar per id (median, log scale) with its
/// confidence interval as a whisker.
pub(crate) fn latency_by_tier(path: &Path, groups: &[(&str, Vec<Latency>)]) -> DrawResult {
    let rows: usize = groups.iter().map(|(_, ids)| ids.len()).sum();
    let height = 80 + groups.len() as u32 * 110 + rows as u32 * 48;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Median time per iteration with its 95 % confidence interval (criterion), log scale",
        (FONT, 24),
    )?;
    // Each panel as tall as its ids need.
    let mut rest = root;
    for (i, (group, ids)) in groups.iter().enumerate() {
        let panel_height = 110 + ids.len() as i32 * 48;
        let (panel, below) = if i + 1 < groups.len() {
            rest.split_vertically(panel_height)
        } else {
            (rest.clone(), rest.clone())
        };
        latency_panel(&panel, group, ids)?;
        rest = below;
    }
    rest.present()?;
    Ok(())
}

fn latency_panel(area: &Area<'_>, group: &str, ids: &[Latency]) -> DrawResult {
    let positive = |v: f64| if v > 0.0 { v } else { f64::MAX };
    let low = ids
        .iter()
        .map(|l| positive(l.low.min(l.median)))
        .fold(f64::MAX, f64::min);
    let high = ids
        .iter()
        .map(|l| l.high.max(l.median))
        .fold(0.0_f64, f64::max);
    let (x0, x1) = if low < high {
        (low / 3.0, high * 6.0)
    } else {
        (1.0, 10.0)
    };
    let n = ids.len();
    // The first id on top.
    let row = |i: usize| n - 1 - i;
    let mut chart = ChartBuilder::on(area)
        .caption(group, (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(200)
        .build_cartesian_2d((x0..x1).log_scale(), segments(n))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(r) if *r < n => ids[row(*r)].id.clone(),
            _ => String::new(),
        })
        .x_label_formatter(&|ns| time(*ns))
        .label_style((FONT, 15))
        .draw()?;
    let mut labelled = Vec::new();
    for (i, latency) in ids.iter().enumerate() {
        let (colour, label) = if is_baseline(&latency.id) {
            (BASELINE, "raw baseline")
        } else {
            (OURS, "layercache")
        };
        // Log scale: whatever lies left of the axis is drawn at its start.
        let bar = Bar {
            row: row(i),
            median: latency.median.max(x0),
            low: latency.low.max(x0),
            high: latency.high.max(x0),
            colour,
            label,
            text: time(latency.median),
        };
        draw_bar(&mut chart, bar, &mut labelled)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()?;
    Ok(())
}

/// One id's row of a horizontal bar chart whose ids are the y segments.
struct Bar {
    /// The id's segment, counted from the bottom.
    row: usize,
    /// Where the bar ends; it starts at the x axis's start.
    median: f64,
    /// The interval drawn as a whisker with an end cap at each end, when both are finite.
    low: f64,
    high: f64,
    colour: RGBColor,
    /// What `colour` stands for, in the legend.
    label: &'static str,
    /// Drawn right of the row's end: the whisker's high end, else the bar's.
    text: String,
}

/// Draws `bar` on `chart`, and its legend entry if `labelled` does not hold its label yet (which
/// it then does), so each label is in the legend once, in the order of first appearance.
fn draw_bar<X>(
    chart: &mut ChartContext<
        '_,
        BitMapBackend<'_>,
        Cartesian2d<X, SegmentedCoord<RangedCoordusize>>,
    >,
    bar: Bar,
    labelled: &mut Vec<&'static str>,
) -> DrawResult
where
    X: Ranged<ValueType = f64>,
{
    let Bar {
        row,
        median,
        low,
        high,
        colour,
        label,
        text,
    } = bar;
    let mut rectangle = Rectangle::new(
        [
            (chart.x_range().start, SegmentValue::Exact(row)),
            (median, SegmentValue::Exact(row + 1)),
        ],
        colour.filled(),
    );
    rectangle.set_margin(8, 8, 0, 0);
    let annotation = chart.draw_series(once(rectangle))?;
    if !labelled.contains(&label) {
        labelled.push(label);
        annotation
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    let centre = SegmentValue::CenterOf(row);
    let cap = |x: f64| {
        EmptyElement::at((x, centre.clone()))
            + PathElement::new(vec![(0, -7), (0, 7)], BLACK.stroke_width(2))
    };
    if low.is_finite() && high.is_finite() {
        chart.draw_series(once(PathElement::new(
            vec![(low, centre.clone()), (high, centre.clone())],
            BLACK.stroke_width(2),
        )))?;
        chart.draw_series(once(cap(low)))?;
        chart.draw_series(once(cap(high)))?;
    }
    let end = if high.is_finite() { high } else { median };
    chart.draw_series(once(
        EmptyElement::at((end, centre)) + Text::new(text, (8, -8), (FONT, 15)),
    ))?;
    Ok(())
}

fn role_colour(role: Role) -> (RGBColor, &'static str) {
    match role {
        Role::Baseline => (BASELINE, "baseline"),
        Role::Ours => (OURS, "ours"),
        Role::Peer => (PEER, "peer"),
        Role::Other => (OTHER, "other"),
    }
}

/// The config's fields as `key value, …` for a subtitle.
fn config_line(config: &serde_json::Map<String, serde_json::Value>) -> String {
    config
        .iter()
        .map(|(key, value)| format!("{key} {value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `workload_zipf_ops.png`: a bar per id (median ops/s) with the rounds' min–max as a whisker,
/// coloured by role; the ratios as lines of text below.
pub(crate) fn workload_zipf_ops(path: &Path, workload: &Workload) -> DrawResult {
    let ids = &workload.ids;
    let n = ids.len();
    let text_height = 30 + 26 * workload.ratios.len() as u32;
    let height = 170 + n as u32 * 56 + text_height;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "workload_zipf: requests per second, median of the rounds with their min–max",
        (FONT, 24),
    )?;
    let (top, bottom) = root.split_vertically(height as i32 - 40 - text_height as i32);
    let high = ids
        .iter()
        .map(|i| i.ops_per_sec.max.max(i.ops_per_sec.median))
        .fold(0.0_f64, f64::max);
    let x1 = if high > 0.0 { high * 1.25 } else { 1.0 };
    let row = |i: usize| n - 1 - i;
    let mut chart = ChartBuilder::on(&top)
        .caption(config_line(&workload.config), (FONT, 15))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(200)
        .build_cartesian_2d(0.0..x1, segments(n))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(r) if *r < n => ids[row(*r)].id.clone(),
            _ => String::new(),
        })
        .x_label_formatter(&|ops| rate(*ops))
        .x_desc("requests per second")
        .label_style((FONT, 15))
        .draw()?;
    let mut labelled = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (colour, role) = role_colour(id.role);
        let ops = id.ops_per_sec;
        let mut text = format!("{} ops/s", rate(ops.median));
        if let Some(hits) = id.l1_hit_ratio {
            text.push_str(&format!(", L1 hits {:.1} %", 100.0 * hits));
        }
        // A missing figure (NaN) is drawn as nothing.
        let bar = Bar {
            row: row(i),
            median: if ops.median.is_finite() {
                ops.median
            } else {
                0.0
            },
            low: ops.min,
            high: ops.max,
            colour,
            label: role,
            text,
        };
        draw_bar(&mut chart, bar, &mut labelled)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()?;
    for (i, ratio) in workload.ratios.iter().enumerate() {
        let goal = ratio
            .goal
            .as_deref()
            .filter(|goal| !goal.is_empty())
            .map_or(String::new(), |goal| format!(" (goal {goal})"));
        let rounds = if ratio.min.is_finite() && ratio.max.is_finite() {
            format!(" (rounds {:.2}–{:.2})", ratio.min, ratio.max)
        } else {
            String::new()
        };
        bottom.draw(&Text::new(
            format!("{}: {:.3}{rounds}{goal}", ratio.label, ratio.median),
            (20, 10 + 26 * i as i32),
            (FONT, 17),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(id: &str) -> Latency {
        Latency {
            id: id.to_owned(),
            median: 1.0,
            low: 1.0,
            high: 1.0,
        }
    }

    #[test]
    fn each_baseline_comes_before_the_ids_it_is_compared_with() {
        let mut ids: Vec<Latency> = [
            "redis_raw",
            "l2_hit",
            "l1_hit_with_tracking",
            "moka_raw",
            "l1_hit",
        ]
        .map(latency)
        .to_vec();
        latency_order("tiered_get", &mut ids);
        let order: Vec<&str> = ids.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(
            order,
            [
                "moka_raw",
                "l1_hit",
                "l1_hit_with_tracking",
                "redis_raw",
                "l2_hit"
            ]
        );
        let mut ids: Vec<Latency> = ["redis_backend", "moka_backend", "redis_raw", "moka_raw"]
            .map(latency)
            .to_vec();
        latency_order("backend_get", &mut ids);
        let order: Vec<&str> = ids.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(
            order,
            ["moka_raw", "moka_backend", "redis_raw", "redis_backend"]
        );
    }

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(time(156.3), "156.3 ns");
        assert_eq!(time(81_520.0), "81.52 µs");
        assert_eq!(rate(434_650.0), "435 k");
        assert_eq!(rate(1_250_000.0), "1.25 M");
        assert!(is_baseline("mget_raw_100") && !is_baseline("l1_hit"));
        assert_eq!(thousands(12_672_123), "12,672,123");
        assert_eq!(thousands(250), "250");
    }
}
