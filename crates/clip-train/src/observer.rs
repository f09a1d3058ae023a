//! What a run tells the outside while it trains: the [`Observer`] callbacks (the dashboard, plain
//! progress lines, a test's probe), the facts given at the start ([`RunInfo`]), the kinds of
//! checkpoint it writes ([`CheckpointKind`]) and how it ended ([`TrainSummary`]).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::BestBy;
use crate::metrics::{EpochMetrics, StepMetrics};

/// What a run shows while it trains: the dashboard, plain progress lines, or nothing.
pub trait Observer {
    fn on_start(&mut self, _info: &RunInfo) {}
    fn on_step(&mut self, _m: &StepMetrics) {}
    fn on_epoch(&mut self, _m: &EpochMetrics) {}
    fn on_checkpoint(&mut self, _path: &Path, _kind: CheckpointKind) {}
    fn on_message(&mut self, _msg: &str) {}
    /// Polled after every step: true asks for a graceful stop (checkpoint, then exit).
    fn should_stop(&mut self) -> bool {
        false
    }
    fn on_finish(&mut self, _summary: &TrainSummary) {}
}

/// An observer that shows nothing.
pub struct Silent;
impl Observer for Silent {}

/// Why a checkpoint (or the exported model) was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Every `checkpoint.every_steps` inside an epoch.
    Periodic,
    /// At the end of an epoch.
    Epoch,
    /// After a validation inside an epoch.
    Validation,
    /// The run's last step, or early stopping's.
    Final,
    /// A graceful stop was asked for.
    Stop,
    /// The best model so far (`checkpoints/best`).
    Best,
    /// A validation failed: the training done so far is kept before the error is reported.
    BeforeFailing,
    /// The finished run's model with upstream key names (`model.safetensors`).
    Export,
}

impl fmt::Display for CheckpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Periodic => "periodic",
            Self::Epoch => "epoch",
            Self::Validation => "validation",
            Self::Final => "final",
            Self::Stop => "stop",
            Self::Best => "best",
            Self::BeforeFailing => "before failing",
            Self::Export => "export",
        })
    }
}

/// Facts about a run, given to the observer at the start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_dir: String,
    pub backend: String,
    pub train_pairs: usize,
    pub val_pairs: usize,
    pub val_images: usize,
    pub batch_size: usize,
    /// Parts each batch's forward and backward passes are split into (1: whole).
    #[serde(default = "one")]
    pub micro_batches: usize,
    /// Data-parallel replicas (one per device) sharing each batch.
    #[serde(default = "one")]
    pub replicas: usize,
    pub batches_per_epoch: usize,
    pub epochs: usize,
    pub total_steps: usize,
    pub start_step: usize,
    pub parameters: usize,
    pub precision: String,
    /// Past steps and epochs when resuming, so curves can continue.
    pub history_steps: Vec<StepMetrics>,
    pub history_epochs: Vec<EpochMetrics>,
}

fn one() -> usize {
    1
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub run_dir: String,
    pub steps: usize,
    pub completed: bool,
    /// Why it stopped early, if it did.
    pub stopped: Option<String>,
    /// Ended (completed) by `train.early_stop_patience` before its last step.
    #[serde(default)]
    pub early_stopped: bool,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// The metric that picked the best model, and its value there.
    #[serde(default)]
    pub best_by: BestBy,
    #[serde(default)]
    pub best_score: Option<f64>,
    /// The last validation's metrics.
    pub last_epoch: Option<EpochMetrics>,
    pub skipped_steps: usize,
    /// Training images left out of their batches because they could not be read (this session).
    #[serde(default)]
    pub skipped_images: usize,
    pub elapsed_s: f64,
}
