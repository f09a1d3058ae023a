//! `clip probe`: linear-probe evaluation of a run's image tower (a logistic regression on its
//! frozen image embeddings, fitted on labelled training images and scored on held-out ones).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use clip_infer::embed::list_images;
use clip_infer::probe::{
    default_grid, fit_with_sweep, seeded_order, FitOptions, FitReport, Labelled, SweepPoint,
};
use clip_infer::{Confusion, ImageLabels, LoadedModel, RunDir};

use crate::backend::{dispatch_infer, BackendChoice, InferTask};
use crate::infer::{claim_output, progress_bar, split_images, split_images_of, Output};

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Run directory of the model.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// CSV of image labels: columns `image` (file name) and --label-column.
    #[arg(long)]
    pub labels: PathBuf,
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Fit on the images of this folder (recursively) instead of the run's train split.
    #[arg(long, requires = "test_images")]
    pub train_images: Option<PathBuf>,
    /// Score on the images of this folder instead of the run's validation split.
    #[arg(long, requires = "train_images")]
    pub test_images: Option<PathBuf>,
    /// The run's split to score on: `val` (default) or `test` (Karpathy's test images).
    #[arg(long, default_value = "val", conflicts_with = "test_images")]
    pub test_split: String,
    /// Fit on at most this many training images (a seeded sample): embedding them is the cost.
    #[arg(long)]
    pub max_train_images: Option<usize>,
    /// The L2 penalty; without it the best of 1, 0.1, ..., 1e-8 is chosen on 20% of the
    /// training images.
    #[arg(long)]
    pub l2: Option<f64>,
    /// Seed of the training sample and of the validation part of the sweep.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the report (default: RUN/probe.json; an existing file elsewhere is
    /// replaced only if clip wrote it).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Replace --json even if it is a file clip did not write.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Threads that decode images.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    #[arg(long, value_parser = crate::backend::parse_backend, default_value = "auto")]
    pub backend: BackendChoice,
}

/// What `clip probe` reports (also written as JSON).
#[derive(serde::Serialize)]
struct ProbeReport {
    classes: Vec<String>,
    train_images: usize,
    test_images: usize,
    dim: usize,
    l2: f64,
    sweep: Vec<SweepPoint>,
    fit: FitReport,
    train_accuracy: f64,
    test_accuracy: f64,
    confusion: Confusion,
    skipped: Vec<String>,
}

/// Embedded, labelled images of one side (train or test).
struct LabelledEmbeddings {
    rows: Vec<f32>,
    labels: Vec<usize>,
    dim: usize,
}

impl ProbeArgs {
    /// The training and test image files.
    fn files(&self, card: &clip_infer::ModelCard) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let listed = |dir: &Path| -> Result<Vec<PathBuf>> {
            let files = list_images(dir).with_context(|| format!("listing {}", dir.display()))?;
            if files.is_empty() {
                bail!("{}: no images found", dir.display());
            }
            Ok(files)
        };
        let (mut train, test) = match (&self.train_images, &self.test_images) {
            (Some(tr), Some(te)) => (listed(tr)?, listed(te)?),
            _ => {
                if self.test_split == "train" {
                    bail!("--test-split must be `val` or `test`: the probe is fitted on `train`");
                }
                (
                    split_images(&self.checkpoint, "train", card)?,
                    split_images_of(&self.checkpoint, &self.test_split, card, "--test-split")?,
                )
            }
        };
        if train.is_empty() || test.is_empty() {
            bail!(
                "{}: the probe needs training and test images (train {}, test {})",
                self.checkpoint.display(),
                train.len(),
                test.len()
            );
        }
        if let Some(max) = self.max_train_images.filter(|&m| m < train.len()) {
            if max < 2 {
                bail!("--max-train-images must be at least 2");
            }
            let mut keep = seeded_order(train.len(), self.seed);
            keep.truncate(max);
            keep.sort_unstable();
            train = keep.into_iter().map(|i| train[i].clone()).collect();
        }
        Ok((train, test))
    }
}

impl InferTask for ProbeArgs {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, backend: &str) -> Result<()> {
        if let Some(l2) = self.l2.filter(|l| !(*l >= 0.0 && l.is_finite())) {
            bail!("--l2 must be a finite number >= 0, not {l2}");
        }
        // The default, RUN/probe.json, is a file of the run's; a path given is checked.
        if let Some(path) = &self.json {
            claim_output(path, self.overwrite, "--json", Output::Json)?;
        }
        let model = LoadedModel::<B>::from_run(&self.checkpoint, &device)?;
        let labels = ImageLabels::read(&self.labels, &self.label_column)?;
        let classes = labels.classes();
        if classes.len() < 2 {
            bail!(
                "{}: column `{}` names {} class(es); a probe needs at least 2",
                self.labels.display(),
                self.label_column,
                classes.len()
            );
        }
        let (train_files, test_files) = self.files(&model.card)?;
        println!(
            "linear probe of {}: {} training and {} test images, {} classes ({backend})",
            model.weights.display(),
            train_files.len(),
            test_files.len(),
            classes.len()
        );
        let mut skipped = Vec::new();
        let mut embed = |files: &[PathBuf], what: &str| -> Result<LabelledEmbeddings> {
            let bar = progress_bar(files.len(), what);
            let emb =
                model.embed_images(files, self.batch, self.workers, &device, &mut |done, _| {
                    bar.set_position(done as u64)
                });
            bar.finish_and_clear();
            for (p, reason) in &emb.skipped {
                eprintln!("skipped {}: {reason}", p.display());
                skipped.push(format!("{}: {reason}", p.display()));
            }
            let names: Vec<String> = emb.paths.iter().map(|p| p.display().to_string()).collect();
            let labels =
                labels.indices(names.iter().map(String::as_str), &classes, &self.labels)?;
            Ok(LabelledEmbeddings { rows: emb.rows, labels, dim: emb.dim })
        };
        let train = embed(&train_files, "embedding training images")?;
        let test = embed(&test_files, "embedding test images")?;
        if train.labels.len() < 2 || test.labels.is_empty() {
            bail!(
                "too few readable images: {} training, {} test",
                train.labels.len(),
                test.labels.len()
            );
        }
        if train.rows.iter().chain(&test.rows).any(|v| !v.is_finite()) {
            bail!("{}: the model gives non-finite image embeddings (NaN or infinity); no probe can be fitted", model.weights.display());
        }
        let train_set = Labelled { features: &train.rows, labels: &train.labels, dim: train.dim };
        let test_set = Labelled { features: &test.rows, labels: &test.labels, dim: test.dim };

        let grid = self.l2.map_or_else(default_grid, |l| vec![l]);
        let fit =
            fit_with_sweep(train_set, classes.len(), &grid, 0.2, self.seed, FitOptions::default());
        if !fit.sweep.is_empty() {
            let points: Vec<String> = fit
                .sweep
                .iter()
                .map(|p| format!("{:.0e} {:.1}%", p.l2, p.validation_accuracy * 100.0))
                .collect();
            println!("L2 penalty by accuracy on 20% of the training images: {}", points.join(", "));
        }
        println!(
            "L2 {:.0e}: L-BFGS {} iterations ({})",
            fit.l2,
            fit.report.iterations,
            if fit.report.converged { "converged" } else { "iteration limit" }
        );
        let mut confusion = Confusion::new(&classes);
        for (p, &t) in fit.probe.predict(&test.rows).iter().zip(&test.labels) {
            confusion.add(t, *p);
        }
        let train_accuracy = fit.probe.accuracy(train_set);
        let test_accuracy = fit.probe.accuracy(test_set);
        println!(
            "train accuracy {:.2}%   test accuracy {:.2}%\n{}",
            train_accuracy * 100.0,
            test_accuracy * 100.0,
            confusion.table()
        );
        let report = ProbeReport {
            classes,
            train_images: train.labels.len(),
            test_images: test.labels.len(),
            dim: train.dim,
            l2: fit.l2,
            sweep: fit.sweep,
            fit: fit.report,
            train_accuracy,
            test_accuracy,
            confusion,
            skipped,
        };
        let path =
            self.json.clone().unwrap_or_else(|| RunDir::new(&self.checkpoint).probe_report());
        clip_data::fs::write_atomic(&path, &clip_data::fs::tagged_json("probe", &report)?)?;
        println!("wrote {}", path.display());
        Ok(())
    }
}

pub fn probe(args: ProbeArgs) -> Result<()> {
    dispatch_infer(args.backend, args)
}
