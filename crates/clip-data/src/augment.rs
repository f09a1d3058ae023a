//! Training augmentation, drawn as a pure function of (seed, epoch, item): the same run
//! sees the same crops and flips, whatever the number of worker threads.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::color::{ColorChange, Jitter};
use crate::imaging::{CropBox, View};

/// `[data.augment]`: what training applies on top of the deterministic transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Crop a random region (area fraction in `crop_scale`, aspect in `crop_ratio`) before resizing.
    pub random_resized_crop: bool,
    pub crop_scale: [f64; 2],
    pub crop_ratio: [f64; 2],
    /// Mirror half of the images left-right.
    pub horizontal_flip: bool,
    /// When an image is mirrored, swap the words "left" and "right" in its caption so the pair
    /// still agrees.
    pub flip_swaps_left_right: bool,
    /// ColorJitter strengths: brightness, contrast, saturation (factors drawn in
    /// `[max(0, 1 - s), 1 + s]`) and hue (a shift in `[-h, h]` turns, h ≤ 0.5); all 0: off.
    /// Hue shifts and grayscale change what a caption's colour words describe: keep them off
    /// for datasets whose captions name colours.
    pub color_jitter: [f64; 4],
    /// The share of images jittered (open_clip's `color_jitter_prob`).
    pub color_jitter_prob: f64,
    /// The share of images turned gray (after any jitter).
    pub grayscale_prob: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            random_resized_crop: false,
            crop_scale: [0.9, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            horizontal_flip: false,
            flip_swaps_left_right: true,
            color_jitter: [0.0; 4],
            color_jitter_prob: 0.8,
            grayscale_prob: 0.0,
        }
    }
}

impl AugmentConfig {
    /// The augmentation that does nothing (evaluation).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether the same image always comes out the same (no random crop, flip or colour change).
    pub fn is_identity(&self) -> bool {
        !self.random_resized_crop
            && !self.horizontal_flip
            && !self.jitters()
            && self.grayscale_prob == 0.0
    }

    fn jitters(&self) -> bool {
        self.color_jitter.iter().any(|&s| s > 0.0) && self.color_jitter_prob > 0.0
    }

    /// Checks ranges; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let [lo, hi] = self.crop_scale;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(format!(
                "data.augment.crop_scale must satisfy 0 < min <= max <= 1, got {:?}",
                self.crop_scale
            ));
        }
        let [lo, hi] = self.crop_ratio;
        if !(lo > 0.0 && lo <= hi) {
            return Err(format!(
                "data.augment.crop_ratio must satisfy 0 < min <= max, got {:?}",
                self.crop_ratio
            ));
        }
        let [b, c, s, h] = self.color_jitter;
        if ![b, c, s].iter().all(|v| (0.0..=10.0).contains(v)) || !(0.0..=0.5).contains(&h) {
            return Err(format!(
                "data.augment.color_jitter is [brightness, contrast, saturation, hue] with each of the first three in [0, 10] and hue in [0, 0.5], got {:?}",
                self.color_jitter
            ));
        }
        for (key, p) in
            [("color_jitter_prob", self.color_jitter_prob), ("grayscale_prob", self.grayscale_prob)]
        {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("data.augment.{key} must be in [0, 1], got {p}"));
            }
        }
        Ok(())
    }

    /// The view of one sample of a `width` x `height` image.
    pub fn sample_view(
        &self,
        seed: u64,
        epoch: usize,
        item: usize,
        width: u32,
        height: u32,
    ) -> View {
        if self.is_identity() {
            return View::default();
        }
        let mut rng = item_rng(seed, epoch as u64, item as u64);
        // The flip is drawn first so that `flips` agrees without knowing the image size.
        let flip = self.horizontal_flip && rng.random_bool(0.5);
        let crop = self.random_resized_crop.then(|| {
            random_resized_crop(
                &mut rng,
                width as f64,
                height as f64,
                self.crop_scale,
                self.crop_ratio,
            )
        });
        // Colours are drawn last: runs without them see the crops and flips they always did.
        let jitter = (self.jitters() && rng.random_bool(self.color_jitter_prob))
            .then(|| Jitter::draw(&mut rng, self.color_jitter));
        let grayscale = self.grayscale_prob > 0.0 && rng.random_bool(self.grayscale_prob);
        let color = (jitter.is_some() || grayscale).then_some(ColorChange { jitter, grayscale });
        View { crop, flip, color }
    }

    /// Whether this sample is flipped (cheap: no image size needed).
    pub fn flips(&self, seed: u64, epoch: usize, item: usize) -> bool {
        self.horizontal_flip && item_rng(seed, epoch as u64, item as u64).random_bool(0.5)
    }
}

/// A generator for one item of one epoch, independent of every other item.
pub(crate) fn item_rng(seed: u64, epoch: u64, item: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5851_f42d_4c95_7f2d);
    rng.set_stream(epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ item);
    rng
}

/// torchvision's RandomResizedCrop box: 10 tries at a random area and log-uniform aspect,
/// then the largest centred box within the ratio bounds.
fn random_resized_crop(
    rng: &mut ChaCha8Rng,
    w: f64,
    h: f64,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> CropBox {
    let area = w * h;
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale[0]..=scale[1]);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw >= 1.0 && ch >= 1.0 && cw <= w && ch <= h {
            let left = rng.random_range(0.0..=(w - cw)).floor();
            let top = rng.random_range(0.0..=(h - ch)).floor();
            return CropBox { left, top, width: cw, height: ch };
        }
    }
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < ratio[0] {
        (w, (w / ratio[0]).round())
    } else if in_ratio > ratio[1] {
        ((h * ratio[1]).round(), h)
    } else {
        (w, h)
    };
    CropBox { left: ((w - cw) / 2.0).floor(), top: ((h - ch) / 2.0).floor(), width: cw, height: ch }
}

/// Swaps the whole words "left" and "right" (any case) in a caption.
pub fn swap_left_right(caption: &str) -> String {
    let mut out = String::with_capacity(caption.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let swapped = match word.to_ascii_lowercase().as_str() {
            "left" => Some("right"),
            "right" => Some("left"),
            _ => None,
        };
        match swapped {
            Some(s) if word.chars().next().is_some_and(char::is_uppercase) => {
                let mut c = s.chars();
                out.extend(c.next().map(|f| f.to_ascii_uppercase()));
                out.push_str(c.as_str());
            }
            Some(s) => out.push_str(s),
            None => out.push_str(word),
        }
        word.clear();
    };
    for ch in caption.chars() {
        if ch.is_alphanumeric() {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crop_flip() -> AugmentConfig {
        AugmentConfig {
            random_resized_crop: true,
            horizontal_flip: true,
            crop_scale: [0.3, 1.0],
            ..AugmentConfig::default()
        }
    }

    #[test]
    fn views_are_a_pure_function_of_seed_epoch_item() {
        let a = crop_flip();
        assert_eq!(a.sample_view(1, 2, 3, 500, 375), a.sample_view(1, 2, 3, 500, 375));
        let views: Vec<View> = (0..50).map(|i| a.sample_view(1, 0, i, 500, 375)).collect();
        assert!(views.windows(2).any(|w| w[0] != w[1]));
        assert_ne!(a.sample_view(1, 0, 3, 500, 375), a.sample_view(1, 1, 3, 500, 375));
        assert_ne!(a.sample_view(1, 0, 3, 500, 375), a.sample_view(2, 0, 3, 500, 375));
    }

    #[test]
    fn crops_stay_inside_the_image_and_respect_scale() {
        let a = crop_flip();
        let mut flips = 0;
        for i in 0..500 {
            let v = a.sample_view(7, 0, i, 500, 375);
            let c = v.crop.unwrap();
            assert!(
                c.left >= 0.0
                    && c.top >= 0.0
                    && c.left + c.width <= 500.0
                    && c.top + c.height <= 375.0,
                "{c:?}"
            );
            let frac = c.width * c.height / (500.0 * 375.0);
            assert!(frac > 0.25 && frac <= 1.01, "{frac}");
            flips += v.flip as usize;
        }
        assert!((200..300).contains(&flips), "{flips}");
        assert!((0..100).all(|i| a.flips(7, 0, i) == a.sample_view(7, 0, i, 500, 375).flip));
    }

    #[test]
    fn identity_draws_nothing() {
        assert_eq!(AugmentConfig::none().sample_view(1, 1, 1, 10, 10), View::default());
    }

    #[test]
    fn bad_ranges_name_the_key() {
        let a = AugmentConfig { crop_scale: [0.5, 1.5], ..AugmentConfig::default() };
        assert!(a.validate().unwrap_err().contains("crop_scale"));
        let a = AugmentConfig { color_jitter: [0.4, 0.4, 0.4, 0.7], ..AugmentConfig::default() };
        assert!(a.validate().unwrap_err().contains("color_jitter"));
        let a = AugmentConfig { grayscale_prob: 1.5, ..AugmentConfig::default() };
        assert!(a.validate().unwrap_err().contains("grayscale_prob"));
    }

    #[test]
    fn colours_are_drawn_after_the_geometry_and_change_the_pixels() {
        let geometric = crop_flip();
        let coloured = AugmentConfig {
            color_jitter: [0.4, 0.4, 0.4, 0.1],
            color_jitter_prob: 0.8,
            grayscale_prob: 0.2,
            ..crop_flip()
        };
        assert!(
            !coloured.is_identity()
                && !AugmentConfig { grayscale_prob: 0.1, ..AugmentConfig::none() }.is_identity()
        );
        let (mut jittered, mut gray) = (0, 0);
        for i in 0..400 {
            let (a, b) =
                (geometric.sample_view(5, 0, i, 64, 48), coloured.sample_view(5, 0, i, 64, 48));
            assert_eq!(
                (a.crop, a.flip, a.color),
                (b.crop, b.flip, None),
                "the same crops and flips as without colours"
            );
            assert_eq!(b, coloured.sample_view(5, 0, i, 64, 48));
            if let Some(c) = b.color {
                jittered += c.jitter.is_some() as usize;
                gray += c.grayscale as usize;
            }
        }
        assert!((290..=350).contains(&jittered) && (50..=110).contains(&gray), "{jittered} {gray}");

        // Applied: a jittered image differs from the plain one; a gray one has equal channels.
        let img = image::RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 30) as u8, 200])
        });
        let t = crate::ImageTransform {
            mean: [0.5; 3],
            std: [0.25; 3],
            ..crate::ImageTransform::seed(8)
        };
        let render = |view: &View| {
            let mut out = vec![0f32; t.numel()];
            t.apply_into(&img, view, &mut out).unwrap();
            out
        };
        let plain = render(&View::default());
        let jitter = Jitter {
            brightness: 1.2,
            contrast: 0.8,
            saturation: 1.0,
            hue: 0.05,
            order: [0, 1, 2, 3],
        };
        let jittered = render(&View {
            color: Some(ColorChange { jitter: Some(jitter), grayscale: false }),
            ..View::default()
        });
        assert!(plain.iter().zip(&jittered).any(|(a, b)| (a - b).abs() > 0.1));
        let gray = render(&View {
            color: Some(ColorChange { jitter: None, grayscale: true }),
            ..View::default()
        });
        let plane = 64;
        assert!((0..plane).all(|i| (gray[i] - gray[plane + i]).abs() < 1e-5
            && (gray[i] - gray[2 * plane + i]).abs() < 1e-5));
    }

    #[test]
    fn left_right_swap_keeps_other_words() {
        assert_eq!(
            swap_left_right("A red circle on the left, Right of a leftover square."),
            "A red circle on the right, Left of a leftover square."
        );
    }
}
