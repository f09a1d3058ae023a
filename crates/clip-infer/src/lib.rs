//! What users do with a trained CLIP model: load it from a run directory ([`card`]; the
//! directory's layout, which training writes too, is [`run_dir`]'s), embed images
//! and texts ([`embed`]) into an on-disk index ([`index`]), search it ([`search`]; loaded once for
//! many queries: [`service`]), classify
//! zero-shot ([`zeroshot`]), fit linear probes on
//! image features ([`probe`]), evaluate retrieval on a split ([`evaluate`], which training also
//! uses for validation), and export it as ONNX files ([`export`]).

pub mod card;
pub mod embed;
pub mod error;
pub mod evaluate;
pub mod export;
pub mod index;
pub mod labels;
pub mod matmul;
pub mod probe;
pub mod run_dir;
pub mod search;
pub mod service;
pub mod zeroshot;

pub use card::{LoadedModel, ModelCard};
pub use error::{InferError, Result};
pub use evaluate::{evaluate, evaluate_with, EvalExtras, Evaluation};
pub use index::{EmbeddingIndex, Refresh};
pub use labels::ImageLabels;
pub use probe::{fit_with_sweep, LinearProbe, ProbeFit};
pub use run_dir::{CheckpointDir, RunDir};
pub use search::{search, Hit};
pub use service::{Match, SearchService};
pub use zeroshot::{Confusion, ZeroShotClassifier};
