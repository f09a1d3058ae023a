//! The real data `cargo xtask fetch-assets` puts in datasets/assets/: Fashion-MNIST's IDX files
//! (official sizes and a balanced label set) and the scikit-image sample photos (they decode).
//! Each test says SKIPPED and passes when the assets are absent (a fresh clone, CI).

use std::path::PathBuf;

use clip_data::fashion_mnist::{captions_for, read_idx, CLASSES};
use clip_data::imaging::decode_rgb;

fn assets(sub: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/assets").join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: {} not found (run `cargo xtask fetch-assets`)", dir.display());
        None
    }
}

#[test]
fn fashion_mnist_has_the_official_split_and_balanced_labels() {
    let Some(dir) = assets("fashion-mnist") else { return };
    for (prefix, n) in [("train", 60_000), ("t10k", 10_000)] {
        let images = read_idx(&dir.join(format!("{prefix}-images-idx3-ubyte.gz"))).unwrap();
        assert_eq!(images.dims, vec![n, 28, 28]);
        let labels = read_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz"))).unwrap();
        let mut counts = [0usize; 10];
        for &l in &labels.data {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [n / 10; 10], "{prefix}: every class has a tenth");
        // Real photographs: not blank, a spread of intensities.
        let first = &images.data[..784];
        assert!(first.iter().filter(|&&p| p > 0).count() > 100);
    }
    // The captions of a test image name its class.
    let captions = captions_for(9, 0, 1, 0);
    assert!(captions.iter().all(|c| c.contains("boot")), "{captions:?} for {}", CLASSES[9]);
}

#[test]
fn skimage_sample_photos_decode() {
    let Some(dir) = assets("skimage-photos") else { return };
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let img = decode_rgb(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(img.width() >= 64 && img.height() >= 64, "{}", path.display());
        decoded += 1;
    }
    assert!(decoded >= 15, "{decoded} photos");
    let chelsea = decode_rgb(&dir.join("chelsea.png")).unwrap();
    assert_eq!((chelsea.width(), chelsea.height()), (451, 300));
}
