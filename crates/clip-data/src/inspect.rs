//! `clip data inspect`: what a config's dataset holds and how fast it loads.

use std::time::Instant;

use serde::Serialize;

use crate::batch::{ExamplePipeline, PipelineConfig};
use crate::captions::RowIssue;
use crate::dataset::{CaptionDataset, PairDataset};
use crate::error::Result;
use crate::loader::{ClipLoader, LoaderConfig};
use crate::split::SplitDataset;
use crate::tokenizer::{CaptionTokenizer, TokenizerConfig};

/// The facts `clip data inspect` prints.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub images: usize,
    pub captions: usize,
    pub caption_rows: usize,
    pub train_images: usize,
    pub train_captions: usize,
    pub val_images: usize,
    pub val_captions: usize,
    /// The test side of a split the captions file defines (Karpathy's); 0 otherwise.
    pub test_images: usize,
    pub test_captions: usize,
    pub repaired: Vec<RowIssue>,
    pub skipped: Vec<RowIssue>,
    pub missing_images: usize,
    /// Caption lengths in tokens (with `[CLS]`/`[SEP]`, before truncation).
    pub tokens_min: usize,
    pub tokens_median: usize,
    pub tokens_max: usize,
    /// Captions longer than `text_max_length` (they get truncated).
    pub truncated: usize,
    pub batch_size: usize,
    pub num_workers: usize,
    pub batches_timed: usize,
    /// Mean wall time per training batch over the timed batches (loader threads included).
    pub ms_per_batch: f64,
}

/// Reports on a loaded and split dataset: tokenizes its captions with `pipeline`'s tokenizer and
/// times `timed_batches` training batches through the real loader (`pipeline`, `loader`).
pub fn inspect(
    dataset: &CaptionDataset,
    split: &SplitDataset,
    pipeline: &PipelineConfig,
    loader: LoaderConfig,
    timed_batches: usize,
) -> Result<InspectReport> {
    let max_length = pipeline.tokenizer.max_length;
    let untruncated = TokenizerConfig { max_length: 1 << 20, ..pipeline.tokenizer.clone() };
    let tokenizer = CaptionTokenizer::from_config(&untruncated)?;
    let mut lengths = Vec::with_capacity(dataset.num_captions());
    for img in &dataset.images {
        for c in &img.captions {
            lengths.push(tokenizer.encode(c)?.len());
        }
    }
    lengths.sort_unstable();
    let truncated = lengths.iter().filter(|&&l| l > max_length).count();

    let (batch_size, num_workers) = (loader.batch_size, loader.num_workers);
    let loader = ClipLoader::new(split.train.clone(), ExamplePipeline::train(pipeline)?, loader);
    let timed = timed_batches.min(loader.num_batches());
    let start = Instant::now();
    for batch in loader.epoch(0).take(timed) {
        batch?;
    }
    let ms_per_batch =
        if timed > 0 { start.elapsed().as_secs_f64() * 1e3 / timed as f64 } else { 0.0 };

    let count = |p: &PairDataset| (p.images().len(), p.len());
    let (train_images, train_captions) = count(&split.train);
    let (val_images, val_captions) = count(&split.val);
    let (test_images, test_captions) = count(&split.test);
    Ok(InspectReport {
        images: dataset.images.len(),
        captions: dataset.num_captions(),
        caption_rows: dataset.report.caption_rows,
        train_images,
        train_captions,
        val_images,
        val_captions,
        test_images,
        test_captions,
        repaired: dataset.report.parse.repaired.clone(),
        skipped: dataset.report.parse.skipped.clone(),
        missing_images: dataset.report.missing_images.len(),
        tokens_min: lengths.first().copied().unwrap_or(0),
        tokens_median: lengths.get(lengths.len() / 2).copied().unwrap_or(0),
        tokens_max: lengths.last().copied().unwrap_or(0),
        truncated,
        batch_size,
        num_workers,
        batches_timed: timed,
        ms_per_batch,
    })
}
