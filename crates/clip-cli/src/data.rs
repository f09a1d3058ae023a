//! `clip data ...` and the quickstart.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use clip_data::fashion_mnist::{self, FashionMnistConfig};
use clip_data::inspect::{inspect, InspectReport};
use clip_data::synth::{self, SynthConfig};
use clip_data::{load_data_config, CaptionDataset, DataConfig, SplitDataset};

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
        /// Folder for `00000.tar`, `00001.tar`, ... (missing or empty).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        samples_per_shard: usize,
        /// Override a config value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Render training samples as the model sees them (crop, flip, colour augmentation, the
    /// caption with "left"/"right" swapped for mirrored images) into a PNG grid.
    Preview {
        /// Experiment config (TOML) with a `[data]` section.
        #[arg(long)]
        config: PathBuf,
        /// The PNG to write (an existing file is replaced only if clip drew it).
        #[arg(long, default_value = "augment-preview.png")]
        out: PathBuf,
        /// Replace --out even if it is a file clip did not write.
        #[arg(long)]
        overwrite: bool,
        /// Samples shown (the first ones of the epoch's shuffled order).
        #[arg(long, default_value_t = 16)]
        samples: usize,
        /// The epoch whose order and augmentation are drawn.
        #[arg(long, default_value_t = 0)]
        epoch: usize,
        /// Override a config value, e.g. `--set data.augment.color_jitter=[0.4,0.4,0.4,0.1]` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Write the synthetic shapes dataset (Flickr30k layout) into a missing or empty folder, or
    /// one it generated before.
    Synth {
        /// Output folder: missing, empty, or one this generator wrote before.
        #[arg(long, default_value = "datasets/synthetic-shapes")]
        out: PathBuf,
        /// Number of images (each gets 5 captions).
        #[arg(long, default_value_t = SynthConfig::default().images)]
        images: usize,
        /// Side of the square images in pixels.
        #[arg(long, default_value_t = SynthConfig::default().image_size)]
        size: u32,
        /// Seed of the shapes and captions.
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
        /// Output folder: missing, empty, or one this converter wrote before.
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
            let data = if overrides.is_empty() {
                load_data_config(&config)?
            } else {
                clip_train::ExperimentConfig::load(&config, &overrides)?.data
            };
            clip_data::shards::claim_shards_dir(&out)?;
            data.ensure_synthetic()?;
            let dataset = CaptionDataset::load(&data.dataset_config()?)?;
            let s = clip_data::shards::write_shards(&dataset.images, &out, samples_per_shard)?;
            println!(
                "wrote {} samples ({} captions) into {} shards in {}",
                s.samples,
                s.captions,
                s.shards,
                out.display()
            );
            println!(
                "train from them with: format = \"webdataset\", captions = images = {:?}",
                out.display().to_string()
            );
            Ok(())
        }
        DataCommand::Preview { config, out, samples, epoch, overrides, overwrite } => {
            crate::infer::claim_output(&out, overwrite, "--out", crate::infer::Output::Png)?;
            let data = if overrides.is_empty() {
                load_data_config(&config)?
            } else {
                clip_train::ExperimentConfig::load(&config, &overrides)?.data
            };
            preview(&data, &out, samples, epoch)
        }
        DataCommand::Synth { out, images, size, seed } => {
            let s = synth::generate_command(&out, images, size, seed)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{s}");
            Ok(())
        }
        DataCommand::FashionMnist { source, out, seed, limit } => {
            let cfg = FashionMnistConfig { source, seed, limit };
            let s = fashion_mnist::convert(&out, &cfg)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} train + {} test images and {} captions to {}",
                s.train_images,
                s.test_images,
                s.captions,
                out.display()
            );
            Ok(())
        }
    }
}

fn report(config_path: &Path, data: &DataConfig, batches: usize, json: bool) -> Result<()> {
    let r = inspect_data(data, batches)
        .with_context(|| format!("inspecting the dataset of {}", config_path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(data, &r);
    }
    Ok(())
}

/// Generates the config's synthetic dataset if it has one and it is missing, then loads, splits
/// and inspects the dataset, timing `batches` training batches.
fn inspect_data(data: &DataConfig, batches: usize) -> clip_data::Result<InspectReport> {
    data.ensure_synthetic()?;
    let dataset = CaptionDataset::load(&data.dataset_config()?)?;
    let split = SplitDataset::new(&dataset, &data.split_config())?;
    inspect(&dataset, &split, &data.pipeline_config(), data.loader(true), batches)
}

fn print_report(data: &DataConfig, r: &InspectReport) {
    println!("captions file    {}", data.captions.display());
    println!("images dir       {}", data.images.display());
    println!("images           {}", r.images);
    println!("captions         {} ({} rows read)", r.captions, r.caption_rows);
    println!("train            {} images, {} captions", r.train_images, r.train_captions);
    if r.test_images > 0 {
        println!(
            "val              {} images, {} captions (the captions file's split)",
            r.val_images, r.val_captions
        );
        println!(
            "test             {} images, {} captions (held out: `clip eval --split test`)",
            r.test_images, r.test_captions
        );
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

/// Writes a grid of the first `samples` training examples of `epoch`, de-normalized.
fn preview(data: &DataConfig, out: &Path, samples: usize, epoch: usize) -> Result<()> {
    if samples == 0 {
        anyhow::bail!("--samples must be at least 1");
    }
    data.ensure_synthetic()?;
    let dataset = CaptionDataset::load(&data.dataset_config()?)?;
    let split = SplitDataset::new(&dataset, &data.split_config())?;
    let pipeline = data.train_pipeline()?;
    let loader =
        clip_data::ClipLoader::new(split.train.clone(), pipeline.clone(), data.loader(true));
    let (size, numel) = (pipeline.transform.size, pipeline.transform.numel());
    let (mean, std) = (pipeline.transform.mean, pipeline.transform.std);
    let mut images = Vec::new();
    let mut tiles = Vec::new();
    for item in loader.order(epoch).into_iter().take(samples) {
        let pair =
            split.train.pair_in_epoch(item, epoch).context("an item of the epoch's order")?;
        let mut pixels = vec![0f32; numel];
        pipeline.example_into(&pair, epoch, item, &mut pixels)?;
        let plane = (size * size) as usize;
        let image = image::RgbImage::from_fn(size, size, |x, y| {
            let i = (y * size + x) as usize;
            image::Rgb(std::array::from_fn(|c| {
                ((pixels[c * plane + i] * std[c] + mean[c]) * 255.0).round().clamp(0.0, 255.0) as u8
            }))
        });
        let flipped = pipeline.augment.flips(pipeline.seed, epoch, item);
        tiles.push(clip_plot::Tile {
            image: PathBuf::from(images.len().to_string()),
            caption: pipeline.caption_for(&pair, flipped),
        });
        images.push(image);
    }
    if tiles.is_empty() {
        anyhow::bail!("the training split is empty: nothing to preview");
    }
    let columns = (tiles.len() as f64).sqrt().ceil() as usize;
    let title = format!("epoch {epoch}: {} training samples as augmented", tiles.len());
    let load = |p: &Path| {
        p.to_str().and_then(|s| s.parse::<usize>().ok()).and_then(|i| images.get(i).cloned())
    };
    let png = clip_plot::render_grid_with(&title, &tiles, columns, size.max(160), &load)?;
    clip_data::fs::write_atomic(out, &png)?;
    println!("{}: {} samples of epoch {epoch}", out.display(), tiles.len());
    Ok(())
}
