//! Data for CLIP training: caption files (Flickr30k, Flickr8k, CSV, JSONL), the train/val split
//! by image, image decoding and augmentation, WordPiece tokenization, and a bounded,
//! reproducible multi-threaded loader that collates batches with dynamic padding.
//!
//! Flow: [`DataConfig`] (→ [`DataConfig::ensure_synthetic`] for a generated dataset) →
//! [`CaptionDataset::load`] → [`SplitDataset::new`] → [`PairDataset`] → [`ClipLoader`] →
//! [`HostBatch`] → [`ClipBatch`] on a device.
//!
//! Each component takes its own small config ([`DatasetConfig`], [`SplitConfig`],
//! [`PipelineConfig`], [`TokenizerConfig`], [`LoaderConfig`]); [`DataConfig`], the `[data]` table,
//! is composed of their settings and builds each (`DataConfig::dataset_config`, ...). Components
//! never depend on `DataConfig`.

pub mod augment;
pub mod batch;
pub mod captions;
pub mod color;
pub mod config;
pub mod dataset;
pub mod error;
pub mod fashion_mnist;
pub mod fault;
pub mod formats;
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
pub use batch::{ClipBatch, ExamplePipeline, HostBatch, PipelineConfig, TokenPadding};
pub use captions::{
    CaptionFormat, CaptionRecord, ColumnSpec, ImageCaptions, ParseReport, RowIssue,
};
pub use config::{load_data_config, parse_data_config, DataConfig};
pub use dataset::{CaptionDataset, CaptionPair, CaptionSampling, DatasetConfig, PairDataset};
pub use error::{DataError, Result};
pub use imaging::{ImageTransform, ResizeFilter, ResizeMode};
pub use loader::{ClipLoader, EpochBatches, LoaderConfig};
pub use split::{Split, SplitConfig, SplitDataset, SplitMethod};
pub use tokenizer::{CaptionTokenizer, TokenizerConfig};
