//! What users do with a trained CLIP model. So far: evaluation of a split (loss, in-batch accuracy
//! and retrieval recall with the multi-caption protocol), shared with the trainer's validation.

pub mod evaluate;

pub use evaluate::{evaluate, Evaluation};
