//! CLIP models in Burn: a ResNet image tower ([`resnet`]), a DistilBERT/BERT text tower
//! ([`text`]), the seed's projection heads ([`projection`]), the model and its temperature
//! ([`clip`]), contrastive losses ([`loss`]), retrieval metrics ([`retrieval`]), mixed precision without autocast ([`precision`]),
//! weight import/export with upstream key names ([`import`]), and ONNX export of the towers ([`onnx`]).

pub mod batch_norm;
pub mod clip;
pub mod conv;
mod feature_rows;
pub mod flops;
pub mod image_cache;
pub mod import;
#[cfg(feature = "tch")]
pub mod libtorch;
pub mod loss;
pub mod onnx;
pub mod onnx_proto;
pub mod precision;
pub mod projection;
pub mod resnet;
pub mod retrieval;
pub mod text;
pub mod text_cache;
pub mod torch_file;

pub use clip::{ClipConfig, ClipModel, ClipOutput};
pub use feature_rows::FeatureCache;
pub use image_cache::ImageFeatureCache;
pub use loss::ContrastiveLoss;
pub use precision::Precision;
pub use projection::{ProjectionHead, ProjectionHeadConfig};
pub use resnet::Stem;
pub use resnet::{BlockKind, ResNet, ResNetConfig};
pub use retrieval::{retrieval_metrics, RetrievalMetrics};
pub use text::{Pooling, TextTransformer, TextTransformerConfig};
pub use text_cache::TextFeatureCache;
