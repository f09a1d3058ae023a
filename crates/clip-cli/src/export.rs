//! `clip export`: a run's model as ONNX files for serving without Rust or Burn: the image and
//! the text encoder, the tokenizer as a Hugging Face `tokenizer.json`, and the model card with
//! the preprocessing.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::backend::Flex;
use clap::Args;
use clip_infer::export::{export_onnx, ExportDir};
use clip_infer::LoadedModel;
use clip_model::onnx::OPSET;

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Run directory of the model (its best weights).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Directory to write `image_encoder.onnx`, `text_encoder.onnx`, `tokenizer.json` and
    /// `model.json` into: missing, empty, or an earlier export (its files are then replaced
    /// atomically); any other folder is refused.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn export(args: ExportArgs) -> Result<()> {
    // Export reads weights and writes files: the CPU backend does it wherever a GPU is.
    let device = Default::default();
    ExportDir::claim(&args.out)?;
    let loaded = LoadedModel::<Flex>::from_run(&args.checkpoint, &device)?;
    let export = export_onnx(&loaded, &args.out)?;
    let meta = &export.metadata;
    let (image, text, tokenizer) =
        (export.dir.image_encoder(), export.dir.text_encoder(), export.dir.tokenizer());

    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    println!(
        "exported {} (weights {}), ONNX opset {OPSET}:",
        args.checkpoint.display(),
        loaded.weights.display()
    );
    println!(
        "  {} ({:.1} MB): pixel_values [batch, 3, {s}, {s}] float32 → image_embeds [batch, {d}]",
        image.display(),
        size(&image),
        s = meta.image_size,
        d = loaded.card.clip.projection_dim
    );
    println!(
        "  {} ({:.1} MB): input_ids, attention_mask [batch, sequence] int64 → text_embeds [batch, {}]",
        text.display(),
        size(&text),
        loaded.card.clip.projection_dim
    );
    println!(
        "  {}: the tokenizer (tokenizers / transformers.js), at most {} tokens",
        tokenizer.display(),
        meta.text_max_length
    );
    println!(
        "  preprocessing: resize ({}, {}) to {s}×{s}, RGB in [0, 1], minus mean {:?}, divided by std {:?}, channels first",
        meta.resize,
        meta.resize_filter,
        meta.mean,
        meta.std,
        s = meta.image_size
    );
    Ok(())
}
