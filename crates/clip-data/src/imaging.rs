//! Image preprocessing: decode (any colour model to RGB), crop, resize, flip and normalize into
//! channel-first floats, as the seed's `cv2.imread` + albumentations `Resize` + `Normalize` do.

use std::cell::RefCell;
use std::path::Path;

use fast_image_resize::images::{Image as FirImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::color::ColorChange;
use crate::error::{DataError, Result};

/// ImageNet channel means (albumentations' `Normalize` defaults, which the seed uses).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How a picture of any aspect ratio becomes a square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Stretch to the square (albumentations `Resize(224, 224)`, the seed's choice).
    #[default]
    Squash,
    /// Take the centred square of the shorter side, then resize (OpenAI CLIP's eval transform).
    CenterCrop,
}

/// The resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeFilter {
    /// Bilinear interpolation without antialiasing: matches OpenCV's `INTER_LINEAR` (the seed).
    #[default]
    Bilinear,
    /// Bilinear convolution that widens its kernel when shrinking (like Pillow): fewer aliasing artefacts.
    Antialias,
}

/// A crop rectangle in source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// One sample's augmentation, drawn before the image is touched: where to crop, whether to
/// mirror, how to change its colours.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct View {
    pub crop: Option<CropBox>,
    pub flip: bool,
    pub color: Option<ColorChange>,
}

/// The deterministic part of image preprocessing, shared by training and evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTransform {
    pub size: u32,
    pub mode: ResizeMode,
    pub filter: ResizeFilter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageTransform {
    /// The seed's preprocessing at a given square size: squash, bilinear, ImageNet statistics.
    pub fn seed(size: u32) -> Self {
        Self {
            size,
            mode: ResizeMode::Squash,
            filter: ResizeFilter::Bilinear,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Number of floats one preprocessed image takes (`3 * size * size`).
    pub fn numel(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }

    /// Decodes, transforms and normalizes one image file into `out` (`[3, size, size]`, CHW).
    pub fn load_into(&self, path: &Path, view: &View, out: &mut [f32]) -> Result<()> {
        let img = decode_rgb(path)?;
        self.apply_into(&img, view, out)
            .map_err(|message| DataError::ImageResize { path: path.into(), message })
    }

    /// Transforms a decoded image into `out` (`[3, size, size]`, CHW).
    pub fn apply_into(
        &self,
        img: &RgbImage,
        view: &View,
        out: &mut [f32],
    ) -> std::result::Result<(), String> {
        assert_eq!(out.len(), self.numel(), "output buffer size");
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err("image has no pixels".into());
        }
        let crop = view.crop.unwrap_or_else(|| match self.mode {
            ResizeMode::Squash => {
                CropBox { left: 0.0, top: 0.0, width: w as f64, height: h as f64 }
            }
            ResizeMode::CenterCrop => {
                let side = w.min(h) as f64;
                CropBox {
                    left: ((w as f64 - side) / 2.0).floor(),
                    top: ((h as f64 - side) / 2.0).floor(),
                    width: side,
                    height: side,
                }
            }
        });
        let s = self.size;
        let full = crop.left == 0.0
            && crop.top == 0.0
            && crop.width == w as f64
            && crop.height == h as f64;
        let resized;
        let pixels: &[u8] = if full && w == s && h == s {
            img.as_raw()
        } else {
            let src =
                ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).map_err(|e| e.to_string())?;
            let mut dst = FirImage::new(s, s, PixelType::U8x3);
            let alg = match self.filter {
                ResizeFilter::Bilinear => ResizeAlg::Interpolation(FilterType::Bilinear),
                ResizeFilter::Antialias => ResizeAlg::Convolution(FilterType::Bilinear),
            };
            let options = ResizeOptions::new().resize_alg(alg).crop(
                crop.left,
                crop.top,
                crop.width,
                crop.height,
            );
            RESIZER
                .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
                .map_err(|e| e.to_string())?;
            resized = dst.into_vec();
            &resized
        };
        match &view.color {
            None => normalize_chw(pixels, 255.0, s as usize, view.flip, &self.mean, &self.std, out),
            Some(change) => {
                let mut unit: Vec<f32> = pixels.iter().map(|&v| v as f32 / 255.0).collect();
                change.apply(&mut unit);
                normalize_chw(&unit, 1.0, s as usize, view.flip, &self.mean, &self.std, out);
            }
        }
        Ok(())
    }
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Writes `(pixel / white - mean) / std` channel-first (`white`: 255 for bytes, 1 for values
/// already in [0, 1]), mirroring columns when `flip` is set.
fn normalize_chw<T: Copy + Into<f32>>(
    rgb: &[T],
    white: f32,
    size: usize,
    flip: bool,
    mean: &[f32; 3],
    std: &[f32; 3],
    out: &mut [f32],
) {
    let plane = size * size;
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (white * std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| mean[c] / std[c]);
    for y in 0..size {
        for x in 0..size {
            let src = 3 * (y * size + if flip { size - 1 - x } else { x });
            let dst = y * size + x;
            for c in 0..3 {
                out[c * plane + dst] = rgb[src + c].into() * scale[c] - shift[c];
            }
        }
    }
}

/// Decodes a JPEG or PNG (grayscale, RGBA, CMYK, 16-bit...) into 8-bit RGB; alpha is dropped.
/// `path` is a file or a member of a WebDataset shard (`shards/00000.tar/000123.jpg`).
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    decode_rgb_bytes(crate::shards::read_image_bytes(path)?, path)
}

/// [`decode_rgb`] of an encoded image already in memory (an upload, say); `path` names it in
/// errors.
pub fn decode_rgb_bytes(bytes: Vec<u8>, path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let img =
        reader.decode().map_err(|source| DataError::ImageDecode { path: path.into(), source })?;
    Ok(img.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_exact_pixel_values_without_resize() {
        let img = RgbImage::from_raw(2, 2, vec![0, 128, 255, 10, 20, 30, 255, 255, 255, 1, 2, 3])
            .unwrap();
        let t = ImageTransform::seed(2);
        let mut out = vec![0.0; t.numel()];
        t.apply_into(&img, &View::default(), &mut out).unwrap();
        let expect = |v: f32, c: usize| (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        // Red plane, row-major, then green, then blue.
        let want = [
            expect(0.0, 0),
            expect(10.0, 0),
            expect(255.0, 0),
            expect(1.0, 0),
            expect(128.0, 1),
            expect(20.0, 1),
            expect(255.0, 1),
            expect(2.0, 1),
            expect(255.0, 2),
            expect(30.0, 2),
            expect(255.0, 2),
            expect(3.0, 2),
        ];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Pixel (0,0) red = 0 → -0.485/0.229.
        assert!((out[0] - (-2.117_904)).abs() < 1e-5);
    }

    #[test]
    fn flip_mirrors_columns() {
        let img = RgbImage::from_raw(2, 1, vec![0, 0, 0, 255, 255, 255]).unwrap();
        let mut t = ImageTransform::seed(2);
        t.mode = ResizeMode::Squash;
        let mut plain = vec![0.0; t.numel()];
        let mut flipped = vec![0.0; t.numel()];
        // Height 1 → 2 upsamples rows; columns keep their order.
        t.apply_into(&img, &View::default(), &mut plain).unwrap();
        t.apply_into(&img, &View { flip: true, ..View::default() }, &mut flipped).unwrap();
        assert!(plain[0] < plain[1]);
        assert_eq!(plain[0], flipped[1]);
        assert_eq!(plain[1], flipped[0]);
    }

    #[test]
    fn center_crop_takes_the_middle_square() {
        // 6x2 image: columns 2..4 are white, the rest black.
        let mut img = RgbImage::new(6, 2);
        for y in 0..2 {
            for x in 2..4 {
                img.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
        }
        let t = ImageTransform { mode: ResizeMode::CenterCrop, ..ImageTransform::seed(2) };
        let mut out = vec![0.0; t.numel()];
        t.apply_into(&img, &View::default(), &mut out).unwrap();
        let white = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
        assert!(out[..4].iter().all(|v| (v - white).abs() < 1e-5), "{out:?}");
    }
}
