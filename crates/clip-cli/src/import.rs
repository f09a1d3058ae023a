//! `clip import`: a run directory from a checkpoint or pretrained weights, for the inference
//! commands, without training.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::backend::Flex;
use clap::Args;
use clip_train::ExperimentConfig;

/// The seed notebook's experiment, embedded: its architecture and preprocessing are what a seed
/// checkpoint needs.
pub(crate) const SEED_TOML: &str = include_str!("../../../configs/flickr30k-rn50-distilbert.toml");
/// Where [`SEED_TOML`] says it lives: its data paths are read relative to `./configs`.
pub(crate) const SEED_PATH: &str = "configs/flickr30k-rn50-distilbert.toml";

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// A whole CLIP checkpoint: the seed notebook's Lightning `.ckpt` (its `state_dict`; the rest
    /// is skipped and reported, nothing in it is executed), or a `model.safetensors` written by
    /// `clip train`.
    #[arg(long, conflicts_with_all = ["image", "text"], required_unless_present_any = ["image", "text"])]
    pub checkpoint: Option<PathBuf>,
    /// Image tower weights: a timm / torchvision ResNet state dict (`.pth`, `.safetensors`).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Text tower weights: a Hugging Face model directory, or its `model.safetensors` /
    /// `pytorch_model.bin`.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// The run directory to create (it must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Experiment config giving the architecture and the preprocessing (default: the seed
    /// notebook's, `configs/flickr30k-rn50-distilbert.toml`, embedded; its data paths are read
    /// relative to `./configs`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. `--set data.captions=/data/flickr/results.csv` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

pub fn import(args: ImportArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => ExperimentConfig::load(path, &args.overrides)?,
        None => ExperimentConfig::parse(SEED_TOML, Path::new(SEED_PATH), &args.overrides)?,
    };
    let source = match &args.checkpoint {
        Some(ckpt) => {
            config.model.checkpoint = Some(absolute(ckpt)?);
            config.model.pretrained = false;
            config.model.image_weights = None;
            config.model.text_weights = None;
            ckpt.clone()
        }
        None => {
            config.model.checkpoint = None;
            config.model.pretrained = true;
            config.model.image_weights = args.image.as_deref().map(absolute).transpose()?;
            config.model.text_weights = args.text.as_deref().map(absolute).transpose()?;
            args.image.clone().or_else(|| args.text.clone()).expect("clap requires one")
        }
    };
    // Weights are read and written on the CPU, wherever a GPU is.
    let imported = clip_train::import_run::<Flex>(&config, &args.out, &Default::default())
        .with_context(|| format!("importing {}", source.display()))?;
    println!("imported into {}:", imported.run.root.display());
    for line in &imported.messages {
        println!("  {line}");
    }
    if let Some((train, val)) = imported.split {
        let how = serde_json::to_value(config.data.split)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        println!(
            "  {}: {train} training / {val} validation images ({how} split, val_size {}, seed {})",
            clip_infer::run_dir::SPLIT,
            config.data.val_size,
            config.data.seed
        );
    }
    let run = imported.run.root.display();
    println!("next:");
    if imported.split.is_some() {
        println!("  clip embed --checkpoint {run} --split val --out {run}/index-val");
    } else {
        println!("  clip embed --checkpoint {run} --images DIR --out {run}/index");
    }
    println!(
        "  clip search --index {run}/index{} \"dogs on the grass\" --grid matches.png",
        if imported.split.is_some() { "-val" } else { "" }
    );
    Ok(())
}
