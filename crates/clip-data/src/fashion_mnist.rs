//! Fashion-MNIST as a caption dataset: real photographs of clothes (28×28 grayscale, 10 classes)
//! turned into the Flickr30k layout, so the whole framework can be trained and evaluated on real
//! images offline (Debian ships the data as `dataset-fashion-mnist`).
//!
//! Output under `dir`:
//! - `images/train/train-NNNNN.png`, `images/test/test-NNNNN.png` (the official split);
//! - `results.csv`: five differently worded captions per image, each naming its class;
//! - `split.json`: train = the official 60,000 training images, validation = the 10,000 test ones;
//! - `labels.csv`: `image,label,class,split` (the ground truth for zero-shot evaluation);
//! - `zero-shot-templates.txt`: prompts for zero-shot classification that no training caption uses;
//! - `fashion-mnist.json`: what was converted (sources, counts, seed).
//!
//! `fashion-mnist.json` is written first (the marker: the folder is the converter's, even when a
//! conversion is interrupted), `results.csv` last and atomically: its presence means the dataset
//! is complete. The converter writes only into a missing or empty folder or one it wrote before.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::augment::item_rng;
use crate::error::{DataError, Result};
use crate::fs::write_atomic;
use crate::split::Split;

/// The ten classes, in label order, as zero-shot labels (short, as a user would type them).
pub const CLASSES: [&str; 10] = [
    "t-shirt",
    "trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// Ways a caption may name each class (with its article), in label order.
const NAMES: [&[&str]; 10] = [
    &["a t-shirt", "a tee", "a short-sleeved top", "a t-shirt top"],
    &["trousers", "a pair of trousers", "pants", "a pair of pants"],
    &["a pullover", "a sweater", "a jumper", "a knitted pullover"],
    &["a dress", "a woman's dress", "a long dress", "a summer dress"],
    &["a coat", "a jacket", "a warm coat", "an overcoat"],
    &["a sandal", "an open sandal", "a summer sandal", "a strappy sandal"],
    &["a shirt", "a button-up shirt", "a collared shirt", "a blouse"],
    &["a sneaker", "a trainer", "a running shoe", "a sports shoe"],
    &["a bag", "a handbag", "a purse", "a tote bag"],
    &["an ankle boot", "a boot", "a short boot", "a heeled ankle boot"],
];

/// Training caption templates; `{}` is a class name from [`NAMES`].
const CAPTION_TEMPLATES: [&str; 14] = [
    "{}",
    "a grayscale picture of {}",
    "{} on a black background",
    "a small product shot of {}",
    "a low-resolution image showing {}",
    "catalogue thumbnail: {}",
    "this item is {}",
    "{}, seen from the front",
    "a clothing article: {}",
    "{} photographed for an online shop",
    "a dark image with {} in the middle",
    "fashion item, {}",
    "here we see {}",
    "{} in black and white",
];

/// Zero-shot prompts; `{}` is a label from [`CLASSES`]. None of them renders to a training caption
/// (checked by [`convert`] and by a test).
pub const ZERO_SHOT_TEMPLATES: [&str; 4] = [
    "a photo of a {}.",
    "a blurry photo of the {}.",
    "an image of a {}, a type of clothing.",
    "a picture of my {}.",
];

/// Captions written per image.
pub const CAPTIONS_PER_IMAGE: usize = 5;

/// What to convert, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FashionMnistConfig {
    /// Folder with `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
    pub source: PathBuf,
    /// Seed of the caption choice.
    pub seed: u64,
    /// Convert only the first N images of each split (0 = all); for tests and quick looks.
    pub limit: usize,
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FashionMnistSummary {
    pub train_images: usize,
    pub test_images: usize,
    pub captions: usize,
    pub seed: u64,
    pub limit: usize,
    /// Size in bytes of each source file, to notice a changed source.
    pub sources: Vec<(String, u64)>,
}

/// An IDX file's contents: dimensions and the raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an unsigned-byte IDX file (MNIST's format), gzip-compressed or not.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let err = |message: String| DataError::Config { path: path.into(), message };
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| err(format!("not a valid gzip file: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(err("not an IDX file (bad magic number)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!(
            "IDX element type 0x{:02x}; only unsigned bytes (0x08) are supported",
            bytes[2]
        )));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(err(format!("IDX header truncated ({} bytes)", bytes.len())));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    if bytes.len() - header != expected {
        return Err(err(format!(
            "IDX dims {dims:?} need {expected} bytes of data, the file has {}",
            bytes.len() - header
        )));
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

/// Finds `{stem}-ubyte.gz` or `{stem}-ubyte` in `dir`.
fn source_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}-ubyte.gz"), format!("{stem}-ubyte")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DataError::Config {
        path: dir.join(format!("{stem}-ubyte.gz")),
        message: "missing Fashion-MNIST file (run `cargo xtask fetch-assets`, or point at the folder holding the IDX files)".into(),
    })
}

/// Images and labels of one official split.
struct SplitData {
    images: Idx,
    labels: Vec<u8>,
}

fn read_split(dir: &Path, prefix: &str) -> Result<(SplitData, Vec<(String, u64)>)> {
    let img_path = source_file(dir, &format!("{prefix}-images-idx3"))?;
    let lbl_path = source_file(dir, &format!("{prefix}-labels-idx1"))?;
    let images = read_idx(&img_path)?;
    let labels = read_idx(&lbl_path)?;
    if images.dims.len() != 3 || labels.dims.len() != 1 || images.dims[0] != labels.dims[0] {
        return Err(DataError::Config {
            path: img_path,
            message: format!(
                "images {:?} and labels {:?} ({}) do not match",
                images.dims,
                labels.dims,
                lbl_path.display()
            ),
        });
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l as usize >= CLASSES.len()) {
        return Err(DataError::Config {
            path: lbl_path,
            message: format!("label {bad} is not one of the 10 classes"),
        });
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let sources = vec![
        (img_path.display().to_string(), size(&img_path)),
        (lbl_path.display().to_string(), size(&lbl_path)),
    ];
    Ok((SplitData { images, labels: labels.data }, sources))
}

/// The five captions of an image of class `label`: distinct (template, name) pairs drawn with a
/// generator seeded by (seed, split, index).
pub fn captions_for(label: usize, seed: u64, split: u64, index: usize) -> Vec<String> {
    let mut rng = item_rng(seed, split, index as u64);
    let mut chosen: Vec<(usize, usize)> = Vec::with_capacity(CAPTIONS_PER_IMAGE);
    while chosen.len() < CAPTIONS_PER_IMAGE {
        let pick =
            (rng.random_range(0..CAPTION_TEMPLATES.len()), rng.random_range(0..NAMES[label].len()));
        if !chosen.contains(&pick) {
            chosen.push(pick);
        }
    }
    chosen.into_iter().map(|(t, n)| CAPTION_TEMPLATES[t].replace("{}", NAMES[label][n])).collect()
}

/// Every caption training can produce (all templates × all names).
pub fn all_training_captions() -> Vec<String> {
    let mut out = Vec::new();
    for names in NAMES {
        for name in names {
            for t in CAPTION_TEMPLATES {
                out.push(t.replace("{}", name));
            }
        }
    }
    out
}

/// The marker of a folder the converter wrote: what was (or is being) converted.
pub const MARKER: &str = "fashion-mnist.json";

/// What [`MARKER`] in `dir` records, when `dir` is a folder the converter wrote.
pub fn marker(dir: &Path) -> Option<FashionMnistSummary> {
    std::fs::read(dir.join(MARKER)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Converts the IDX files in `config.source` into the caption dataset at `dir` (see the module
/// docs), which must be missing, empty or a dataset the converter wrote (anything else is an
/// error and nothing is written). An earlier `results.csv` is removed first, the marker
/// written, then the images, the small files after, `results.csv` last.
pub fn convert(dir: &Path, config: &FashionMnistConfig) -> Result<FashionMnistSummary> {
    let (train, mut sources) = read_split(&config.source, "train")?;
    let (test, test_sources) = read_split(&config.source, "t10k")?;
    sources.extend(test_sources);

    // The zero-shot prompts must be unseen: no rendered prompt may equal a training caption.
    let seen: std::collections::HashSet<String> =
        all_training_captions().into_iter().map(|c| c.to_lowercase()).collect();
    for t in ZERO_SHOT_TEMPLATES {
        for c in CLASSES {
            let prompt = t.replace("{}", c);
            if seen.contains(&prompt.to_lowercase()) {
                return Err(DataError::Config {
                    path: dir.into(),
                    message: format!("zero-shot prompt {prompt:?} is also a training caption"),
                });
            }
        }
    }

    crate::fs::claim_dir(
        dir,
        "the Fashion-MNIST caption dataset",
        |d| marker(d).is_some(),
        "Choose a missing or empty folder for it.",
    )?;
    let results_path = dir.join("results.csv");
    match std::fs::remove_file(&results_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DataError::io(&results_path, e))
        }
        _ => {}
    }
    let limit = |n: usize| if config.limit > 0 { n.min(config.limit) } else { n };
    let counts = [limit(train.images.dims[0]), limit(test.images.dims[0])];
    let summary = FashionMnistSummary {
        train_images: counts[0],
        test_images: counts[1],
        captions: (counts[0] + counts[1]) * CAPTIONS_PER_IMAGE,
        seed: config.seed,
        limit: config.limit,
        sources,
    };
    write_atomic(&dir.join(MARKER), &serde_json::to_vec_pretty(&summary).expect("serializes"))?;

    let mut results = String::from("image_name| comment_number| comment\n");
    let mut labels = String::from("image,label,class,split\n");
    let mut split = Split {
        seed: config.seed,
        val_size: 0.0,
        train: Vec::new(),
        val: Vec::new(),
        test: Vec::new(),
    };
    for (split_id, (name, data)) in [("train", &train), ("test", &test)].into_iter().enumerate() {
        let [n, h, w] = [counts[split_id], data.images.dims[1], data.images.dims[2]];
        let folder = dir.join("images").join(name);
        std::fs::create_dir_all(&folder).map_err(|e| DataError::io(&folder, e))?;
        for i in 0..n {
            let file = format!("{name}-{i:05}.png");
            let rel = format!("{name}/{file}");
            let pixels = data.images.data[i * h * w..(i + 1) * h * w].to_vec();
            let img = image::GrayImage::from_raw(w as u32, h as u32, pixels)
                .expect("pixel count matches");
            let path = folder.join(&file);
            img.save_with_format(&path, image::ImageFormat::Png).map_err(|e| DataError::File {
                path: path.clone(),
                what: "cannot write PNG".into(),
                source: e.into(),
            })?;
            let label = data.labels[i] as usize;
            for (k, caption) in
                captions_for(label, config.seed, split_id as u64, i).iter().enumerate()
            {
                results.push_str(&format!("{rel}| {k}| {caption}\n"));
            }
            labels.push_str(&format!("{file},{label},{},{name}\n", CLASSES[label]));
            if split_id == 0 { &mut split.train } else { &mut split.val }.push(rel);
        }
    }
    split.val_size = counts[1] as f64 / (counts[0] + counts[1]).max(1) as f64;
    split.save(&dir.join("split.json"))?;
    write_atomic(&dir.join("labels.csv"), labels.as_bytes())?;
    let mut templates =
        String::from("# Zero-shot prompts for Fashion-MNIST; no training caption uses them.\n");
    for t in ZERO_SHOT_TEMPLATES {
        templates.push_str(t);
        templates.push('\n');
    }
    write_atomic(&dir.join("zero-shot-templates.txt"), templates.as_bytes())?;
    write_atomic(&results_path, results.as_bytes())?;
    Ok(summary)
}

/// Converts unless a complete dataset made the same way is already at `dir`. Returns the summary
/// and whether it converted.
pub fn ensure(dir: &Path, config: &FashionMnistConfig) -> Result<(FashionMnistSummary, bool)> {
    if let Some(s) = marker(dir) {
        if s.seed == config.seed && s.limit == config.limit && dir.join("results.csv").is_file() {
            return Ok((s, false));
        }
    }
    convert(dir, config).map(|s| (s, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a small IDX pair: `n` images of 4×4 whose pixels encode (index, label).
    fn write_idx(dir: &Path, prefix: &str, n: usize, gz: bool) {
        let mut images = vec![0, 0, 8, 3];
        for d in [n as u32, 4, 4] {
            images.extend(d.to_be_bytes());
        }
        let mut labels = vec![0, 0, 8, 1];
        labels.extend((n as u32).to_be_bytes());
        for i in 0..n {
            images.extend((0..16).map(|p| (i * 16 + p) as u8));
            labels.push((i % 10) as u8);
        }
        for (stem, bytes) in
            [(format!("{prefix}-images-idx3"), images), (format!("{prefix}-labels-idx1"), labels)]
        {
            if gz {
                use std::io::Write;
                let f = std::fs::File::create(dir.join(format!("{stem}-ubyte.gz"))).unwrap();
                let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
                enc.write_all(&bytes).unwrap();
                enc.finish().unwrap();
            } else {
                std::fs::write(dir.join(format!("{stem}-ubyte")), bytes).unwrap();
            }
        }
    }

    #[test]
    fn converts_to_flickr_layout_keeping_the_official_split() {
        let src = tempfile::tempdir().unwrap();
        write_idx(src.path(), "train", 12, true);
        write_idx(src.path(), "t10k", 5, false);
        let out = tempfile::tempdir().unwrap();
        let cfg = FashionMnistConfig { source: src.path().into(), seed: 3, limit: 0 };
        let (s, converted) = ensure(out.path(), &cfg).unwrap();
        assert!(converted);
        assert_eq!((s.train_images, s.test_images, s.captions), (12, 5, 85));
        assert!(!ensure(out.path(), &cfg).unwrap().1, "second run reuses the dataset");

        // The captions parse with the Flickr30k reader, five per image, each naming its class.
        let config =
            crate::DataConfig::new(out.path().join("results.csv"), out.path().join("images"));
        let ds = crate::CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
        assert_eq!(ds.images.len(), 17);
        for img in &ds.images {
            assert_eq!(img.captions.len(), 5);
            let distinct: std::collections::HashSet<_> = img.captions.iter().collect();
            assert_eq!(distinct.len(), 5, "{:?}", img.captions);
            let index: usize = img.name[img.name.len() - 9..img.name.len() - 4].parse().unwrap();
            let label = index % 10;
            for c in &img.captions {
                assert!(
                    NAMES[label].iter().any(|n| c.contains(n)),
                    "{c:?} does not name class {label}"
                );
            }
        }
        // Pixels survive: decode one PNG back.
        let img = image::open(out.path().join("images/test/test-00003.png")).unwrap().to_luma8();
        assert_eq!(img.as_raw(), &(0..16).map(|p| (3 * 16 + p) as u8).collect::<Vec<_>>());
        // The split is the official one.
        let split = Split::load(&out.path().join("split.json")).unwrap();
        assert_eq!((split.train.len(), split.val.len()), (12, 5));
        assert!(split.val.iter().all(|n| n.starts_with("test/")));
        let labels = std::fs::read_to_string(out.path().join("labels.csv")).unwrap();
        assert!(labels.contains("test-00003.png,3,dress,test"), "{labels}");
    }

    #[test]
    fn converts_only_into_missing_empty_or_own_folders() {
        let src = tempfile::tempdir().unwrap();
        write_idx(src.path(), "train", 4, false);
        write_idx(src.path(), "t10k", 2, false);
        let cfg = FashionMnistConfig { source: src.path().into(), seed: 0, limit: 0 };
        // A folder of the user's: refused, untouched.
        let user = tempfile::tempdir().unwrap();
        std::fs::write(user.path().join("results.csv"), b"mine").unwrap();
        let err = ensure(user.path(), &cfg).unwrap_err().to_string();
        assert!(
            err.contains(&user.path().display().to_string())
                && err.contains("`results.csv`")
                && err.contains("missing or empty"),
            "{err}"
        );
        assert_eq!(std::fs::read(user.path().join("results.csv")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(user.path()).unwrap().count(), 1);
        // The source folder itself is not an output folder either.
        assert!(convert(src.path(), &cfg).is_err());
        assert!(!src.path().join("results.csv").exists() && !src.path().join(MARKER).exists());
        // Its own folder: converted again with another seed.
        let out = tempfile::tempdir().unwrap();
        assert!(ensure(out.path(), &cfg).unwrap().1);
        let cfg2 = FashionMnistConfig { seed: 1, ..cfg.clone() };
        assert!(ensure(out.path(), &cfg2).unwrap().1);
        assert_eq!(marker(out.path()).map(|m| m.seed), Some(1));
        // Interrupted after the marker (a folder where the first image goes): ours, incomplete.
        let dir = out.path().join("images/train/train-00000.png");
        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        assert!(convert(out.path(), &cfg).is_err());
        assert_eq!(marker(out.path()).map(|m| m.seed), Some(0));
        assert!(!out.path().join("results.csv").exists());
        std::fs::remove_dir(&dir).unwrap();
        assert!(ensure(out.path(), &cfg).unwrap().1);
    }

    #[test]
    fn zero_shot_prompts_are_never_training_captions() {
        let captions = all_training_captions();
        for t in ZERO_SHOT_TEMPLATES {
            for c in CLASSES {
                assert!(!captions.contains(&t.replace("{}", c)));
            }
        }
        // Every class can fill five distinct captions.
        assert!(NAMES.iter().all(|n| n.len() * CAPTION_TEMPLATES.len() >= CAPTIONS_PER_IMAGE));
    }

    #[test]
    fn bad_files_name_the_file() {
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let cfg = FashionMnistConfig { source: src.path().into(), seed: 0, limit: 0 };
        let e = convert(out.path(), &cfg).unwrap_err().to_string();
        assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("fetch-assets"), "{e}");
        write_idx(src.path(), "train", 3, false);
        write_idx(src.path(), "t10k", 3, false);
        std::fs::write(src.path().join("t10k-labels-idx1-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 9, 1])
            .unwrap();
        let e = convert(out.path(), &cfg).unwrap_err().to_string();
        assert!(e.contains("t10k-labels-idx1-ubyte") && e.contains("need 9 bytes"), "{e}");
        assert!(!out.path().join("results.csv").exists());
    }
}
