//! The inference error type.

use std::path::PathBuf;

/// What can go wrong using a trained model; each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Run { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },
    #[error(transparent)]
    Data(#[from] clip_data::DataError),
    #[error(transparent)]
    Import(#[from] clip_model::import::ImportError),
    #[error("{0}")]
    Input(String),
}

impl InferError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        InferError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = InferError> = std::result::Result<T, E>;
