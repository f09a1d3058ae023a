//! `clip export`: a run's model as ONNX files for serving without Rust or Burn: the image and
//! the text encoder, the tokenizer as a Hugging Face `tokenizer.json`, and the model card with
//! the preprocessing.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::Flex;
use clap::Args;
use clip_data::fs::write_atomic;
use clip_infer::LoadedModel;
use clip_model::onnx::{image_encoder_onnx, text_encoder_onnx, write_onnx, OPSET};

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

/// Whether `dir` holds an earlier export: its `image_encoder.onnx` names clip as its producer
/// (the ModelProto's field 2, `producer_name`, which the encoder writes within its first bytes).
fn is_export_dir(dir: &std::path::Path) -> bool {
    const PRODUCER: &[u8] = b"\x12\x09clip-burn";
    let head = clip_data::fs::read_head(&dir.join("image_encoder.onnx"), 64);
    head.windows(PRODUCER.len()).any(|w| w == PRODUCER)
}

pub fn export(args: ExportArgs) -> Result<()> {
    // Export reads weights and writes files: the CPU backend does it wherever a GPU is.
    let device = Default::default();
    clip_data::fs::claim_dir(
        &args.out,
        "an ONNX export",
        is_export_dir,
        "Give --out a new or empty folder (or the folder of an earlier `clip export`, to replace it).",
    )?;
    let loaded = LoadedModel::<Flex>::from_run(&args.checkpoint, &device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let data = &loaded.card.data;
    // The card as the run wrote it (its bytes are part of the model's identity).
    let card_path = args.checkpoint.join("model.json");
    let card = std::fs::read_to_string(&card_path)
        .with_context(|| format!("reading {}", card_path.display()))?;
    // The preprocessing a server must reproduce, next to the weights that expect it.
    let metadata = vec![
        ("image_size".to_string(), data.image_size.to_string()),
        ("mean".to_string(), serde_json::to_string(&data.mean)?),
        ("std".to_string(), serde_json::to_string(&data.std)?),
        (
            "resize".to_string(),
            serde_json::to_value(data.resize)?.as_str().unwrap_or_default().to_string(),
        ),
        (
            "resize_filter".to_string(),
            serde_json::to_value(data.resize_filter)?.as_str().unwrap_or_default().to_string(),
        ),
        ("text_max_length".to_string(), data.text_max_length.to_string()),
        ("normalized_embeddings".to_string(), loaded.card.clip.normalize_embeddings.to_string()),
        ("model_card".to_string(), card.clone()),
    ];
    let image = args.out.join("image_encoder.onnx");
    write_onnx(&image_encoder_onnx(&loaded.model, &metadata), &image)?;
    let text = args.out.join("text_encoder.onnx");
    write_onnx(&text_encoder_onnx(&loaded.model, &loaded.card.clip, &metadata), &text)?;
    let tokenizer = args.out.join("tokenizer.json");
    write_atomic(&tokenizer, loaded.tokenizer.to_json()?.as_bytes())?;
    write_atomic(&args.out.join("model.json"), card.as_bytes())?;

    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    println!(
        "exported {} (weights {}), ONNX opset {OPSET}:",
        args.checkpoint.display(),
        loaded.weights.display()
    );
    println!(
        "  {} ({:.1} MB): pixel_values [batch, 3, {s}, {s}] float32 → image_embeds [batch, {d}]",
        image.display(),
        size(&image),
        s = data.image_size,
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
        data.text_max_length
    );
    println!(
        "  preprocessing: resize ({}, {}) to {s}×{s}, RGB in [0, 1], minus mean {:?}, divided by std {:?}, channels first",
        metadata[3].1,
        metadata[4].1,
        data.mean,
        data.std,
        s = data.image_size
    );
    Ok(())
}
