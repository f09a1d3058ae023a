//! Config-driven CLIP training: experiment configs with overrides ([`config`]), the training loop
//! ([`trainer`]) with per-group learning rates, global-norm clipping and fp16 loss scaling
//! ([`optim`], [`grads`]), schedules ([`schedule`]), atomic checkpoints and resume
//! ([`checkpoint`]), run directories from outside weights ([`import_run`]), metrics files and curves ([`metrics`], [`plots`]), and the live terminal
//! dashboard ([`dashboard`]), and an overview of a runs directory ([`runs`]).

pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod grads;
pub mod import_run;
pub mod metrics;
pub mod nodes;
pub mod observer;
pub mod optim;
pub mod plots;
pub mod progress;
pub mod replicas;
pub mod runs;
pub mod schedule;
pub mod step;
pub mod tensorboard;
pub mod trainer;
mod validate;
mod weights;

pub use checkpoint::RunDir;
pub use config::ExperimentConfig;
pub use error::{Result, TrainError};
pub use import_run::{import_run, ImportedRun};
pub use observer::{CheckpointKind, Observer, RunInfo, Silent, TrainSummary};
pub use trainer::{follow, train, Trainer};
pub use weights::seeded_init;
