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
    /// A file of a run or an index that could not be read or made sense of: `what` says what
    /// it was expected to be, `source` why it is not.
    #[error("{path}: {what}: {source}")]
    Unreadable {
        path: PathBuf,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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

    pub(crate) fn unreadable(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        InferError::Unreadable { path: path.into(), what: what.into(), source: source.into() }
    }
}

pub type Result<T, E = InferError> = std::result::Result<T, E>;
