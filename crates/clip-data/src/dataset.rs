//! Image–caption datasets: images grouped with all their captions, and the flat
//! (image, caption) pair view that training iterates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::captions::{CaptionFormat, CaptionRecord, ColumnSpec, ParseReport, PredefinedSide};
use crate::error::{DataError, Result};
use crate::formats::read_captions;

pub use crate::captions::ImageCaptions;

/// Where a dataset is and how its captions file reads: what [`CaptionDataset::load`] needs
/// (`DataConfig::dataset_config` builds it from `[data]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetConfig {
    /// Layout of the captions file.
    pub format: CaptionFormat,
    /// The captions file (or, for WebDataset, the shards' folder or one `.tar`).
    pub captions: PathBuf,
    /// The directory that holds the images named in the captions file.
    pub images: PathBuf,
    /// Column names and separator of the `csv` and `jsonl` formats.
    pub columns: ColumnSpec,
    /// Drop images that are named but absent instead of failing.
    pub skip_missing: bool,
}

/// What loading a dataset found besides its images: damaged rows and missing images.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub caption_rows: usize,
    pub parse: ParseReport,
    /// Images named in the captions file but absent on disk (skipped under `skip_missing`).
    pub missing_images: Vec<PathBuf>,
}

/// A whole image–caption dataset, images in captions-file order.
#[derive(Debug, Clone)]
pub struct CaptionDataset {
    pub images: Vec<ImageCaptions>,
    pub report: LoadReport,
    /// The split the captions file defines (Karpathy's), for the images found; empty otherwise.
    pub predefined_split: Vec<(String, PredefinedSide)>,
}

impl CaptionDataset {
    /// Loads the dataset `config` names: parses the captions, resolves image paths, and checks
    /// that every image exists (or skips missing ones under `skip_missing`). It only reads: a
    /// config's synthetic dataset is generated beforehand (`DataConfig::ensure_synthetic`).
    pub fn load(config: &DatasetConfig) -> Result<Self> {
        if !config.images.is_dir() {
            return Err(DataError::Config {
                path: config.images.clone(),
                message: "`data.images` names no directory".into(),
            });
        }
        let parsed = read_captions(&config.captions, config.format, &config.columns)?;
        let mut dataset = Self::from_records(
            &parsed.path,
            parsed.records,
            parsed.report,
            &config.images,
            config.skip_missing,
        )?;
        let found: std::collections::HashSet<&str> =
            dataset.images.iter().map(|i| i.name.as_str()).collect();
        let predefined =
            parsed.splits.into_iter().filter(|(name, _)| found.contains(name.as_str())).collect();
        dataset.predefined_split = predefined;
        Ok(dataset)
    }

    /// Groups caption records by image and resolves their files under `images_dir`.
    pub fn from_records(
        captions_path: &Path,
        records: Vec<CaptionRecord>,
        parse: ParseReport,
        images_dir: &Path,
        skip_missing: bool,
    ) -> Result<Self> {
        let caption_rows = records.len();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut images: Vec<ImageCaptions> = Vec::new();
        let mut first_line: Vec<usize> = Vec::new();
        for rec in records {
            let i = *index.entry(rec.image.clone()).or_insert_with(|| {
                images.push(ImageCaptions {
                    path: images_dir.join(&rec.image),
                    name: rec.image.clone(),
                    captions: Vec::new(),
                });
                first_line.push(rec.line);
                images.len() - 1
            });
            images[i].captions.push(rec.caption);
        }

        let missing: Vec<usize> =
            (0..images.len()).filter(|&i| !crate::shards::exists(&images[i].path)).collect();
        if !missing.is_empty() && !skip_missing {
            return Err(DataError::MissingImages {
                captions: captions_path.into(),
                images_dir: images_dir.into(),
                count: missing.len(),
                first: images[missing[0]].path.clone(),
                line: first_line[missing[0]],
            });
        }
        let missing_images = missing.iter().map(|&i| images[i].path.clone()).collect();
        let mut keep = vec![true; images.len()];
        for i in missing {
            keep[i] = false;
        }
        let mut k = keep.into_iter();
        images.retain(|_| k.next().unwrap_or(false));
        if images.is_empty() {
            return Err(DataError::Config {
                path: images_dir.into(),
                message: format!(
                    "none of the images named in {} were found here",
                    captions_path.display()
                ),
            });
        }
        Ok(Self {
            images,
            report: LoadReport { caption_rows, parse, missing_images },
            predefined_split: Vec::new(),
        })
    }

    pub fn num_captions(&self) -> usize {
        self.images.iter().map(|i| i.captions.len()).sum()
    }

    /// The images whose names are listed, in the listed order; unknown names are an error.
    pub fn select(&self, names: &[String], split_path: &Path) -> Result<Vec<ImageCaptions>> {
        let by_name: HashMap<&str, &ImageCaptions> =
            self.images.iter().map(|i| (i.name.as_str(), i)).collect();
        names
            .iter()
            .map(|n| {
                by_name.get(n.as_str()).map(|i| (*i).clone()).ok_or_else(|| DataError::Split {
                    path: split_path.into(),
                    message: format!("image {n:?} is in the split but not in the dataset"),
                })
            })
            .collect()
    }
}

/// One training example: an image and one of its captions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionPair {
    /// Index of the image within its [`PairDataset`] (shared by all its captions).
    pub image_index: usize,
    pub image_path: PathBuf,
    pub caption: String,
}

/// Which captions an epoch visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaptionSampling {
    /// Every caption once (an image with five captions is seen five times), as the seed does.
    #[default]
    All,
    /// Every image once, with one of its captions drawn per epoch (as open_clip does for
    /// multi-caption data): epochs are shorter and every image weighs the same.
    OnePerImage,
}

/// The flat pair view of a set of images: one item per caption, as the seed iterates (or one per
/// image, see [`CaptionSampling`]).
#[derive(Debug, Clone)]
pub struct PairDataset {
    images: Arc<Vec<ImageCaptions>>,
    pairs: Vec<(u32, u32)>,
    sampling: CaptionSampling,
    seed: u64,
}

impl PairDataset {
    pub fn new(images: Vec<ImageCaptions>) -> Self {
        let pairs = images
            .iter()
            .enumerate()
            .flat_map(|(i, img)| (0..img.captions.len()).map(move |c| (i as u32, c as u32)))
            .collect();
        Self { images: Arc::new(images), pairs, sampling: CaptionSampling::All, seed: 0 }
    }

    /// The same images visited as `sampling` says; `seed` draws the caption of each (image, epoch).
    pub fn with_sampling(mut self, sampling: CaptionSampling, seed: u64) -> Self {
        self.sampling = sampling;
        self.seed = seed;
        self
    }

    pub fn sampling(&self) -> CaptionSampling {
        self.sampling
    }

    pub fn images(&self) -> &[ImageCaptions] {
        &self.images
    }

    /// Items per epoch.
    pub fn len(&self) -> usize {
        match self.sampling {
            CaptionSampling::All => self.pairs.len(),
            CaptionSampling::OnePerImage => self.images.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `index` of epoch 0.
    pub fn pair(&self, index: usize) -> Option<CaptionPair> {
        self.pair_in_epoch(index, 0)
    }

    /// Item `index` of `epoch` (only one-per-image sampling depends on the epoch).
    pub fn pair_in_epoch(&self, index: usize, epoch: usize) -> Option<CaptionPair> {
        let (i, c) = match self.sampling {
            CaptionSampling::All => *self.pairs.get(index)?,
            CaptionSampling::OnePerImage => {
                let n = self.images.get(index)?.captions.len().max(1);
                let mut rng =
                    crate::augment::item_rng(self.seed ^ 0xc0ffee, epoch as u64, index as u64);
                (index as u32, rand::Rng::random_range(&mut rng, 0..n) as u32)
            }
        };
        let img = &self.images[i as usize];
        Some(CaptionPair {
            image_index: i as usize,
            image_path: img.path.clone(),
            caption: img.captions[c as usize].clone(),
        })
    }
}

impl burn::data::dataset::Dataset<CaptionPair> for PairDataset {
    fn get(&self, index: usize) -> Option<CaptionPair> {
        self.pair(index)
    }

    fn len(&self) -> usize {
        PairDataset::len(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: usize, image: &str, caption: &str) -> CaptionRecord {
        CaptionRecord { line, image: image.into(), caption: caption.into() }
    }

    #[test]
    fn groups_captions_by_image_and_reports_missing_images() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"x").unwrap();
        let records =
            vec![rec(2, "a.jpg", "one"), rec(3, "b.jpg", "two"), rec(4, "a.jpg", "three")];
        let err = CaptionDataset::from_records(
            Path::new("c.csv"),
            records.clone(),
            ParseReport::default(),
            dir.path(),
            false,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("1 image(s)") && msg.contains("b.jpg") && msg.contains("line 3"),
            "{msg}"
        );

        let ds = CaptionDataset::from_records(
            Path::new("c.csv"),
            records,
            ParseReport::default(),
            dir.path(),
            true,
        )
        .unwrap();
        assert_eq!(ds.images.len(), 1);
        assert_eq!(ds.images[0].captions, vec!["one", "three"]);
        assert_eq!(ds.report.missing_images, vec![dir.path().join("b.jpg")]);

        let pairs = PairDataset::new(ds.images.clone());
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs.pair(1).unwrap().caption, "three");
        assert_eq!(pairs.pair(1).unwrap().image_index, 0);
        assert!(pairs.pair(2).is_none());
    }

    #[test]
    fn one_caption_per_image_draws_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.jpg", "b.jpg"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let records: Vec<_> = (0..10)
            .map(|k| rec(k + 2, if k < 5 { "a.jpg" } else { "b.jpg" }, &format!("c{k}")))
            .collect();
        let ds = CaptionDataset::from_records(
            Path::new("c.csv"),
            records,
            ParseReport::default(),
            dir.path(),
            false,
        )
        .unwrap();
        let pairs =
            PairDataset::new(ds.images.clone()).with_sampling(CaptionSampling::OnePerImage, 7);
        assert_eq!(pairs.len(), 2);
        assert!(pairs.pair_in_epoch(2, 0).is_none());
        let mut seen = std::collections::HashSet::new();
        for epoch in 0..40 {
            let p = pairs.pair_in_epoch(1, epoch).unwrap();
            assert_eq!(p.image_index, 1);
            assert!(ds.images[1].captions.contains(&p.caption));
            assert_eq!(
                p,
                pairs.pair_in_epoch(1, epoch).unwrap(),
                "a pure function of (seed, epoch, item)"
            );
            seen.insert(p.caption);
        }
        assert_eq!(seen.len(), 5, "every caption gets drawn over 40 epochs");
    }
}
