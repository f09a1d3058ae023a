//! Data for CLIP training: caption files (Flickr30k, Flickr8k, CSV, JSONL), the train/val split
//! by image, image decoding and augmentation, WordPiece tokenization, and a bounded,
//! reproducible multi-threaded loader that collates batches with dynamic padding.
//!
//! Flow: [`DataConfig`] → [`CaptionDataset::load`] → [`Split::by_image`] → [`PairDataset`] →
//! [`ClipLoader`] → [`HostBatch`] → [`ClipBatch`] on a device.

pub mod augment;
pub mod batch;
pub mod captions;
pub mod color;
pub mod config;
pub mod dataset;
pub mod error;
pub mod fashion_mnist;
pub mod fs;
pub mod imaging;
pub mod inspect;
pub mod loader;
pub mod numpy_rng;
pub mod shards;
pub mod split;
pub mod synth;
pub mod tokenizer;

pub use augment::AugmentConfig;
pub use batch::{ClipBatch, ExamplePipeline, HostBatch, TokenPadding};
pub use captions::{CaptionFormat, CaptionRecord, ParseReport, RowIssue};
pub use config::{load_data_config, parse_data_config, DataConfig};
pub use dataset::{CaptionDataset, CaptionPair, CaptionSampling, ImageCaptions, PairDataset};
pub use error::{DataError, Result};
pub use imaging::{ImageTransform, ResizeFilter, ResizeMode};
pub use loader::{ClipLoader, EpochBatches, LoaderConfig};
pub use split::{Split, SplitMethod};
pub use tokenizer::CaptionTokenizer;

/// The train and validation (and test) sides of a dataset, split by image.
#[derive(Debug, Clone)]
pub struct SplitDataset {
    pub split: Split,
    pub train: PairDataset,
    pub val: PairDataset,
    /// Empty unless the split has a test side (Karpathy's).
    pub test: PairDataset,
}

impl SplitDataset {
    /// Splits a loaded dataset as its config says: reuses `data.split_file` when it exists,
    /// otherwise takes the split the captions file defines (Karpathy's), otherwise splits by
    /// image with `data.seed` / `data.val_size` as `data.split` says (and saves the split to
    /// `data.split_file` when one is named).
    pub fn new(dataset: &CaptionDataset, config: &DataConfig) -> Result<Self> {
        let split = match &config.split_file {
            Some(path) if path.is_file() => Split::load(path)?,
            other => {
                let names: Vec<String> = dataset.images.iter().map(|i| i.name.clone()).collect();
                let split = if !dataset.predefined_split.is_empty() {
                    Split::predefined(&dataset.predefined_split, config.seed)
                } else {
                    match config.split {
                        SplitMethod::Random => {
                            Split::by_image(&names, config.val_size, config.seed)
                        }
                        // `dataset.images` is in captions-file order (first appearance).
                        SplitMethod::NumpyLegacy => {
                            Split::numpy_legacy(&names, config.val_size, config.seed)?
                        }
                    }
                };
                if let Some(path) = other {
                    split.save(path)?;
                }
                split
            }
        };
        Self::from_split(
            dataset,
            split,
            config.split_file.as_deref().unwrap_or(std::path::Path::new("<split>")),
        )
    }

    /// Applies a given split to a dataset; names the split file when an image is unknown.
    pub fn from_split(
        dataset: &CaptionDataset,
        split: Split,
        split_path: &std::path::Path,
    ) -> Result<Self> {
        let train = PairDataset::new(dataset.select(&split.train, split_path)?);
        let val = PairDataset::new(dataset.select(&split.val, split_path)?);
        let test = PairDataset::new(dataset.select(&split.test, split_path)?);
        Ok(Self { split, train, val, test })
    }
}
