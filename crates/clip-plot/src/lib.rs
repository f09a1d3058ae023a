//! PNG figures for CLIP runs: line charts of training curves and image grids, with an embedded font
//! (DejaVu Sans, see `assets/LICENSE-DejaVu.txt`) so text renders on machines with no fonts.
//! Figures come back as PNG bytes, marked as clip's ([`written_by_clip`] recognises them); the
//! caller writes them (atomically).

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
        let _ =
            plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT);
    });
}

/// The `tEXt` chunk every figure carries right after its header: `Software` = `clip`, by which
/// [`written_by_clip`] recognises a PNG clip may replace.
const SOFTWARE_CHUNK: &[u8] = b"Software\0clip";

/// Encodes an RGB buffer as PNG, marked as clip's ([`SOFTWARE_CHUNK`]).
pub(crate) fn encode_png(width: u32, height: u32, rgb: Vec<u8>) -> Result<Vec<u8>, PlotError> {
    let img = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| PlotError("buffer size does not match the figure".into()))?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| PlotError(e.to_string()))?;
    // Signature (8) + IHDR chunk (4 length + 4 type + 13 data + 4 CRC) = 33 bytes, then ours.
    let mut chunk = Vec::with_capacity(12 + SOFTWARE_CHUNK.len());
    chunk.extend((SOFTWARE_CHUNK.len() as u32).to_be_bytes());
    chunk.extend(b"tEXt");
    chunk.extend(SOFTWARE_CHUNK);
    chunk.extend(crc32(&chunk[4..]).to_be_bytes());
    bytes.splice(IHDR_END..IHDR_END, chunk);
    Ok(bytes)
}

const IHDR_END: usize = 33;

/// Whether the PNG file at `path` is a figure clip drew (it carries clip's `Software` chunk).
pub fn written_by_clip(path: &std::path::Path) -> bool {
    let mut head = [0u8; IHDR_END + 8 + SOFTWARE_CHUNK.len()];
    let read =
        std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
    read.is_ok()
        && head.starts_with(b"\x89PNG\r\n\x1a\n")
        && head[IHDR_END + 4..IHDR_END + 8] == *b"tEXt"
        && head[IHDR_END + 8..] == *SOFTWARE_CHUNK
}

/// CRC-32 (ISO-HDLC, PNG's), bit by bit: figures are written once, not in a hot loop.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_carry_clips_mark_and_still_decode() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let png = encode_png(2, 1, vec![255, 0, 0, 0, 0, 255]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours.png");
        std::fs::write(&ours, &png).unwrap();
        assert!(written_by_clip(&ours));
        let img = image::open(&ours).unwrap().to_rgb8();
        assert_eq!(img.as_raw(), &[255, 0, 0, 0, 0, 255]);
        // A PNG of someone else's (no mark), a text file, a missing file: not ours.
        let theirs = dir.path().join("theirs.png");
        image::RgbImage::new(2, 2).save(&theirs).unwrap();
        std::fs::write(dir.path().join("t.txt"), b"hello").unwrap();
        for p in [theirs, dir.path().join("t.txt"), dir.path().join("absent.png")] {
            assert!(!written_by_clip(&p), "{}", p.display());
        }
    }
}
