//! The data pipeline's error type: every variant names the file (and line or key) at fault.

use std::path::PathBuf;

/// Everything that can go wrong between a config file and a batch of tensors.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: the captions file is empty (no header line)")]
    EmptyCaptions { path: PathBuf },

    #[error("{path}:{line}: {message}")]
    CaptionsFormat { path: PathBuf, line: usize, message: String },

    #[error("{path}: no usable caption rows ({skipped} rows skipped)")]
    NoCaptions { path: PathBuf, skipped: usize },

    #[error(
        "{count} image(s) named in {captions} are missing from {images_dir}; first: {first} \
         (line {line}); set `data.skip_missing = true` to train without them"
    )]
    MissingImages {
        captions: PathBuf,
        images_dir: PathBuf,
        count: usize,
        first: PathBuf,
        line: usize,
    },

    #[error("{path}: cannot decode image: {source}")]
    ImageDecode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },

    #[error("{path}: cannot resize image: {message}")]
    ImageResize { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    /// A file that could not be read, parsed or written as it should (`what`), and why (`source`).
    #[error("{path}: {what}: {source}")]
    File {
        path: PathBuf,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Like [`DataError::File`], at a line of the file.
    #[error("{path}:{line}: {what}: {source}")]
    FileAtLine {
        path: PathBuf,
        line: usize,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("tokenizer {source_name}: {message}")]
    Tokenizer { source_name: String, message: String },

    /// The `tokenizers` library refused a file or a setting (`what`: what was being done).
    #[error("tokenizer {source_name}: {what}: {source}")]
    TokenizerLibrary {
        source_name: String,
        what: &'static str,
        #[source]
        source: tokenizers::Error,
    },

    #[error("{path}: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("{path}:{line}: {source}")]
    Csv {
        path: PathBuf,
        line: usize,
        #[source]
        source: csv::Error,
    },

    #[error("{path}: {message}")]
    Split { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    Synth { path: PathBuf, message: String },

    /// Writing would overwrite or mix with files clip did not create (see [`crate::fs`]).
    #[error("{path}: {message}")]
    NotOurs { path: PathBuf, message: String },

    #[error("data loader worker failed on batch {batch}: {message}")]
    Worker { batch: usize, message: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
