//! Markdown tables on stdout and in the report, SVG plots in the results folder.

use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What a run prints and keeps: markdown, and the plots it wrote.
pub struct Report {
    dir: PathBuf,
    markdown: String,
    /// A run whose figures only feed another table: nothing printed, kept or drawn.
    quiet: bool,
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Plot<'a> {
    pub file: &'a str,
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

impl Report {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create the results folder {}: {e}", dir.display()))?;
        Ok(Report { dir: dir.to_path_buf(), markdown: String::new(), quiet: false })
    }

    /// A report that prints, keeps and draws nothing.
    pub fn quiet() -> Self {
        Report { dir: PathBuf::new(), markdown: String::new(), quiet: true }
    }

    pub fn markdown(&self) -> &str {
        &self.markdown
    }

    /// Prints `text` (markdown) and keeps it for the results file.
    pub fn text(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        println!("{text}");
        self.markdown.push_str(text);
        self.markdown.push('\n');
    }

    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for row in rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        self.text(&out);
    }

    /// Draws `plot` as an SVG line chart into the results folder and links it.
    pub fn plot(&mut self, plot: &Plot) -> anyhow::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let path = self.dir.join(plot.file);
        draw(&path, plot).map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))?;
        self.text(&format!("Plot: `{}`\n", path.display()));
        Ok(())
    }
}

fn range(values: impl Iterator<Item = f64>, log: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return 1.0..10.0;
    }
    if log {
        (lo / 1.5)..(hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.05).max(1e-9);
        (lo - pad).min(0.0)..(hi + pad)
    }
}

fn draw(path: &Path, plot: &Plot) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let xs = range(plot.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), plot.log_x);
    let ys = range(plot.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), plot.log_y);
    let mut builder = ChartBuilder::on(&root);
    builder.caption(plot.title, ("sans-serif", 22)).margin(16).x_label_area_size(44).y_label_area_size(80);
    // One body for the four axis combinations.
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart.configure_mesh().x_desc(plot.x_label).y_desc(plot.y_label).draw()?;
            for (i, series) in plot.series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let points: Vec<(f64, f64)> = series
                    .points
                    .iter()
                    .copied()
                    .filter(|p| (!plot.log_y || p.1 > 0.0) && (!plot.log_x || p.0 > 0.0))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(series.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        }};
    }
    match (plot.log_x, plot.log_y) {
        (true, true) => body!(builder.build_cartesian_2d(xs.log_scale(), ys.log_scale())?),
        (true, false) => body!(builder.build_cartesian_2d(xs.log_scale(), ys)?),
        (false, true) => body!(builder.build_cartesian_2d(xs, ys.log_scale())?),
        (false, false) => body!(builder.build_cartesian_2d(xs, ys)?),
    }
    root.present()?;
    Ok(())
}

/// Bytes in a human unit.
pub fn bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n} B"),
        10_000..=9_999_999 => format!("{:.1} KB", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

pub fn percentile(sorted: &[std::time::Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}
