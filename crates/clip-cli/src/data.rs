//! `clip data ...` and the quickstart.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use clip_data::fashion_mnist::{self, FashionMnistConfig};
use clip_data::inspect::{inspect, InspectReport};
use clip_data::synth::{self, SynthConfig};
use clip_data::{load_data_config, DataConfig};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Load the dataset a config names and report what it holds and how fast it loads.
    Inspect {
        /// Experiment config (TOML) with a `[data]` section.
        #[arg(long)]
        config: PathBuf,
        /// Training batches to time through the loader.
        #[arg(long, default_value_t = 20)]
        batches: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Override a config value, e.g. `--set data.format='"karpathy"'` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Pack the dataset a config names into WebDataset tar shards (train from them with
    /// `data.format = "webdataset"`): fewer, larger files for slow or network disks.
    Shards {
        /// Experiment config (TOML) with a `[data]` section.
        #[arg(long)]
        config: PathBuf,
        /// Folder for `00000.tar`, `00001.tar`, ...
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        samples_per_shard: usize,
        /// Override a config value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Write the synthetic shapes dataset (Flickr30k layout).
    Synth {
        #[arg(long, default_value = "datasets/synthetic-shapes")]
        out: PathBuf,
        #[arg(long, default_value_t = SynthConfig::default().images)]
        images: usize,
        #[arg(long, default_value_t = SynthConfig::default().image_size)]
        size: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Convert Fashion-MNIST's IDX files into a caption dataset (Flickr30k layout, the official
    /// train/test split, labels.csv and unseen zero-shot prompts). `cargo xtask fetch-assets`
    /// fetches the files from Debian and runs this.
    FashionMnist {
        /// Folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].
        #[arg(long, default_value = "datasets/assets/fashion-mnist")]
        source: PathBuf,
        #[arg(long, default_value = "datasets/fashion-mnist")]
        out: PathBuf,
        /// Seed of the caption wording.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Only the first N images of each split (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Inspect { config, batches, json, overrides } => {
            let data = if overrides.is_empty() {
                load_data_config(&config)?
            } else {
                clip_train::ExperimentConfig::load(&config, &overrides)?.data
            };
            report(&config, &data, batches, json)
        }
        DataCommand::Shards { config, out, samples_per_shard, overrides } => {
            let data = if overrides.is_empty() { load_data_config(&config)? } else { clip_train::ExperimentConfig::load(&config, &overrides)?.data };
            if out.join("00000.tar").exists() {
                anyhow::bail!("{}: already holds shards; choose an empty --out", out.display());
            }
            let dataset = clip_data::CaptionDataset::load(&data)?;
            let s = clip_data::shards::write_shards(&dataset.images, &out, samples_per_shard)?;
            println!("wrote {} samples ({} captions) into {} shards in {}", s.samples, s.captions, s.shards, out.display());
            println!("train from them with: format = \"webdataset\", captions = images = {:?}", out.display().to_string());
            Ok(())
        }
        DataCommand::Synth { out, images, size, seed } => {
            let cfg = SynthConfig { images, image_size: size, seed, ..SynthConfig::default() };
            let s = synth::generate(&out, &cfg).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} images and {} captions to {}", s.images, s.captions, s.dir.display());
            Ok(())
        }
        DataCommand::FashionMnist { source, out, seed, limit } => {
            let cfg = FashionMnistConfig { source, seed, limit };
            let s = fashion_mnist::convert(&out, &cfg).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} train + {} test images and {} captions to {}", s.train_images, s.test_images, s.captions, out.display());
            Ok(())
        }
    }
}

fn report(config_path: &Path, data: &DataConfig, batches: usize, json: bool) -> Result<()> {
    let r = inspect(data, batches).with_context(|| format!("inspecting the dataset of {}", config_path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(data, &r);
    }
    Ok(())
}

fn print_report(data: &DataConfig, r: &InspectReport) {
    println!("captions file    {}", data.captions.display());
    println!("images dir       {}", data.images.display());
    println!("images           {}", r.images);
    println!("captions         {} ({} rows read)", r.captions, r.caption_rows);
    println!("train            {} images, {} captions", r.train_images, r.train_captions);
    if r.test_images > 0 {
        println!("val              {} images, {} captions (the captions file's split)", r.val_images, r.val_captions);
        println!("test             {} images, {} captions (held out: `clip eval --split test`)", r.test_images, r.test_captions);
    } else {
        println!(
            "val              {} images, {} captions (val_size {}, seed {})",
            r.val_images, r.val_captions, data.val_size, data.seed
        );
    }
    println!("repaired rows    {}", r.repaired.len());
    for row in &r.repaired {
        println!("  line {}: {}", row.line, row.reason);
    }
    println!("skipped rows     {}", r.skipped.len());
    for row in r.skipped.iter().take(20) {
        println!("  line {}: {}", row.line, row.reason);
    }
    if r.skipped.len() > 20 {
        println!("  ... and {} more", r.skipped.len() - 20);
    }
    println!("missing images   {}", r.missing_images);
    println!(
        "caption tokens   min {} / median {} / max {} ({} over text_max_length {})",
        r.tokens_min, r.tokens_median, r.tokens_max, r.truncated, data.text_max_length
    );
    println!(
        "loader           {:.1} ms per batch of {} at {}px ({} workers, {} batches timed)",
        r.ms_per_batch, r.batch_size, data.image_size, r.num_workers, r.batches_timed
    );
}
