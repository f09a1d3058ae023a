//! Decoding and preprocessing against the seed's Python stack (fixtures/make_fixtures.py).

use std::path::PathBuf;

use clip_data::imaging::{decode_rgb, ImageTransform, View, IMAGENET_MEAN, IMAGENET_STD};
use clip_data::DataError;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[derive(serde::Deserialize)]
struct Expected {
    size: u32,
    chw: Vec<f32>,
}

/// cv2 `INTER_LINEAR` + albumentations `Normalize`, as the seed does; OpenCV rounds its 8-bit
/// interpolation in fixed point, so values may differ by one grey level (1/255/std).
#[test]
fn resize_and_normalize_match_cv2_albumentations() {
    let want: Expected =
        serde_json::from_str(&std::fs::read_to_string(fixture("pattern_16.json")).unwrap())
            .unwrap();
    let t = ImageTransform::seed(want.size);
    let mut got = vec![0.0; t.numel()];
    t.load_into(&fixture("pattern.png"), &View::default(), &mut got).unwrap();
    let one_level = 1.0 / 255.0 / IMAGENET_STD[2] + 1e-4;
    let mut total = 0.0;
    for (i, (g, w)) in got.iter().zip(&want.chw).enumerate() {
        assert!((g - w).abs() <= one_level, "value {i}: {g} vs {w}");
        total += (g - w).abs();
    }
    let mean_levels = total / got.len() as f32 / (1.0 / 255.0 / IMAGENET_STD[1]);
    eprintln!("mean difference from cv2: {mean_levels:.3} grey levels");
    assert!(mean_levels < 0.6, "mean difference {mean_levels} grey levels");
}

#[test]
fn grayscale_rgba_and_cmyk_come_out_rgb() {
    let gray = decode_rgb(&fixture("gray.png")).unwrap();
    assert_eq!(gray.get_pixel(3, 3).0, [94, 94, 94]);
    let gray_jpg = decode_rgb(&fixture("gray.jpg")).unwrap();
    assert!(gray_jpg.get_pixel(3, 3).0.iter().all(|&v| (92..=96).contains(&v)));
    let rgba = decode_rgb(&fixture("rgba.png")).unwrap();
    assert_eq!(rgba.get_pixel(0, 0).0, [200, 40, 90]);
    let cmyk = decode_rgb(&fixture("cmyk.jpg")).unwrap();
    let px = cmyk.get_pixel(4, 4).0;
    for (got, want) in px.iter().zip([200u8, 40, 90]) {
        assert!((*got as i32 - want as i32).abs() <= 6, "cmyk decoded to {px:?}");
    }
}

#[test]
fn exact_values_for_a_known_image() {
    let t = ImageTransform::seed(8);
    let mut out = vec![0.0; t.numel()];
    t.load_into(&fixture("rgba.png"), &View::default(), &mut out).unwrap();
    let want: Vec<f32> = (0..3)
        .map(|c| ([200.0, 40.0, 90.0][c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        .collect();
    for c in 0..3 {
        assert!(out[c * 64..(c + 1) * 64].iter().all(|v| (v - want[c]).abs() < 1e-6));
    }
}

#[test]
fn broken_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.jpg");
    let full = std::fs::read(fixture("cmyk.jpg")).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let not_image = dir.path().join("notes.jpg");
    std::fs::write(&not_image, b"this is not an image").unwrap();
    let missing = dir.path().join("missing.jpg");
    for path in [truncated, not_image, missing] {
        let err = decode_rgb(&path).unwrap_err();
        assert!(matches!(err, DataError::ImageDecode { .. } | DataError::Io { .. }));
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
}
