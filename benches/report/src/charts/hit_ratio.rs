//! `hit_ratio.png`: the hit ratios of `benches/benches/hit_ratio.rs`, a column per trace.

use std::iter::once;
use std::path::Path;

use plotters::prelude::*;

use super::{Area, BASELINE, DrawResult, FONT, LRU, OURS, WIDTH, segments, thousands};
use crate::input::{HitRatioRow, HitRatios};

/// The traces of `ratios` in the order they first appear.
fn traces(ratios: &HitRatios) -> Vec<&str> {
    let mut traces: Vec<&str> = Vec::new();
    for row in &ratios.rows {
        if !traces.contains(&row.trace.as_str()) {
            traces.push(&row.trace);
        }
    }
    traces
}

/// `hit_ratio.png`: a column per trace. Above, hit ratio against capacity for each policy, ours
/// (filled markers, thick line) and raw moka (hollow markers, thin line), the replays' min–max as
/// whiskers; below, what the goal is about: ours − raw of the medians per policy, beside raw
/// moka's own spread around its median, within the goal's band.
pub(crate) fn hit_ratio(path: &Path, ratios: &HitRatios) -> DrawResult {
    let traces = traces(ratios);
    let root =
        BitMapBackend::new(path, (WIDTH.max(420 * traces.len() as u32), 860)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "Hit ratio by capacity: ours (MokaBackend) and raw moka; TinyLFU the median of {} \
             replays (min–max), LRU one",
            ratios.config.tinylfu_runs
        ),
        (FONT, 20),
    )?;
    let (upper, rest) = root.split_vertically(480);
    let (lower, footer) = rest.split_vertically(300);
    let columns = traces.len().max(1);
    let panels = upper.split_evenly((1, columns));
    let differences = lower.split_evenly((1, columns));
    for (p, trace) in traces.iter().enumerate() {
        let rows: Vec<&HitRatioRow> = ratios.rows.iter().filter(|r| r.trace == *trace).collect();
        if let (Some(panel), Some(difference)) = (panels.get(p), differences.get(p)) {
            hit_ratio_panel(panel, trace, &rows, p == 0)?;
            difference_panel(difference, &rows, ratios.config.goal_points, p == 0)?;
        }
    }
    footer.draw(&Text::new(
        format!(
            "Goal: |ours − raw| of the medians ≤ {} points (the shaded band). Traces: Megiddo and \
             Modha, \"ARC: A Self-Tuning, Low Overhead Replacement Cache\", FAST 03.",
            ratios.config.goal_points
        ),
        (20, 12),
        (FONT, 15),
    ))?;
    root.present()?;
    Ok(())
}

/// The capacities of `rows`, ascending, each once.
fn capacities(rows: &[&HitRatioRow]) -> Vec<u64> {
    let mut capacities: Vec<u64> = rows.iter().map(|r| r.capacity).collect();
    capacities.sort_unstable();
    capacities.dedup();
    capacities
}

/// ours − raw of the medians per capacity and policy (filled markers), raw moka's own min–max
/// around its median (grey whiskers), the goal's band shaded.
fn difference_panel(area: &Area<'_>, rows: &[&HitRatioRow], goal: f64, legend: bool) -> DrawResult {
    let capacities = capacities(rows);
    let n = capacities.len();
    let reach = rows
        .iter()
        .flat_map(|r| {
            [
                r.ours.median - r.raw.median,
                r.raw.min - r.raw.median,
                r.raw.max - r.raw.median,
            ]
        })
        .fold(goal, |m, v| m.max(v.abs()));
    let y = reach * 1.3;
    let mut chart = ChartBuilder::on(area)
        .caption("ours − raw (points)", (FONT, 16))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(50)
        .build_cartesian_2d(segments(n), -y..y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => {
                capacities.get(*i).map_or(String::new(), |c| thousands(*c))
            }
            _ => String::new(),
        })
        .y_label_formatter(&|v| {
            if v.abs() < 0.05 {
                String::from("0")
            } else {
                format!("{v:+.1}")
            }
        })
        .x_desc("capacity (entries)")
        .label_style((FONT, 14))
        .draw()?;
    let (left, right) = (SegmentValue::Exact(0), SegmentValue::Exact(n.max(2)));
    chart.draw_series(once(Rectangle::new(
        [(left.clone(), -goal), (right.clone(), goal)],
        GREEN.mix(0.12).filled(),
    )))?;
    chart.draw_series(once(PathElement::new(
        vec![(left, 0.0), (right, 0.0)],
        BLACK.stroke_width(1),
    )))?;
    let at = |capacity: u64| {
        SegmentValue::CenterOf(capacities.iter().position(|&c| c == capacity).unwrap_or(0))
    };
    // Within a capacity's segment: raw's spread at the centre, TinyLFU left of it and LRU right
    // (offsets in pixels).
    let mut spread_labelled = legend;
    for (policy, colour, dx) in [("TinyLFU", OURS, -10), ("LRU", LRU, 14)] {
        let mut first = legend;
        for row in rows.iter().filter(|r| r.policy == policy) {
            let centre = at(row.capacity);
            if row.raw.max > row.raw.min {
                let (low, high) = (row.raw.min - row.raw.median, row.raw.max - row.raw.median);
                let whisker = chart.draw_series(once(PathElement::new(
                    vec![(centre.clone(), low), (centre.clone(), high)],
                    BASELINE.stroke_width(3),
                )))?;
                if std::mem::take(&mut spread_labelled) {
                    whisker.label("raw moka's own min–max").legend(|(x, y)| {
                        PathElement::new(
                            vec![(x + 8, y - 6), (x + 8, y + 6)],
                            BASELINE.stroke_width(3),
                        )
                    });
                }
            }
            let marker = chart.draw_series(once(
                EmptyElement::at((centre, row.ours.median - row.raw.median))
                    + Circle::new((dx, 0), 5, colour.filled()),
            ))?;
            if std::mem::take(&mut first) {
                marker
                    .label(format!("{policy}: ours − raw"))
                    .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
            }
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw()?;
    }
    Ok(())
}

fn hit_ratio_panel(
    area: &Area<'_>,
    trace: &str,
    rows: &[&HitRatioRow],
    legend: bool,
) -> DrawResult {
    let capacities = capacities(rows);
    let n = capacities.len();
    let top = rows
        .iter()
        .map(|r| r.ours.max.max(r.raw.max))
        .fold(0.0_f64, f64::max);
    let y1 = (top * 1.2 + 5.0).min(100.0);
    let requests = rows.first().map_or(0, |r| r.requests);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{trace} ({} requests)", thousands(requests)),
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(50)
        .build_cartesian_2d(segments(n), 0.0..y1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => {
                capacities.get(*i).map_or(String::new(), |c| thousands(*c))
            }
            _ => String::new(),
        })
        .y_label_formatter(&|v| format!("{v:.0} %"))
        .x_desc("capacity (entries)")
        .label_style((FONT, 14))
        .draw()?;
    let at = |capacity: u64| {
        SegmentValue::CenterOf(capacities.iter().position(|&c| c == capacity).unwrap_or(0))
    };
    for (policy, colour) in [("TinyLFU", OURS), ("LRU", LRU)] {
        let policy_rows: Vec<&&HitRatioRow> = rows.iter().filter(|r| r.policy == policy).collect();
        if policy_rows.is_empty() {
            continue;
        }
        for raw in [false, true] {
            let side = |row: &HitRatioRow| if raw { row.raw } else { row.ours };
            let points: Vec<_> = policy_rows
                .iter()
                .map(|row| (at(row.capacity), side(row).median))
                .collect();
            let width = if raw { 1 } else { 3 };
            let line =
                chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(width)))?;
            if legend {
                let label = format!("{policy} {}", if raw { "raw moka" } else { "ours" });
                line.label(label).legend(move |(x, y)| {
                    let marker = if raw {
                        Circle::new((10, 0), 6, colour.stroke_width(2))
                    } else {
                        Circle::new((10, 0), 4, colour.filled())
                    };
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (20, 0)], colour.stroke_width(width))
                        + marker
                });
            }
            let marker = |point| {
                if raw {
                    Circle::new(point, 7, colour.stroke_width(2))
                } else {
                    Circle::new(point, 4, colour.filled())
                }
            };
            chart.draw_series(points.into_iter().map(marker))?;
            chart.draw_series(policy_rows.iter().filter_map(|row| {
                let spread = side(row);
                (spread.max > spread.min).then(|| {
                    PathElement::new(
                        vec![
                            (at(row.capacity), spread.min),
                            (at(row.capacity), spread.max),
                        ],
                        colour.stroke_width(2),
                    )
                })
            }))?;
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()?;
    }
    Ok(())
}
