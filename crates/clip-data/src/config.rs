//! `[data]`: where the captions and images are and how they become batches. Defaults are the
//! seed notebook's settings.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::batch::{ExamplePipeline, PipelineConfig};
use crate::captions::{CaptionFormat, ColumnSpec};
use crate::dataset::{CaptionSampling, DatasetConfig};
use crate::error::{DataError, Result};
use crate::imaging::{ImageTransform, ResizeFilter, ResizeMode, IMAGENET_MEAN, IMAGENET_STD};
use crate::loader::LoaderConfig;
use crate::split::{SplitConfig, SplitMethod};
use crate::synth::SynthConfig;
use crate::tokenizer::{CaptionTokenizer, TokenizerConfig, BERT_BASE_UNCASED};

/// What to do when `[data.synthetic]` points at a folder the generator did not write.
pub const SYNTHETIC_HINT: &str = "`[data.synthetic]` in the config generates the synthetic shapes dataset where `data.captions` \
     points; if this folder holds your own dataset, remove the `[data.synthetic]` section from the config (or add \
     `--set data.synthetic=none`). To generate the shapes, point `data.captions` at `DIR/results.csv` in a new or empty folder DIR.";

/// The data section of an experiment config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Layout of the captions file.
    #[serde(default = "default_format")]
    pub format: CaptionFormat,
    /// The captions file (relative paths are relative to the config file's directory).
    pub captions: PathBuf,
    /// The directory that holds the images named in the captions file.
    pub images: PathBuf,
    /// Column names for the `csv` and `jsonl` formats.
    #[serde(default = "default_image_column")]
    pub image_column: String,
    #[serde(default = "default_caption_column")]
    pub caption_column: String,
    /// Field separator for the `csv` format (one character).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Drop images that are named but absent instead of failing.
    #[serde(default)]
    pub skip_missing: bool,
    /// During training, leave an image that cannot be read or decoded out of its batch and
    /// report it, instead of ending the run (evaluation always fails on one, naming it).
    #[serde(default = "default_true")]
    pub skip_unreadable: bool,
    /// Fraction of images held out for validation.
    #[serde(default = "default_val_size")]
    pub val_size: f64,
    /// Seed of the split, the shuffling and the augmentation.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// How the split is drawn: `random` (a seeded shuffle, independent of file order) or
    /// `numpy-legacy` (the seed notebook's `np.random.seed(seed)` + `np.random.choice`, bit for
    /// bit, over the images in captions-file order). A split the captions file defines
    /// (Karpathy's) or an existing `split_file` takes precedence over both.
    #[serde(default)]
    pub split: SplitMethod,
    /// A saved split to reuse instead of computing one.
    #[serde(default)]
    pub split_file: Option<PathBuf>,
    /// Training epochs visit every caption (`all`, the seed's) or every image once with a
    /// caption drawn per epoch (`one-per-image`). Evaluation always scores every caption.
    #[serde(default)]
    pub caption_sampling: CaptionSampling,
    /// Side of the square images fed to the image encoder.
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    #[serde(default)]
    pub resize: ResizeMode,
    #[serde(default)]
    pub resize_filter: ResizeFilter,
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    /// Training-time augmentation; evaluation never augments.
    #[serde(default)]
    pub augment: AugmentConfig,
    /// `bert-base-uncased` (embedded), or a path to a `vocab.txt` or an HF `tokenizer.json`.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// Longest caption in tokens, `[CLS]` and `[SEP]` included.
    #[serde(default = "default_text_max_length")]
    pub text_max_length: usize,
    /// Pad each batch's captions to a multiple of this many tokens (1: to the longest caption).
    /// 8 or 16 on a GPU: fewer distinct shapes to compile kernels for, tensor-core friendly.
    #[serde(default = "default_pad_to_multiple_of")]
    pub pad_to_multiple_of: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Threads that decode and collate batches.
    #[serde(default = "default_num_workers")]
    pub num_workers: usize,
    /// Batches decoded ahead of the consumer; with the workers' own, this bounds loader memory.
    #[serde(default = "default_prefetch")]
    pub prefetch_batches: usize,
    /// Marks the dataset as the generated synthetic one: [`DataConfig::ensure_synthetic`] (which
    /// training and the `clip data` commands call before loading) writes it under the captions
    /// file's directory when missing, so the config works on a fresh machine. Only into a
    /// missing or empty folder or one it generated (`synth.json`): a folder of the user's is an
    /// error, never overwritten. `--set data.synthetic=none` removes it.
    #[serde(default)]
    pub synthetic: Option<SynthConfig>,
}

fn default_format() -> CaptionFormat {
    CaptionFormat::Flickr30k
}
fn default_image_column() -> String {
    "image".into()
}
fn default_caption_column() -> String {
    "caption".into()
}
fn default_delimiter() -> String {
    ",".into()
}
fn default_true() -> bool {
    true
}
fn default_val_size() -> f64 {
    0.2
}
fn default_seed() -> u64 {
    42
}
fn default_image_size() -> u32 {
    224
}
fn default_mean() -> [f32; 3] {
    IMAGENET_MEAN
}
fn default_std() -> [f32; 3] {
    IMAGENET_STD
}
fn default_tokenizer() -> String {
    BERT_BASE_UNCASED.into()
}
fn default_text_max_length() -> usize {
    200
}
fn default_pad_to_multiple_of() -> usize {
    1
}
fn default_batch_size() -> usize {
    32
}
fn default_num_workers() -> usize {
    4
}
fn default_prefetch() -> usize {
    2
}

impl DataConfig {
    /// A config with the seed's defaults for the given files.
    pub fn new(captions: impl Into<PathBuf>, images: impl Into<PathBuf>) -> Self {
        let table = format!(
            "captions = {:?}\nimages = {:?}\n",
            captions.into().display().to_string(),
            images.into().display().to_string()
        );
        toml::from_str(&table).expect("defaults deserialize")
    }

    /// Makes relative paths relative to `base` (the directory of the config file).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = join_clean(base, p);
            }
        };
        fix(&mut self.captions);
        fix(&mut self.images);
        if let Some(s) = self.split_file.as_mut() {
            fix(s);
        }
        if self.tokenizer != BERT_BASE_UNCASED && Path::new(&self.tokenizer).is_relative() {
            self.tokenizer = join_clean(base, Path::new(&self.tokenizer)).display().to_string();
        }
    }

    /// Checks values; the error names the key and the config file.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let bad = |message: String| Err(DataError::Config { path: file.into(), message });
        if !(0.0..1.0).contains(&self.val_size) {
            return bad(format!("data.val_size must be in [0, 1), got {}", self.val_size));
        }
        if self.split == SplitMethod::NumpyLegacy && self.seed > u32::MAX as u64 {
            return bad(format!(
                "data.seed must be between 0 and 2**32 - 1 with data.split = \"numpy-legacy\" (NumPy's legacy seeding refuses larger seeds), got {}",
                self.seed
            ));
        }
        if self.image_size < 8 {
            return bad(format!("data.image_size must be at least 8, got {}", self.image_size));
        }
        if self.text_max_length < 2 {
            return bad(format!(
                "data.text_max_length must be at least 2, got {}",
                self.text_max_length
            ));
        }
        if self.pad_to_multiple_of == 0 {
            return bad(
                "data.pad_to_multiple_of must be at least 1 (1 pads to the longest caption)".into(),
            );
        }
        if self.batch_size == 0 {
            return bad("data.batch_size must be at least 1".into());
        }
        if self.prefetch_batches == 0 {
            return bad("data.prefetch_batches must be at least 1".into());
        }
        if self.std.iter().any(|s| !(*s > 0.0)) {
            return bad(format!("data.std must be positive, got {:?}", self.std));
        }
        if let Err(m) = self.augment.validate() {
            return bad(m);
        }
        if self.synthetic.is_some() {
            let dir = self.captions.parent().unwrap_or(Path::new("."));
            if self.format != CaptionFormat::Flickr30k
                || self.captions.file_name() != Some("results.csv".as_ref())
                || self.images != dir.join("images")
            {
                return bad(format!(
                    "data.synthetic needs format = \"flickr30k\", captions = \"DIR/results.csv\" and images = \"DIR/images\"; got captions = {:?}, images = {:?} \
                     (for a dataset of your own, remove the [data.synthetic] section, or add --set data.synthetic=none)",
                    self.captions, self.images
                ));
            }
        }
        if self.format == CaptionFormat::Webdataset {
            // Shard images are named `<shard>.tar/<member>` under `data.images`.
            let shards_dir = if self.captions.extension().is_some_and(|e| e == "tar") {
                self.captions.parent().unwrap_or(Path::new(".")).to_path_buf()
            } else {
                self.captions.clone()
            };
            if self.images != shards_dir {
                return bad(format!(
                    "data.format = \"webdataset\" needs data.images to be the folder of the shards ({:?}), got {:?}",
                    shards_dir, self.images
                ));
            }
        }
        self.delimiter_byte().map_err(|_| DataError::Config {
            path: file.into(),
            message: format!(
                "data.delimiter must be one ASCII character, got {:?}",
                self.delimiter
            ),
        })?;
        Ok(())
    }

    pub(crate) fn delimiter_byte(&self) -> Result<u8> {
        match self.delimiter.as_bytes() {
            [b] if b.is_ascii() => Ok(*b),
            _ => Err(DataError::Config {
                path: PathBuf::from("<config>"),
                message: format!(
                    "data.delimiter must be one ASCII character, got {:?}",
                    self.delimiter
                ),
            }),
        }
    }

    /// Generates the synthetic dataset `[data.synthetic]` describes where `data.captions` points,
    /// unless a complete one made with the same settings is there; returns whether it generated
    /// (`false` without `[data.synthetic]`). Loading never generates: callers run this first.
    /// Written only into a missing or empty folder, or one it generated before: never over a
    /// dataset of the user's that a config adapted from the quickstart points at.
    pub fn ensure_synthetic(&self) -> Result<bool> {
        match &self.synthetic {
            Some(synth) => {
                let dir = self.captions.parent().unwrap_or(Path::new("."));
                crate::synth::ensure_with(dir, synth, SYNTHETIC_HINT)
            }
            None => Ok(false),
        }
    }

    /// Where the dataset is and how its captions file reads, for [`crate::CaptionDataset::load`].
    pub fn dataset_config(&self) -> Result<DatasetConfig> {
        Ok(DatasetConfig {
            format: self.format,
            captions: self.captions.clone(),
            images: self.images.clone(),
            columns: ColumnSpec {
                image: self.image_column.clone(),
                caption: self.caption_column.clone(),
                delimiter: self.delimiter_byte()?,
            },
            skip_missing: self.skip_missing,
        })
    }

    /// How the dataset is split, for [`crate::SplitDataset::new`].
    pub fn split_config(&self) -> SplitConfig {
        SplitConfig {
            method: self.split,
            val_size: self.val_size,
            seed: self.seed,
            split_file: self.split_file.clone(),
        }
    }

    /// The deterministic image transform this config describes.
    pub fn image_transform(&self) -> ImageTransform {
        ImageTransform {
            size: self.image_size,
            mode: self.resize,
            filter: self.resize_filter,
            mean: self.mean,
            std: self.std,
        }
    }

    /// The tokenizer `data.tokenizer` names, truncating at `data.text_max_length`.
    pub fn tokenizer_config(&self) -> TokenizerConfig {
        TokenizerConfig { spec: self.tokenizer.clone(), max_length: self.text_max_length }
    }

    pub fn tokenizer(&self) -> Result<CaptionTokenizer> {
        CaptionTokenizer::from_config(&self.tokenizer_config())
    }

    /// Per-example preprocessing, for [`crate::ExamplePipeline::train`] (and `eval`).
    pub fn pipeline_config(&self) -> PipelineConfig {
        PipelineConfig {
            transform: self.image_transform(),
            augment: self.augment.clone(),
            tokenizer: self.tokenizer_config(),
            seed: self.seed,
            pad_to_multiple_of: self.pad_to_multiple_of,
            skip_unreadable: self.skip_unreadable,
        }
    }

    /// [`ExamplePipeline::train`] of [`Self::pipeline_config`]: with augmentation.
    pub fn train_pipeline(&self) -> Result<ExamplePipeline> {
        ExamplePipeline::train(&self.pipeline_config())
    }

    /// [`ExamplePipeline::eval`] of [`Self::pipeline_config`]: no augmentation.
    pub fn eval_pipeline(&self) -> Result<ExamplePipeline> {
        ExamplePipeline::eval(&self.pipeline_config())
    }

    /// Loader settings for training (shuffled) or evaluation (in order).
    pub fn loader(&self, shuffle: bool) -> LoaderConfig {
        LoaderConfig {
            batch_size: self.batch_size,
            num_workers: self.num_workers,
            prefetch_batches: self.prefetch_batches,
            shuffle,
            seed: self.seed,
            drop_last: false,
        }
    }
}

/// Reads only the `[data]` table of a config file (other tables are left to their owners),
/// resolves its paths against the file's directory and validates it.
pub fn load_data_config(path: &Path) -> Result<DataConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_data_config(&text, path)
}

/// Like [`load_data_config`] for config text said to live at `path` (an embedded config).
pub fn parse_data_config(text: &str, path: &Path) -> Result<DataConfig> {
    #[derive(Deserialize)]
    struct DataOnly {
        data: DataConfig,
        #[serde(flatten)]
        _rest: toml::Table,
    }
    let parsed: DataOnly =
        toml::from_str(text).map_err(|source| DataError::Toml { path: path.into(), source })?;
    let mut data = parsed.data;
    data.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    data.validate(path)?;
    Ok(data)
}

/// Joins `path` onto `base` and removes `.` and `..` components lexically.
pub fn join_clean(base: &Path, path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in base.join(path).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exp.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = DataConfig::new("results.csv", "images");
        assert_eq!(c.format, CaptionFormat::Flickr30k);
        assert_eq!(
            (c.image_size, c.text_max_length, c.batch_size, c.num_workers),
            (224, 200, 32, 4)
        );
        assert_eq!((c.val_size, c.seed, c.split), (0.2, 42, SplitMethod::Random));
        assert_eq!(c.mean, IMAGENET_MEAN);
        assert!(c.augment.is_identity());
    }

    #[test]
    fn split_methods_parse_in_kebab_case() {
        let (_d, p) = write("[data]\ncaptions = \"c\"\nimages = \"i\"\nsplit = \"numpy-legacy\"\nseed = 4294967295\n");
        assert_eq!(load_data_config(&p).unwrap().split, SplitMethod::NumpyLegacy);
        let (_d, p) = write(
            "[data]\ncaptions = \"c\"\nimages = \"i\"\nsplit = \"random\"\nseed = 4294967296\n",
        );
        assert_eq!(load_data_config(&p).unwrap().split, SplitMethod::Random);
    }

    #[test]
    fn joins_are_lexically_clean() {
        assert_eq!(
            join_clean(Path::new("/a/configs"), Path::new("../d/./x.csv")),
            PathBuf::from("/a/d/x.csv")
        );
        assert_eq!(join_clean(Path::new("configs"), Path::new("../../x")), PathBuf::from("../x"));
    }

    #[test]
    fn paths_are_relative_to_the_config_file() {
        let (dir, p) = write(
            "[data]\ncaptions = \"d/results.csv\"\nimages = \"/abs/images\"\n[train]\nlr = 1e-3\n",
        );
        let c = load_data_config(&p).unwrap();
        assert_eq!(c.captions, dir.path().join("d/results.csv"));
        assert_eq!(c.images, PathBuf::from("/abs/images"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_key_and_file() {
        let (_d, p) = write("[data]\ncaptions = \"c\"\nimages = \"i\"\nimage_sise = 64\n");
        let err = load_data_config(&p).unwrap_err().to_string();
        assert!(
            err.contains("exp.toml") && err.contains("image_sise") && err.contains("line 4"),
            "{err}"
        );

        let (_d, p) = write("[data]\ncaptions = \"c\"\nimages = \"i\"\nval_size = 1.5\n");
        let err = load_data_config(&p).unwrap_err().to_string();
        assert!(err.contains("exp.toml") && err.contains("data.val_size"), "{err}");

        let (_d, p) = write("[data]\ncaptions = \"c\"\nimages = \"i\"\nsplit = \"numpy\"\n");
        let err = load_data_config(&p).unwrap_err().to_string();
        assert!(
            err.contains("exp.toml")
                && err.contains("split")
                && err.contains("numpy-legacy")
                && err.contains("line 4"),
            "{err}"
        );

        let (_d, p) = write("[data]\ncaptions = \"c\"\nimages = \"i\"\nsplit = \"numpy-legacy\"\nseed = 4294967296\n");
        let err = load_data_config(&p).unwrap_err().to_string();
        assert!(
            err.contains("exp.toml") && err.contains("data.seed") && err.contains("4294967296"),
            "{err}"
        );

        let (_d, p) =
            write("[data]\ncaptions = \"c\"\nimages = \"i\"\n[data.augment]\nflip = true\n");
        let err = load_data_config(&p).unwrap_err().to_string();
        assert!(err.contains("flip") && err.contains("horizontal_flip"), "{err}");
    }
}
