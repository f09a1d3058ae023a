//! From a caption pair to a collated batch: per-example preprocessing and collation with
//! dynamic padding (each batch padded to its own longest caption, as HF `pad(padding=True)`).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::augment::{swap_left_right, AugmentConfig};
use crate::dataset::CaptionPair;
use crate::error::{DataError, Result};
use crate::imaging::{decode_rgb, ImageTransform};
use crate::tokenizer::{CaptionTokenizer, TokenizerConfig};

/// What an [`ExamplePipeline`] is built from (`DataConfig::pipeline_config` builds it from
/// `[data]`): the training settings; [`ExamplePipeline::eval`] drops the augmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub transform: ImageTransform,
    pub augment: AugmentConfig,
    pub tokenizer: TokenizerConfig,
    /// Seed of the augmentation.
    pub seed: u64,
    /// Batches are padded to their longest caption rounded up to a multiple of this.
    pub pad_to_multiple_of: usize,
    /// Leave an image that cannot be read or decoded out of its batch during training.
    pub skip_unreadable: bool,
}

/// Turns one caption pair into model inputs: image floats and token ids.
#[derive(Debug, Clone)]
pub struct ExamplePipeline {
    pub transform: ImageTransform,
    pub augment: AugmentConfig,
    pub tokenizer: CaptionTokenizer,
    pub seed: u64,
    /// Batches are padded to their longest caption rounded up to a multiple of this.
    pub pad_to_multiple_of: usize,
    /// Leave an image that cannot be read or decoded out of its batch (and report it) instead of
    /// failing: training does, so one corrupt file does not end a long run; evaluation does not.
    pub skip_unreadable: bool,
}

impl ExamplePipeline {
    /// The training pipeline (with its augmentation); loads the tokenizer.
    pub fn train(config: &PipelineConfig) -> Result<Self> {
        Ok(Self {
            transform: config.transform.clone(),
            augment: config.augment.clone(),
            tokenizer: CaptionTokenizer::from_config(&config.tokenizer)?,
            seed: config.seed,
            pad_to_multiple_of: config.pad_to_multiple_of,
            skip_unreadable: config.skip_unreadable,
        })
    }

    /// The evaluation pipeline: the same transform, no augmentation, no image left out.
    pub fn eval(config: &PipelineConfig) -> Result<Self> {
        Ok(Self { augment: AugmentConfig::none(), skip_unreadable: false, ..Self::train(config)? })
    }

    /// How this pipeline's batches pad their token sequences.
    pub fn padding(&self) -> TokenPadding {
        TokenPadding {
            pad_id: self.tokenizer.pad_id(),
            multiple: self.pad_to_multiple_of,
            max_length: self.tokenizer.max_length(),
        }
    }

    /// Preprocesses example `item` of `epoch`: writes the image into `image_out` (CHW) and
    /// returns the caption's token ids. A flipped image gets "left"/"right" swapped in its
    /// caption when the augmentation asks for it.
    pub fn example_into(
        &self,
        pair: &CaptionPair,
        epoch: usize,
        item: usize,
        image_out: &mut [f32],
    ) -> Result<Vec<u32>> {
        let img = decode_rgb(&pair.image_path)?;
        let view = self.augment.sample_view(self.seed, epoch, item, img.width(), img.height());
        self.transform
            .apply_into(&img, &view, image_out)
            .map_err(|message| DataError::ImageResize { path: pair.image_path.clone(), message })?;
        self.tokenizer.encode(&self.caption_for(pair, view.flip))
    }

    /// The caption as training sees it: "left" and "right" swapped when the image is mirrored
    /// and the augmentation asks for it.
    pub fn caption_for(&self, pair: &CaptionPair, flipped: bool) -> String {
        if flipped && self.augment.flip_swaps_left_right {
            swap_left_right(&pair.caption)
        } else {
            pair.caption.clone()
        }
    }
}

/// How a batch's token sequences are padded: to the longest caption of the batch rounded up to
/// a multiple of `multiple` (HF's `pad_to_multiple_of`), never past `max_length`. Rounding up
/// bounds the number of distinct sequence lengths, so a GPU backend compiles and autotunes its
/// text-tower kernels for a few shapes instead of one per caption length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPadding {
    pub pad_id: u32,
    pub multiple: usize,
    pub max_length: usize,
}

impl TokenPadding {
    /// Pad to the longest caption, nothing more.
    pub fn longest(pad_id: u32) -> Self {
        Self { pad_id, multiple: 1, max_length: usize::MAX }
    }

    /// The padded length of a batch whose longest caption has `longest` tokens.
    pub fn padded_len(&self, longest: usize) -> usize {
        let m = self.multiple.max(1);
        longest.div_ceil(m).saturating_mul(m).min(self.max_length.max(longest))
    }
}

/// A collated batch in host memory, ready to be uploaded to any device.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// `[batch, 3, image_size, image_size]`, normalized.
    pub images: Vec<f32>,
    pub image_size: usize,
    /// `[batch, seq_len]`, padded with the tokenizer's pad id.
    pub input_ids: Vec<i32>,
    /// `[batch, seq_len]`: 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i32>,
    /// Length of the longest caption in this batch, rounded up as [`TokenPadding`] says.
    pub seq_len: usize,
    /// Which image each row shows (index into the dataset's images): rows with the same value
    /// are captions of the same picture.
    pub image_indices: Vec<usize>,
    /// The dataset item of each row.
    pub items: Vec<usize>,
    /// Images left out of this batch because they could not be read, with the reason.
    pub skipped: Vec<(std::path::PathBuf, String)>,
}

impl HostBatch {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Rows `rows` of this batch (a replica's share of it), padded as the whole batch is; the
    /// skipped images stay with the first share.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> HostBatch {
        let pixels = 3 * self.image_size * self.image_size;
        let tokens = |v: &[i32]| v[rows.start * self.seq_len..rows.end * self.seq_len].to_vec();
        HostBatch {
            images: self.images[rows.start * pixels..rows.end * pixels].to_vec(),
            image_size: self.image_size,
            input_ids: tokens(&self.input_ids),
            attention_mask: tokens(&self.attention_mask),
            seq_len: self.seq_len,
            image_indices: self.image_indices[rows.clone()].to_vec(),
            items: self.items[rows.clone()].to_vec(),
            skipped: if rows.start == 0 { self.skipped.clone() } else { Vec::new() },
        }
    }

    /// Pads token sequences as `padding` says and packs them with the already-filled images.
    pub fn collate(
        images: Vec<f32>,
        image_size: usize,
        token_ids: Vec<Vec<u32>>,
        padding: TokenPadding,
        image_indices: Vec<usize>,
        items: Vec<usize>,
    ) -> Self {
        let b = token_ids.len();
        assert_eq!(images.len(), b * 3 * image_size * image_size, "image buffer size");
        let seq_len = padding.padded_len(token_ids.iter().map(Vec::len).max().unwrap_or(0));
        let mut input_ids = vec![padding.pad_id as i32; b * seq_len];
        let mut attention_mask = vec![0; b * seq_len];
        for (row, ids) in token_ids.iter().enumerate() {
            for (j, &id) in ids.iter().enumerate() {
                input_ids[row * seq_len + j] = id as i32;
                attention_mask[row * seq_len + j] = 1;
            }
        }
        Self {
            images,
            image_size,
            input_ids,
            attention_mask,
            seq_len,
            image_indices,
            items,
            skipped: Vec::new(),
        }
    }

    /// Uploads the batch to a device.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> ClipBatch<B> {
        let (b, s, l) = (self.len(), self.image_size, self.seq_len);
        ClipBatch {
            images: Tensor::from_data(TensorData::new(self.images.clone(), [b, 3, s, s]), device),
            input_ids: Tensor::from_data(TensorData::new(self.input_ids.clone(), [b, l]), device),
            attention_mask: Tensor::from_data(
                TensorData::new(self.attention_mask.clone(), [b, l]),
                device,
            ),
            image_indices: self.image_indices.clone(),
        }
    }
}

/// A batch on a device: what the model consumes.
#[derive(Debug, Clone)]
pub struct ClipBatch<B: Backend> {
    /// `[batch, 3, H, W]`.
    pub images: Tensor<B, 4>,
    /// `[batch, seq_len]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq_len]`, 1 = token, 0 = padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// The image each row shows; equal values mean captions of the same image.
    pub image_indices: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_caption_of_the_batch() {
        let b = HostBatch::collate(
            vec![0.0; 2 * 3 * 4],
            2,
            vec![vec![101, 7, 8, 102], vec![101, 9, 102]],
            TokenPadding::longest(0),
            vec![0, 1],
            vec![0, 1],
        );
        assert_eq!(b.seq_len, 4);
        assert_eq!(b.input_ids, vec![101, 7, 8, 102, 101, 9, 102, 0]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn pads_up_to_a_multiple_but_never_past_the_maximum() {
        let padding = TokenPadding { pad_id: 0, multiple: 8, max_length: 20 };
        assert_eq!(
            [1, 8, 9, 16, 17, 19, 20].map(|n| padding.padded_len(n)),
            [8, 8, 16, 16, 20, 20, 20]
        );
        assert_eq!(TokenPadding::longest(0).padded_len(13), 13);
        let b = HostBatch::collate(
            vec![0.0; 2 * 3 * 4],
            2,
            vec![vec![101, 7, 8, 102], vec![101, 9, 102]],
            TokenPadding { pad_id: 5, multiple: 3, max_length: 512 },
            vec![0, 1],
            vec![0, 1],
        );
        assert_eq!(b.seq_len, 6);
        assert_eq!(b.input_ids, vec![101, 7, 8, 102, 5, 5, 101, 9, 102, 5, 5, 5]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0]);
    }
}
