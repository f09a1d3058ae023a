//! The trainer's error type.

use std::path::PathBuf;

/// What stops a training run; each variant names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("validation failed after step {step}: {source}; the training so far is saved in {checkpoint} (fix the cause, then --resume)")]
    Validation {
        step: usize,
        checkpoint: PathBuf,
        #[source]
        source: Box<TrainError>,
    },
    #[error(transparent)]
    Data(#[from] clip_data::DataError),
    #[error(transparent)]
    Import(#[from] clip_model::import::ImportError),
    #[error(transparent)]
    Infer(#[from] clip_infer::InferError),
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// burn's recorder could not write or read a checkpoint's weights or optimizer state.
    #[error("{path}: {what}: {source}")]
    Record {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: burn::record::RecorderError,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {source}")]
    Plot {
        path: PathBuf,
        #[source]
        source: clip_plot::PlotError,
    },
    /// A step's loss or gradient was infinite or NaN (`train.on_nonfinite`); the step was not
    /// applied, so the weights saved with the run are the last finite ones.
    #[error("training diverged at step {step}: {what}{}", match saved {
        Some(dir) => format!("; the weights before it are saved in {} (resume from there with a lower train.lr, train.grad_clip_norm, or train.on_nonfinite = \"skip\")", dir.display()),
        None => String::new(),
    })]
    Diverged { step: usize, what: String, saved: Option<PathBuf> },
    /// The replicas of a multi-device run could not exchange their tensors.
    #[error("replica {rank}: {message}")]
    Collective { rank: usize, message: String },
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
