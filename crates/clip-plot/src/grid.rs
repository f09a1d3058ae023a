//! A grid of images with a caption under each (search results with their scores).

use std::path::{Path, PathBuf};

use image::{imageops, Rgb, RgbImage};
use plotters::prelude::*;

use crate::{encode_png, ensure_font, PlotError};

/// One cell: a picture and the text under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    pub image: PathBuf,
    pub caption: String,
}

const TEXT_HEIGHT: u32 = 26;
const PAD: u32 = 6;

/// Draws `tiles` in rows of `columns`, each picture fitted into a `cell` × `cell` square: a PNG.
/// A picture that cannot be read becomes a grey square saying so.
pub fn render_grid(
    title: &str,
    tiles: &[Tile],
    columns: usize,
    cell: u32,
) -> Result<Vec<u8>, PlotError> {
    render_grid_with(title, tiles, columns, cell, &|path| {
        image::open(path).ok().map(|i| i.to_rgb8())
    })
}

/// [`render_grid`] with pictures read by `load` (e.g. from inside archives).
pub fn render_grid_with(
    title: &str,
    tiles: &[Tile],
    columns: usize,
    cell: u32,
    load: &dyn Fn(&Path) -> Option<RgbImage>,
) -> Result<Vec<u8>, PlotError> {
    ensure_font();
    let columns = columns.max(1) as u32;
    let rows = (tiles.len() as u32).div_ceil(columns).max(1);
    let title_h = if title.is_empty() { 0 } else { TEXT_HEIGHT + PAD };
    let (w, h) = (columns * (cell + PAD) + PAD, title_h + rows * (cell + TEXT_HEIGHT + PAD) + PAD);
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let mut failed = Vec::new();
    for (i, tile) in tiles.iter().enumerate() {
        let (cx, cy) = (
            PAD + (i as u32 % columns) * (cell + PAD),
            title_h + PAD + (i as u32 / columns) * (cell + TEXT_HEIGHT + PAD),
        );
        match load(&tile.image) {
            Some(img) => {
                let scale = cell as f32 / img.width().max(img.height()) as f32;
                let (tw, th) = (
                    ((img.width() as f32 * scale).round() as u32).max(1),
                    ((img.height() as f32 * scale).round() as u32).max(1),
                );
                let thumb = imageops::resize(&img, tw, th, imageops::FilterType::Triangle);
                imageops::overlay(
                    &mut canvas,
                    &thumb,
                    (cx + (cell - tw) / 2) as i64,
                    (cy + (cell - th) / 2) as i64,
                );
            }
            None => {
                for y in cy..cy + cell {
                    for x in cx..cx + cell {
                        canvas.put_pixel(x, y, Rgb([200, 200, 200]));
                    }
                }
                failed.push(i);
            }
        }
    }
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let err = PlotError;
        let font = ("sans-serif", 16).into_font().color(&BLACK);
        if !title.is_empty() {
            root.draw(&Text::new(
                title.to_string(),
                (PAD as i32, (PAD + 2) as i32),
                ("sans-serif", 20).into_font().color(&BLACK),
            ))
            .map_err(|e| err(e.to_string()))?;
        }
        for (i, tile) in tiles.iter().enumerate() {
            let (cx, cy) = (
                PAD + (i as u32 % columns) * (cell + PAD),
                title_h + PAD + (i as u32 / columns) * (cell + TEXT_HEIGHT + PAD),
            );
            let max_chars = (cell / 8).max(4) as usize;
            let mut text: String = tile.caption.chars().take(max_chars).collect();
            if tile.caption.chars().count() > max_chars {
                text.push('…');
            }
            root.draw(&Text::new(text, (cx as i32, (cy + cell + 4) as i32), font.clone()))
                .map_err(|e| err(e.to_string()))?;
            if failed.contains(&i) {
                root.draw(&Text::new(
                    "unreadable".to_string(),
                    ((cx + 8) as i32, (cy + cell / 2) as i32),
                    font.clone(),
                ))
                .map_err(|e| err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    encode_png(w, h, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_pictures_and_captions() {
        let dir = tempfile::tempdir().unwrap();
        let red = dir.path().join("red.png");
        RgbImage::from_pixel(40, 20, Rgb([255, 0, 0])).save(&red).unwrap();
        let junk = dir.path().join("junk.jpg");
        std::fs::write(&junk, b"not an image").unwrap();
        let tiles = vec![
            Tile { image: red.clone(), caption: "0.912 red.png".into() },
            Tile { image: junk, caption: "0.500 junk.jpg".into() },
            Tile { image: red, caption: "0.100 red again".into() },
        ];
        let png = render_grid("query", &tiles, 2, 100).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.width(), 2 * 106 + 6);
        // The first picture is red in the middle of its cell; the second cell is grey.
        let title = TEXT_HEIGHT + PAD;
        assert_eq!(img.get_pixel(6 + 50, title + 6 + 50).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(112 + 10, title + 6 + 10).0, [200, 200, 200]);
        // Some caption ink under the first picture.
        let ink = (6..106)
            .flat_map(|x| (title + 110..title + 128).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 != [255, 255, 255])
            .count();
        assert!(ink > 20, "{ink}");
    }
}
