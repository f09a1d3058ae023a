//! `clip`: train and use CLIP-style image–text models from config files.

mod backend;
mod bench;
mod data;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "clip", version, about = "Train and use CLIP-style image-text models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect datasets and generate synthetic ones.
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// Measure model throughput on synthetic batches.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The built-in demo: generate the synthetic shapes dataset if missing and inspect it
    /// with the embedded `configs/quickstart.toml`.
    Quickstart {
        /// Directory holding `datasets/` (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Forward and training-step throughput of the seed model (ResNet-50 + DistilBERT).
    Step(bench::StepArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data { command } => data::run(command),
        Command::Quickstart { dir } => data::quickstart(&dir),
        Command::Bench { command: BenchCommand::Step(args) } => bench::step(args),
    }
}
