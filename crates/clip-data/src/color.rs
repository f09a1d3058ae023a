//! Colour augmentation: torchvision's `ColorJitter` (brightness, contrast, saturation, hue in a
//! random order) and `RandomGrayscale`, as open_clip's `--aug-cfg color_jitter=...
//! gray_scale_prob=...` applies them, on RGB values in [0, 1].

use rand::seq::SliceRandom;
use rand::Rng;

/// The colour change of one sample, drawn with its view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorChange {
    /// Jitter factors (1 = unchanged; hue: a shift in turns, 0 = unchanged) and the order of the
    /// four adjustments (0 brightness, 1 contrast, 2 saturation, 3 hue); None: no jitter.
    pub jitter: Option<Jitter>,
    /// Replace the colours by their luma (after the jitter).
    pub grayscale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
    pub order: [u8; 4],
}

impl Jitter {
    /// Draws factors as torchvision does: brightness, contrast and saturation uniform in
    /// `[max(0, 1 - s), 1 + s]`, the hue shift in `[-h, h]`, the order a random permutation.
    pub fn draw(rng: &mut impl Rng, strengths: [f64; 4]) -> Self {
        let factor = |rng: &mut dyn rand::RngCore, s: f64| {
            if s > 0.0 {
                rng.random_range((1.0 - s).max(0.0)..=1.0 + s) as f32
            } else {
                1.0
            }
        };
        let brightness = factor(rng, strengths[0]);
        let contrast = factor(rng, strengths[1]);
        let saturation = factor(rng, strengths[2]);
        let hue = if strengths[3] > 0.0 {
            rng.random_range(-strengths[3]..=strengths[3]) as f32
        } else {
            0.0
        };
        let mut order = [0u8, 1, 2, 3];
        order.shuffle(rng);
        Self { brightness, contrast, saturation, hue, order }
    }
}

/// ITU-R 601 luma with torchvision's rounding of the weights (`rgb_to_grayscale`).
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

impl ColorChange {
    /// Applies the change to interleaved RGB values in [0, 1], in place.
    pub fn apply(&self, rgb: &mut [f32]) {
        if let Some(j) = &self.jitter {
            for op in j.order {
                match op {
                    0 => blend_with(rgb, j.brightness, |_| [0.0; 3]),
                    1 => {
                        let pixels = (rgb.len() / 3).max(1) as f32;
                        let mean = rgb.chunks_exact(3).map(|p| luma(p[0], p[1], p[2])).sum::<f32>()
                            / pixels;
                        blend_with(rgb, j.contrast, |_| [mean; 3]);
                    }
                    2 => blend_with(rgb, j.saturation, |p| [luma(p[0], p[1], p[2]); 3]),
                    _ => shift_hue(rgb, j.hue),
                }
            }
        }
        if self.grayscale {
            for p in rgb.chunks_exact_mut(3) {
                let y = luma(p[0], p[1], p[2]);
                p.fill(y);
            }
        }
    }
}

/// `factor · pixel + (1 − factor) · other(pixel)`, clamped to [0, 1] (torchvision's `_blend`).
fn blend_with(rgb: &mut [f32], factor: f32, other: impl Fn(&[f32]) -> [f32; 3]) {
    if factor == 1.0 {
        return;
    }
    for p in rgb.chunks_exact_mut(3) {
        let o = other(p);
        for c in 0..3 {
            p[c] = (factor * p[c] + (1.0 - factor) * o[c]).clamp(0.0, 1.0);
        }
    }
}

/// Rotates each pixel's hue by `shift` turns (through HSV, as torchvision's `adjust_hue`).
fn shift_hue(rgb: &mut [f32], shift: f32) {
    if shift == 0.0 {
        return;
    }
    for p in rgb.chunks_exact_mut(3) {
        let (r, g, b) = (p[0], p[1], p[2]);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let chroma = max - min;
        if chroma == 0.0 {
            continue; // grey: no hue to turn
        }
        let h = if max == r {
            ((g - b) / chroma).rem_euclid(6.0)
        } else if max == g {
            (b - r) / chroma + 2.0
        } else {
            (r - g) / chroma + 4.0
        } / 6.0;
        let h = (h + shift).rem_euclid(1.0) * 6.0;
        // Back from (h, chroma, max): the sector and the second-largest component.
        let x = chroma * (1.0 - ((h % 2.0) - 1.0).abs());
        let (r1, g1, b1) = match h as u32 {
            0 => (chroma, x, 0.0),
            1 => (x, chroma, 0.0),
            2 => (0.0, chroma, x),
            3 => (0.0, x, chroma),
            4 => (x, 0.0, chroma),
            _ => (chroma, 0.0, x),
        };
        let m = max - chroma;
        p[0] = r1 + m;
        p[1] = g1 + m;
        p[2] = b1 + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(brightness: f32, contrast: f32, saturation: f32, hue: f32) -> ColorChange {
        ColorChange {
            jitter: Some(Jitter { brightness, contrast, saturation, hue, order: [0, 1, 2, 3] }),
            grayscale: false,
        }
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn each_adjustment_does_what_torchvision_does() {
        let pixels = [0.2f32, 0.4, 0.6, 1.0, 0.0, 0.0];
        let mut x = pixels;
        change(1.0, 1.0, 1.0, 0.0).apply(&mut x);
        assert_eq!(x, pixels, "factors of 1 and no hue shift change nothing");

        let mut x = pixels;
        change(1.5, 1.0, 1.0, 0.0).apply(&mut x);
        assert!(close(&x, &[0.3, 0.6, 0.9, 1.0, 0.0, 0.0]), "{x:?}"); // clamped at 1

        // Contrast 0: every channel becomes the mean luma of the image.
        let mut x = pixels;
        change(1.0, 0.0, 1.0, 0.0).apply(&mut x);
        let mean = (luma(0.2, 0.4, 0.6) + luma(1.0, 0.0, 0.0)) / 2.0;
        assert!(x.iter().all(|v| (v - mean).abs() < 1e-6), "{x:?}");

        // Saturation 0: each pixel becomes its own luma.
        let mut x = pixels;
        change(1.0, 1.0, 0.0, 0.0).apply(&mut x);
        let (a, b) = (luma(0.2, 0.4, 0.6), luma(1.0, 0.0, 0.0));
        assert!(close(&x, &[a, a, a, b, b, b]), "{x:?}");

        // Hue: a third of a turn takes red to green and green to blue; a full turn is nothing.
        let mut x = [1.0f32, 0.0, 0.0, 0.0, 0.8, 0.0, 0.5, 0.5, 0.5];
        change(1.0, 1.0, 1.0, 1.0 / 3.0).apply(&mut x);
        assert!(close(&x, &[0.0, 1.0, 0.0, 0.0, 0.0, 0.8, 0.5, 0.5, 0.5]), "{x:?}");
        let mut x = pixels;
        change(1.0, 1.0, 1.0, 0.25).apply(&mut x);
        change(1.0, 1.0, 1.0, -0.25).apply(&mut x);
        assert!(close(&x, &pixels), "a shift and its inverse: {x:?}");

        let mut x = pixels;
        ColorChange { jitter: None, grayscale: true }.apply(&mut x);
        assert!(close(&x, &[a, a, a, b, b, b]), "{x:?}");
    }

    #[test]
    fn matches_torchvision_on_reference_pixels() {
        // tests/fixtures/color_reference.py printed these (torchvision 0.29.2).
        let pixels = [0.2f32, 0.4, 0.6, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.9, 0.3, 0.1];
        let cases: [(ColorChange, [f32; 12]); 6] = [
            (
                change(1.3, 1.0, 1.0, 0.0),
                [0.26, 0.52, 0.78, 1.0, 0.0, 0.0, 0.65, 0.65, 0.65, 1.0, 0.39, 0.13],
            ),
            (
                change(1.0, 0.6, 1.0, 0.0),
                [
                    0.281834, 0.401834, 0.521834, 0.761834, 0.161834, 0.161834, 0.461834, 0.461834,
                    0.461834, 0.701834, 0.341834, 0.221834,
                ],
            ),
            (
                change(1.0, 1.0, 1.7, 0.0),
                [
                    0.085914, 0.425914, 0.765914, 1.0, 0.0, 0.0, 0.500035, 0.500035, 0.500035, 1.0,
                    0.190443, 0.0,
                ],
            ),
            (
                change(1.0, 1.0, 1.0, 0.15),
                [0.36, 0.2, 0.6, 1.0, 0.9, 0.0, 0.5, 0.5, 0.5, 0.78, 0.9, 0.1],
            ),
            (
                change(1.0, 1.0, 1.0, -0.4),
                [0.56, 0.6, 0.2, 0.0, 0.4, 1.0, 0.5, 0.5, 0.5, 0.1, 0.22, 0.9],
            ),
            (
                ColorChange { jitter: None, grayscale: true },
                [
                    0.36298, 0.36298, 0.36298, 0.2989, 0.2989, 0.2989, 0.49995, 0.49995, 0.49995,
                    0.45651, 0.45651, 0.45651,
                ],
            ),
        ];
        for (c, want) in cases {
            let mut x = pixels;
            c.apply(&mut x);
            assert!(close(&x, &want), "{c:?}: {x:?} vs torchvision {want:?}");
        }
    }

    #[test]
    fn drawn_factors_stay_in_their_ranges_and_orders_vary() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut orders = std::collections::HashSet::new();
        for _ in 0..200 {
            let j = Jitter::draw(&mut rng, [0.4, 0.4, 1.5, 0.1]);
            assert!(
                (0.6..=1.4).contains(&j.brightness) && (0.6..=1.4).contains(&j.contrast),
                "{j:?}"
            );
            assert!((0.0..=2.5).contains(&j.saturation) && j.hue.abs() <= 0.1, "{j:?}");
            let mut sorted = j.order;
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3]);
            orders.insert(j.order);
        }
        assert!(orders.len() > 10, "{}", orders.len());
        assert_eq!(Jitter::draw(&mut rng, [0.0; 4]).brightness, 1.0);
    }
}
