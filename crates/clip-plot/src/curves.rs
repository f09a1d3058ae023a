//! A grid of line charts (one panel per quantity), as a PNG.

use plotters::prelude::*;

use crate::{encode_png, ensure_font, PlotError};

/// One line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Points drawn per line at most: denser series (a per-step curve over thousands of steps) are
/// averaged in bins. Wide strokes through thousands of zigzags also make plotters' line joins
/// spike far outside the chart.
const MAX_POINTS: usize = 400;

/// Averages `points` (sorted by x) in `max` consecutive bins of equal count; fewer are kept as is.
fn bin_means(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points;
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            (c.iter().map(|p| p.0).sum::<f64>() / n, c.iter().map(|p| p.1).sum::<f64>() / n)
        })
        .collect()
}

/// Draws `panels` in a grid of two columns: a PNG of `width` × `height`.
pub fn render_panels(panels: &[Panel], width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    ensure_font();
    let err = PlotError;
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let rows = panels.len().div_ceil(2).max(1);
        let areas = root.split_evenly((rows, 2));
        for (panel, area) in panels.iter().zip(areas) {
            draw_panel(&area, panel).map_err(err)?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    encode_png(width, height, buf)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let points = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> =
            s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        let pts = bin_means(pts, MAX_POINTS);
        let style = ShapeStyle::from(&color).stroke_width(2);
        if pts.len() == 1 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, style.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(LineSeries::new(pts, style))
            .map_err(|e| e.to_string())?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    if !panel.series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_series_are_averaged_in_bins() {
        let pts: Vec<(f64, f64)> =
            (0..1000).map(|i| (i as f64, if i % 2 == 0 { 0.0 } else { 1.0 })).collect();
        let binned = bin_means(pts.clone(), 100);
        assert_eq!(binned.len(), 100);
        assert!(binned.iter().all(|&(_, y)| (y - 0.5).abs() < 1e-12));
        assert_eq!((binned[0].0, binned[99].0), (4.5, 994.5));
        assert_eq!(bin_means(pts[..50].to_vec(), 100), pts[..50].to_vec());
    }

    #[test]
    fn writes_a_png_with_ink_in_every_panel() {
        let line = |name: &str, k: f64| Series {
            name: name.into(),
            points: (0..20).map(|i| (i as f64, k * (i as f64).sqrt())).collect(),
        };
        let panels = vec![
            Panel {
                title: "loss".into(),
                x_label: "step".into(),
                series: vec![line("train", 1.0), line("val", 2.0)],
            },
            Panel {
                title: "recall".into(),
                x_label: "epoch".into(),
                series: vec![line("r@1", 0.1)],
            },
            Panel { title: "empty".into(), x_label: "step".into(), series: vec![] },
        ];
        let png = render_panels(&panels, 800, 600).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 600));
        // Non-white pixels in the top-left and top-right panels (axes, lines, text).
        let ink = |x0: u32, x1: u32| {
            (x0..x1)
                .flat_map(|x| (0..300).map(move |y| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 != [255, 255, 255])
                .count()
        };
        assert!(ink(0, 400) > 2000 && ink(400, 800) > 1000);
    }
}
