//! The report's chart: SFU CPU against load, one line per SFU and workload, drawn as a
//! PNG with plotters (text in a TrueType font read from the system, DejaVu Sans by
//! default).

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// Where Debian's fonts-dejavu-core puts its sans-serif face.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One line of the chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// (x, y) points, drawn in order of x.
    pub points: Vec<(f64, f64)>,
}

/// Axis titles and the chart's title.
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

fn load_font(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading font {}", path.display()))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a font plotters can use", path.display()))
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(0, 94, 184),   // blue
    RGBColor(218, 41, 28),  // red
    RGBColor(0, 150, 57),   // green
    RGBColor(237, 139, 0),  // orange
    RGBColor(51, 0, 114),   // purple
    RGBColor(65, 182, 230), // light blue
];

/// Draws `series` into a PNG at `out`, 1000 × 600.
pub fn draw(out: &Path, font: &Path, labels: &Labels<'_>, series: &[Series]) -> anyhow::Result<()> {
    load_font(font)?;
    let points = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = points.fold((0.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    if series.iter().all(|s| s.points.is_empty()) {
        anyhow::bail!("nothing to draw");
    }
    let root = BitMapBackend::new(out, (1000, 600)).into_drawing_area();
    let plot = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e:?}", out.display());
    root.fill(&WHITE).map_err(plot)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(labels.title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..(y_max * 1.15).max(1.0))
        .map_err(plot)?;
    chart
        .configure_mesh()
        .x_desc(labels.x)
        .y_desc(labels.y)
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(plot)?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut pts = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(3)))
            .map_err(plot)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 5, colour.filled())))
            .map_err(plot)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot)?;
    root.present().map_err(plot)?;
    Ok(())
}
