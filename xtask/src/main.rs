//! Project chores: `cargo xtask <command>` (see `cargo xtask --help`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use clip_data::synth::{self, SynthConfig};

#[derive(Parser)]
#[command(name = "xtask", about = "Chores for the CLIP workspace")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the synthetic shapes dataset (Flickr30k layout) under datasets/.
    SynthData {
        /// Output directory.
        #[arg(long, default_value = "datasets/synthetic-shapes")]
        out: PathBuf,
        /// Number of images (each gets 5 captions).
        #[arg(long, default_value_t = SynthConfig::default().images)]
        images: usize,
        /// Side of the square images in pixels.
        #[arg(long, default_value_t = SynthConfig::default().image_size)]
        size: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Regenerate even if a matching dataset is there.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    match args.command {
        Command::SynthData { out, images, size, seed, force } => {
            let out = root.join(out);
            let config = SynthConfig { images, image_size: size, seed, ..SynthConfig::default() };
            let made = if force {
                synth::generate(&out, &config).map(|_| true)
            } else {
                synth::ensure(&out, &config)
            }
            .with_context(|| format!("writing the synthetic dataset to {}", out.display()))?;
            if made {
                println!("wrote {} images and {} captions to {}", images, images * 5, out.display());
            } else {
                println!("{} already holds this dataset (use --force to rewrite)", out.display());
            }
        }
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}
