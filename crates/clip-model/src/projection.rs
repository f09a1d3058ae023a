//! The seed's projection head: Linear → GELU → Linear → Dropout → residual → LayerNorm.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::precision::Precision;

/// `ProjectionHead(embedding_dim, projection_dim=256, dropout=0.1)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionHeadConfig {
    pub input_dim: usize,
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
}

fn default_projection_dim() -> usize {
    256
}
fn default_dropout() -> f64 {
    0.1
}

impl ProjectionHeadConfig {
    pub fn new(input_dim: usize) -> Self {
        Self { input_dim, projection_dim: default_projection_dim(), dropout: default_dropout() }
    }

    /// PyTorch's default initialization (uniform ±1/√fan_in, as `nn.Linear`).
    pub fn init<B: Backend>(&self, device: &B::Device) -> ProjectionHead<B> {
        ProjectionHead {
            projection: LinearConfig::new(self.input_dim, self.projection_dim).init(device),
            fc: LinearConfig::new(self.projection_dim, self.projection_dim).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            layer_norm: LayerNormConfig::new(self.projection_dim).init(device),
        }
    }
}

/// Maps tower features into the shared embedding space.
#[derive(Module, Debug)]
pub struct ProjectionHead<B: Backend> {
    pub projection: Linear<B>,
    pub fc: Linear<B>,
    pub dropout: Dropout,
    pub layer_norm: LayerNorm<B>,
}

impl<B: Backend> ProjectionHead<B> {
    /// `[batch, input_dim]` → `[batch, projection_dim]`.
    pub fn forward(&self, x: Tensor<B, 2>, p: Precision) -> Tensor<B, 2> {
        let projected = p.linear(&self.projection, x);
        let x = p.linear(&self.fc, gelu(projected.clone()));
        self.layer_norm.forward(self.dropout.forward(x) + projected)
    }
}
