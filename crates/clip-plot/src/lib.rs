//! PNG figures for CLIP runs: line charts of training curves and image grids, with an embedded font
//! (DejaVu Sans, see `assets/LICENSE-DejaVu.txt`) so text renders on machines with no fonts.
//! Figures come back as PNG bytes; the caller writes them (atomically).

pub mod curves;
pub mod grid;

pub use curves::{render_panels, Panel, Series};
pub use grid::{render_grid, render_grid_with, Tile};

/// Why a figure could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the figure: {0}")]
pub struct PlotError(String);

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font under "sans-serif" (once per process).
pub(crate) fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT);
    });
}

/// Encodes an RGB buffer as PNG.
pub(crate) fn encode_png(width: u32, height: u32, rgb: Vec<u8>) -> Result<Vec<u8>, PlotError> {
    let img = image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| PlotError("buffer size does not match the figure".into()))?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| PlotError(e.to_string()))?;
    Ok(bytes)
}
