//! SVG plots (plotters' SVG backend, so no font libraries are needed): the latency CDFs of a
//! run, and throughput and latency over time.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::stats::Hist;

/// A row of the per-second series: (second, turns, frames, p50 ms, p99 ms).
pub type Row = (u64, u64, u64, f64, f64);
/// A named line drawn from the rows.
type Line<'a> = (&'a str, fn(&Row) -> f64);

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// Cumulative distributions of the named latencies, on a log time axis (ms).
pub fn cdf(path: &Path, title: &str, hists: &[(&str, &Hist)]) -> anyhow::Result<()> {
    let hists: Vec<_> = hists.iter().filter(|(_, h)| h.count() > 0).collect();
    if hists.is_empty() {
        return Ok(());
    }
    let lo = hists.iter().map(|(_, h)| h.quantile_us(0.0)).min().unwrap_or(1).max(1) as f64 / 1000.0;
    let hi = hists.iter().map(|(_, h)| h.max_us()).max().unwrap_or(1).max(2) as f64 / 1000.0;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart.configure_mesh().x_desc("latency (ms, log scale)").y_desc("fraction at or below").draw().map_err(err)?;
    for (i, (name, h)) in hists.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = h.cdf().into_iter().map(|(us, f)| (us / 1000.0, f)).collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(format!(
                "{name} (p50 {:.2} ms, p99 {:.2} ms)",
                h.quantile_us(0.5) as f64 / 1e3,
                h.quantile_us(0.99) as f64 / 1e3
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Throughput (turns/s and frames/s) above, the main latency's p50 and p99 per second below.
/// `series` rows are (second, turns, frames, p50 ms, p99 ms); `marks` are action times (s).
pub fn timeline(
    path: &Path,
    title: &str,
    latency_name: &str,
    series: &[Row],
    marks: &[(f64, String)],
) -> anyhow::Result<()> {
    if series.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(320);
    let t_max = series.iter().map(|s| s.0).max().unwrap_or(1).max(1) as f64 + 1.0;
    let y_max = series.iter().map(|s| s.1.max(s.2)).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut up = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(err)?;
    up.configure_mesh().y_desc("per second").draw().map_err(err)?;
    let lines: [Line; 2] = [("turns/s", |s| s.1 as f64), ("delivered frames/s", |s| s.2 as f64)];
    for (i, (name, f)) in lines.iter().enumerate() {
        let c = COLORS[i];
        let pts: Vec<(f64, f64)> = series.iter().map(|s| (s.0 as f64, f(s))).collect();
        up.draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    for (t, _) in marks {
        up.draw_series(LineSeries::new(vec![(*t, 0.0), (*t, y_max)], BLACK.mix(0.5))).map_err(err)?;
    }
    up.configure_series_labels().position(SeriesLabelPosition::LowerLeft).border_style(BLACK).draw().map_err(err)?;
    let l_max = series.iter().map(|s| s.4).fold(0.0, f64::max).max(0.001) * 1.1;
    let mut down = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..l_max)
        .map_err(err)?;
    down.configure_mesh().x_desc("seconds since start").y_desc(format!("{latency_name} (ms)")).draw().map_err(err)?;
    let lat: [Line; 2] = [("p50", |s| s.3), ("p99", |s| s.4)];
    for (i, (name, f)) in lat.iter().enumerate() {
        let c = COLORS[i + 2];
        let pts: Vec<(f64, f64)> = series.iter().filter(|s| s.4 > 0.0).map(|s| (s.0 as f64, f(s))).collect();
        down.draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    for (t, _) in marks {
        down.draw_series(LineSeries::new(vec![(*t, 0.0), (*t, l_max)], BLACK.mix(0.5))).map_err(err)?;
    }
    down.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
