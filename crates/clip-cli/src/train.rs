//! `clip train`: run an experiment from a config file, or resume a run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use clip_train::dashboard::Dashboard;
use clip_train::progress::PlainProgress;
use clip_train::{ExperimentConfig, Observer, RunDir, TrainSummary};

use crate::backend::{dispatch_with, BackendChoice, BackendTask};
use crate::interrupt::StopOnSignal;

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Experiment config (TOML).
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. `--set train.lr=3e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run in this directory from its latest checkpoint.
    #[arg(long, conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Write the run here instead of `<runs_dir>/<name>`: a missing or empty folder.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// auto, cuda, cpu or tch (default: the config's `train.backend`).
    #[arg(long, value_parser = crate::backend::parse_backend)]
    pub backend: Option<BackendChoice>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Train data-parallel on these devices, e.g. `--devices 0,1` (`train.devices`): one replica
    /// per device, each with its share of every batch.
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub devices: Vec<usize>,
    /// Machines training together (`train.nodes`); each runs this command with its own
    /// `--node-rank`, the same config and `--coordinator`.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// This machine's place, 0 to nodes − 1 (`train.node_rank`). Node 0 writes the run; the
    /// others write nothing (with `--resume`, they read node 0's run directory).
    #[arg(long)]
    pub node_rank: Option<usize>,
    /// `HOST:PORT` where node 0 listens for the other nodes (`train.coordinator`).
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
}

/// Whether `dir` holds only what a `clip train` killed before writing its `config.toml` leaves:
/// its lock, its split and temporary files of its interrupted writes.
fn started_but_never_configured(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().all(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        e.file_type().is_ok_and(|t| t.is_file())
            && (name == ".lock"
                || name == clip_infer::run_dir::SPLIT
                || clip_data::fs::interrupted_write(&name).is_some())
    })
}

/// A resolved request: config, run directory, and whether it resumes.
struct Job {
    config: ExperimentConfig,
    run: RunDir,
    resume: bool,
    plain: bool,
}

pub fn run(mut args: TrainArgs) -> Result<()> {
    if !args.devices.is_empty() {
        let list: Vec<String> = args.devices.iter().map(usize::to_string).collect();
        args.overrides.push(format!("train.devices=[{}]", list.join(", ")));
    }
    for (key, value) in [("nodes", args.nodes), ("node_rank", args.node_rank)] {
        if let Some(v) = value {
            args.overrides.push(format!("train.{key}={v}"));
        }
    }
    if let Some(v) = &args.coordinator {
        args.overrides.push(format!("train.coordinator={}", toml_string(v)));
    }
    if args.node_rank.unwrap_or(0) > 0 {
        return follow(args);
    }
    let (config, run, resume) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            let run = RunDir::new(dir);
            let config =
                ExperimentConfig::load(&run.config(), &args.overrides).with_context(|| {
                    format!(
                        "{} is not a run directory (no readable {})",
                        dir.display(),
                        clip_infer::run_dir::CONFIG
                    )
                })?;
            (config, run, true)
        }
        (None, Some(path)) => {
            let config = ExperimentConfig::load(path, &args.overrides)?;
            let run = match &args.run_dir {
                Some(dir) => {
                    anyhow::ensure!(
                        !RunDir::new(dir).config().exists(),
                        "{} already holds a run; use --resume {} to continue it",
                        dir.display(),
                        dir.display()
                    );
                    // A run writes split.json, model.json, metrics/, checkpoints/...: never
                    // over or among a folder's own files. A run killed before it wrote its
                    // config left only its own first files: that folder is taken again.
                    clip_data::fs::claim_dir(
                        dir,
                        "a training run",
                        started_but_never_configured,
                        "Give --run-dir a new or empty folder.",
                    )?;
                    RunDir::new(dir)
                }
                None => RunDir::create_unique(&config.runs_dir, &config.name)?,
            };
            (config, run, false)
        }
        (None, None) => anyhow::bail!("give --config FILE or --resume RUN_DIR"),
    };
    let backend = args.backend.unwrap_or(config.train.backend);
    train_job(Job { config, run, resume, plain: args.plain }, backend).map(|_| ())
}

/// A TOML string of `s` for `--set`.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A node other than node 0: takes node 0's steps, writes nothing.
fn follow(args: TrainArgs) -> Result<()> {
    let (config, run, resume) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            let run = RunDir::new(dir);
            let config = ExperimentConfig::load(&run.config(), &args.overrides)
                .with_context(|| format!("{} is not a run directory", dir.display()))?;
            (config, run, true)
        }
        (None, Some(path)) => {
            let config = ExperimentConfig::load(path, &args.overrides)?;
            // Not written: only named in messages.
            let run = RunDir::new(config.runs_dir.join(&config.name));
            (config, run, false)
        }
        (None, None) => anyhow::bail!("give --config FILE or --resume RUN_DIR"),
    };
    let backend = args.backend.unwrap_or(config.train.backend);
    let recompute = config.train.recompute_activations;
    let steps = dispatch_with(backend, recompute, FollowJob { config, run, resume })?;
    println!("{steps} steps taken; node 0 ended the run");
    Ok(())
}

struct FollowJob {
    config: ExperimentConfig,
    run: RunDir,
    resume: bool,
}

impl BackendTask for FollowJob {
    type Output = usize;

    fn run<B: AutodiffBackend>(self, device: B::Device, _backend_name: &str) -> Result<usize> {
        let mut plain = PlainProgress::new(std::io::stdout(), Duration::from_secs(5));
        clip_train::follow::<B>(&self.config, &self.run, self.resume, &device, &mut plain)
            .map_err(Into::into)
    }
}

/// Trains a config as the quickstart does (into a fresh run directory under its runs_dir).
pub fn train_config(
    config: ExperimentConfig,
    backend: BackendChoice,
    plain: bool,
) -> Result<TrainSummary> {
    let run = RunDir::create_unique(&config.runs_dir, &config.name)?;
    train_in(config, run, backend, plain)
}

/// Trains a config into a new run directory made for it.
pub fn train_in(
    config: ExperimentConfig,
    run: RunDir,
    backend: BackendChoice,
    plain: bool,
) -> Result<TrainSummary> {
    train_job(Job { config, run, resume: false, plain }, backend)
}

fn train_job(job: Job, backend: BackendChoice) -> Result<TrainSummary> {
    let recompute = job.config.train.recompute_activations;
    let summary = dispatch_with(backend, recompute, job)?;
    print_summary(&summary);
    if let Some(signal) = crate::interrupt::requested() {
        // Stopped by a signal, checkpoint saved: exit as a process killed by it would.
        std::process::exit(128 + signal);
    }
    Ok(summary)
}

impl BackendTask for Job {
    type Output = TrainSummary;

    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        backend_name: &str,
    ) -> Result<TrainSummary> {
        let interactive = std::io::stdout().is_terminal() && !self.plain;
        let mut dashboard;
        let mut plain;
        let observer: &mut dyn Observer = if interactive {
            dashboard =
                Dashboard::new().context("cannot start the terminal dashboard (try --plain)")?;
            &mut dashboard
        } else {
            plain = PlainProgress::new(std::io::stdout(), Duration::from_secs(5));
            &mut plain
        };
        crate::interrupt::install();
        let mut on_signal = StopOnSignal { inner: observer, announced: false };
        let mut watch;
        let observer: &mut dyn Observer = if backend_name == "cuda" {
            watch = FirstCudaStep {
                inner: &mut on_signal,
                heartbeat: None,
                plain: !interactive,
                first_done: false,
            };
            &mut watch
        } else {
            &mut on_signal
        };
        clip_train::train::<B>(
            &self.config,
            &self.run,
            self.resume,
            &device,
            backend_name,
            observer,
        )
        .map_err(Into::into)
    }
}

/// On CUDA the first step compiles the model's kernels, which can take minutes: say so at the
/// start, report progress (kernels compiled so far) every 10 s in plain mode, and the counts
/// once the first step is done. Everything else goes to the wrapped observer.
struct FirstCudaStep<'a> {
    inner: &'a mut dyn Observer,
    heartbeat: Option<crate::kernels::Heartbeat>,
    plain: bool,
    first_done: bool,
}

impl Observer for FirstCudaStep<'_> {
    fn on_start(&mut self, info: &clip_train::RunInfo) {
        self.inner.on_start(info);
        self.inner.on_message(&format!(
            "CUDA: the first step compiles the model's kernels (minutes on a cold cache; kernel cache: {})",
            crate::kernels::prepare_cuda()
        ));
        if self.plain {
            self.heartbeat = Some(crate::kernels::Heartbeat::start("first CUDA step", 10, "cuda"));
        }
    }
    fn on_step(&mut self, m: &clip_train::metrics::StepMetrics) {
        self.heartbeat = None;
        if !std::mem::replace(&mut self.first_done, true) {
            self.inner.on_message(&format!("first CUDA step done: {}", crate::kernels::counts()));
        }
        self.inner.on_step(m);
    }
    fn on_epoch(&mut self, m: &clip_train::metrics::EpochMetrics) {
        self.inner.on_epoch(m);
    }
    fn on_checkpoint(&mut self, path: &Path, kind: clip_train::CheckpointKind) {
        self.inner.on_checkpoint(path, kind);
    }
    fn on_message(&mut self, msg: &str) {
        self.inner.on_message(msg);
    }
    fn should_stop(&mut self) -> bool {
        self.inner.should_stop()
    }
    fn on_finish(&mut self, summary: &TrainSummary) {
        self.inner.on_finish(summary);
    }
}

fn print_summary(s: &TrainSummary) {
    let state = if s.completed { "finished" } else { "stopped" };
    println!("{state} after {} steps in {:.0} s: {}", s.steps, s.elapsed_s, s.run_dir);
    if s.skipped_images > 0 {
        println!(
            "  {} unreadable training image(s) left out of their batches (data.skip_unreadable)",
            s.skipped_images
        );
    }
    if let Some(reason) = &s.stopped {
        println!("  {reason}; continue with: clip train --resume {}", s.run_dir);
    }
    if let Some(e) = &s.last_epoch {
        let r = &e.val.retrieval;
        println!(
            "  validation ({}, {} images, {} captions): loss {:.4}",
            e.label(),
            r.images,
            r.captions,
            e.val.loss
        );
        println!("  {r}");
    }
    if let (Some(step), Some(score)) = (s.best_step, s.best_score) {
        let by = s.best_by.name();
        println!("  best model (checkpoint.best_by = {by}): step {step}, {score:.4}");
        if s.early_stopped {
            println!("  early stop: no better {by} since step {step} (train.early_stop_patience)");
        }
    }
    if s.skipped_steps > 0 {
        println!("  {} fp16 steps skipped (non-finite gradients)", s.skipped_steps);
    }
    if s.completed {
        println!("  curves: {}", RunDir::new(&s.run_dir).curves().display());
    }
    let kernels = crate::kernels::counts();
    if kernels.any() {
        println!("  CUDA kernels: {kernels} (kernel cache: {})", crate::kernels::prepare_cuda());
    }
}
