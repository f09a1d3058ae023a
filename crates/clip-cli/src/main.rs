//! `clip`: train and use CLIP-style image–text models from config files.

mod allocator;
mod backend;
mod bench;
mod data;
mod export;
mod import;
mod infer;
mod interrupt;
mod kernels;
mod probe;
mod runs;
mod serve;
mod sweep;
mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The quickstart config, embedded so that `clip quickstart` needs no file.
const QUICKSTART_TOML: &str = include_str!("../../../configs/quickstart.toml");

#[derive(Parser)]
#[command(name = "clip", version, about = "Train and use CLIP-style image-text models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a CLIP model from an experiment config (or resume a run).
    Train(train::TrainArgs),
    /// Embed a folder of images (or a run's split) into an index; re-running embeds only new images.
    Embed(infer::EmbedArgs),
    /// Search an index by text or by image, or rank captions for an image.
    Search(infer::SearchArgs),
    /// Classify images by prompt templates; with ground truth, accuracy and a confusion matrix.
    ZeroShot(infer::ZeroShotArgs),
    /// Retrieval recall@1/5/10, both directions, on a run's validation split.
    Eval(infer::EvalArgs),
    /// Linear-probe accuracy of the image tower: a logistic regression on its embeddings of
    /// labelled training images, scored on the validation split (or given folders).
    Probe(probe::ProbeArgs),
    /// Train one config over a grid of settings (`--grid train.lr=1e-3,3e-4`), run after run,
    /// then compare the runs.
    Sweep(sweep::SweepArgs),
    /// The runs of a runs directory side by side: status, best validation, differing config values.
    Runs(runs::RunsArgs),
    /// Serve an index over HTTP: a search page, JSON text and image queries, the images.
    Serve(serve::ServeArgs),
    /// Make a run directory from a checkpoint (the seed notebook's Lightning `.ckpt`) or from
    /// pretrained tower weights, for the inference commands, without training.
    Import(import::ImportArgs),
    /// Write a run's model as ONNX files (image and text encoders), with its tokenizer and
    /// preprocessing, for serving from ONNX Runtime and other runtimes.
    Export(export::ExportArgs),
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
    /// The built-in demo: train a small CLIP on the synthetic shapes dataset (generated if
    /// missing) with the embedded `configs/quickstart.toml`, and report its recall.
    Quickstart {
        /// Directory that holds (or will hold) `datasets/` and `runs/`.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// auto, cuda, cpu or tch (default: auto).
        #[arg(long, value_parser = backend::parse_backend)]
        backend: Option<backend::BackendChoice>,
        /// Override a config value, e.g. `--set train.epochs=2` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Plain progress lines even on a terminal.
        #[arg(long)]
        plain: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Forward and training-step throughput of the seed model (ResNet-50 + DistilBERT).
    Step(bench::StepArgs),
}

fn main() {
    allocator::keep_freed_memory();
    let cli = Cli::parse();
    kernels::start_counting();
    if let Err(err) = run(cli) {
        eprintln!("error: {}", error_chain(&err));
        std::process::exit(1);
    }
}

/// The error and its causes, `: `-separated, each said once: the libraries' errors name their
/// source in their own message (path first, then why), so a cause already there is not repeated.
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let said = cause.to_string();
        if !text.contains(&said) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&said);
        }
    }
    text
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data { command } => data::run(command),
        Command::Train(args) => train::run(args).map(|_| ()),
        Command::Embed(args) => infer::embed(args),
        Command::Search(args) => infer::search_cmd(args),
        Command::ZeroShot(args) => infer::zero_shot(args),
        Command::Eval(args) => infer::eval(args),
        Command::Probe(args) => probe::probe(args),
        Command::Export(args) => export::export(args),
        Command::Import(args) => import::import(args),
        Command::Serve(args) => serve::serve(args),
        Command::Runs(args) => runs::runs(args),
        Command::Sweep(args) => sweep::sweep(args),
        Command::Quickstart { dir, backend, overrides, plain } => {
            let config = clip_train::ExperimentConfig::parse(
                QUICKSTART_TOML,
                &dir.join("configs/quickstart.toml"),
                &overrides,
            )?;
            let backend = backend.unwrap_or(config.train.backend);
            train::train_config(config, backend, plain).map(|_| ())
        }
        Command::Bench { command: BenchCommand::Step(args) } => bench::step(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        // A library error whose message already holds its source, with context added on top.
        let lib = clip_train::TrainError::Io { path: "runs/x/config.toml".into(), source: io };
        let err = anyhow::Error::from(lib).context("runs/x is not a run directory");
        assert_eq!(
            error_chain(&err),
            "runs/x is not a run directory: runs/x/config.toml: no such file"
        );
        // Causes not in the message above them are all kept, in order.
        let err = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_chain(&err), "outer: middle: inner");
    }
}
