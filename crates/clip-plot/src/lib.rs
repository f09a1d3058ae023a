//! PNG figures for CLIP runs: line charts of training curves and image grids, with an embedded font
//! (DejaVu Sans, see `assets/LICENSE-DejaVu.txt`) so text renders on machines with no fonts.

pub mod curves;
pub mod grid;

pub use curves::{plot_panels, Panel, Series};
pub use grid::{image_grid, Tile};

/// Why a figure could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {message}")]
    Draw { path: std::path::PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font under "sans-serif" (once per process).
pub(crate) fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT);
    });
}

/// Encodes an RGB buffer as PNG and writes it atomically (temp file + rename).
pub(crate) fn write_png(path: &std::path::Path, width: u32, height: u32, rgb: Vec<u8>) -> Result<(), PlotError> {
    let img = image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| PlotError::Draw {
        path: path.into(),
        message: "buffer size does not match the figure".into(),
    })?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| PlotError::Draw { path: path.into(), message: e.to_string() })?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(".{}.tmp-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("figure"), std::process::id()));
    std::fs::write(&tmp, &bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            PlotError::Io { path: path.into(), source }
        })
}
