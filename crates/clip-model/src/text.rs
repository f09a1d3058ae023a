//! BERT-family text tower: DistilBERT (the seed's: no token types, no dropout after the
//! attention projection) and BERT/MiniLM (token-type embeddings, hidden dropout after the
//! attention projection). Post-norm layers, GELU, learned positions.
//!
//! Parameter paths follow Hugging Face's DistilBERT (`embeddings.word_embeddings`,
//! `transformer.layer.N.attention.q_lin`, `sa_layer_norm`, `ffn.lin1`, `output_layer_norm`), so a
//! DistilBERT checkpoint loads with one rename (`embeddings.LayerNorm` is `embeddings.layer_norm`);
//! BERT checkpoints are remapped in `import`.
//! References: Sanh et al. 2019 (arXiv:1910.01108), Devlin et al. 2018 (arXiv:1810.04805),
//! transformers `models/distilbert/modeling_distilbert.py` and `models/bert/modeling_bert.py`.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::precision::Precision;

/// How a sequence of hidden states becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The first token's state (`[CLS]`), as the seed does.
    #[default]
    Cls,
    /// The mean over real tokens (attention-masked), as sentence-transformers' MiniLM does.
    Mean,
}

/// Shape and flavour of a BERT-family encoder. Field names follow HF `config.json` where they can.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextTransformerConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// Token-type vocabulary (2 for BERT, 0 for DistilBERT: no token-type embeddings).
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Embedding, hidden and feed-forward dropout.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
    /// Dropout after the attention output projection (BERT has it, DistilBERT does not).
    #[serde(default)]
    pub attention_output_dropout: bool,
    #[serde(default)]
    pub pooling: Pooling,
}

fn default_ln_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}

impl TextTransformerConfig {
    /// distilbert-base-uncased: 6 layers, hidden 768, 12 heads, FFN 3072.
    pub fn distilbert_base() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_layers: 6,
            num_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            type_vocab_size: 0,
            layer_norm_eps: 1e-12,
            dropout: 0.1,
            attention_dropout: 0.1,
            attention_output_dropout: false,
            pooling: Pooling::Cls,
        }
    }

    /// One 8-wide layer, two heads, over BERT's vocabulary (DistilBERT's layout): a tower small
    /// enough for unit tests on the CPU.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 8,
            num_layers: 1,
            num_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 8,
            ..Self::distilbert_base()
        }
    }

    /// sentence-transformers/all-MiniLM-L6-v2: a 6-layer BERT, hidden 384, mean pooling.
    pub fn minilm_l6() -> Self {
        Self {
            hidden_size: 384,
            num_heads: 12,
            intermediate_size: 1536,
            type_vocab_size: 2,
            attention_output_dropout: true,
            pooling: Pooling::Mean,
            ..Self::distilbert_base()
        }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> TextTransformer<B> {
        assert!(
            self.num_heads > 0 && self.hidden_size.is_multiple_of(self.num_heads),
            "hidden_size {} is not a multiple of num_heads {}",
            self.hidden_size,
            self.num_heads
        );
        // HF BERT-family init: N(0, 0.02) weights, zero biases, unit LayerNorms.
        let normal = Initializer::Normal { mean: 0.0, std: 0.02 };
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o).with_initializer(normal.clone()).init(device)
        };
        let ln = || {
            LayerNormConfig::new(self.hidden_size).with_epsilon(self.layer_norm_eps).init(device)
        };
        let h = self.hidden_size;
        let embedding =
            |n: usize| EmbeddingConfig::new(n, h).with_initializer(normal.clone()).init(device);
        TextTransformer {
            embeddings: TextEmbeddings {
                word_embeddings: embedding(self.vocab_size),
                position_embeddings: embedding(self.max_position_embeddings),
                token_type_embeddings: (self.type_vocab_size > 0)
                    .then(|| embedding(self.type_vocab_size)),
                layer_norm: ln(),
                dropout: DropoutConfig::new(self.dropout).init(),
            },
            transformer: Layers {
                layer: (0..self.num_layers)
                    .map(|_| TransformerLayer {
                        attention: SelfAttention {
                            q_lin: linear(h, h),
                            k_lin: linear(h, h),
                            v_lin: linear(h, h),
                            out_lin: linear(h, h),
                            num_heads: self.num_heads,
                            dropout: DropoutConfig::new(self.attention_dropout).init(),
                            output_dropout: DropoutConfig::new(if self.attention_output_dropout {
                                self.dropout
                            } else {
                                0.0
                            })
                            .init(),
                        },
                        sa_layer_norm: ln(),
                        ffn: FeedForward {
                            lin1: linear(h, self.intermediate_size),
                            lin2: linear(self.intermediate_size, h),
                            dropout: DropoutConfig::new(self.dropout).init(),
                        },
                        output_layer_norm: ln(),
                    })
                    .collect(),
            },
            pooling: self.pooling,
        }
    }
}

/// Word + position (+ token type) embeddings, LayerNorm, dropout.
#[derive(Module, Debug)]
pub struct TextEmbeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Option<Embedding<B>>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

/// Multi-head self-attention with separate q/k/v projections.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub q_lin: Linear<B>,
    pub k_lin: Linear<B>,
    pub v_lin: Linear<B>,
    pub out_lin: Linear<B>,
    pub num_heads: usize,
    pub dropout: Dropout,
    pub output_dropout: Dropout,
}

/// Linear → GELU → Linear → dropout.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub lin1: Linear<B>,
    pub lin2: Linear<B>,
    pub dropout: Dropout,
}

/// One post-norm transformer layer.
#[derive(Module, Debug)]
pub struct TransformerLayer<B: Backend> {
    pub attention: SelfAttention<B>,
    pub sa_layer_norm: LayerNorm<B>,
    pub ffn: FeedForward<B>,
    pub output_layer_norm: LayerNorm<B>,
}

/// The layer stack (`transformer.layer.N` in DistilBERT's naming).
#[derive(Module, Debug)]
pub struct Layers<B: Backend> {
    pub layer: Vec<TransformerLayer<B>>,
}

/// A BERT-family encoder returning one pooled vector per sequence.
#[derive(Module, Debug)]
pub struct TextTransformer<B: Backend> {
    pub embeddings: TextEmbeddings<B>,
    pub transformer: Layers<B>,
    #[module(skip)]
    pub pooling: Pooling,
}

impl<B: Backend> SelfAttention<B> {
    /// `x [b, l, h]`, `padding [b, l]` (true = padding) → `[b, l, h]`.
    fn forward(&self, x: Tensor<B, 3>, padding: Tensor<B, 2, Bool>, p: Precision) -> Tensor<B, 3> {
        let [b, l, h] = x.dims();
        let nh = self.num_heads;
        let dh = h / nh;
        let heads = |t: Tensor<B, 3>| t.reshape([b, l, nh, dh]).swap_dims(1, 2);
        let q = heads(p.linear(&self.q_lin, x.clone())).mul_scalar(1.0 / (dh as f64).sqrt());
        let k = heads(p.linear(&self.k_lin, x.clone()));
        let v = heads(p.linear(&self.v_lin, x));
        let scores = p.matmul(q, k.swap_dims(2, 3));
        let mask = padding.reshape([b, 1, 1, l]).expand([b, nh, l, l]);
        let scores = scores.mask_fill(mask, f32::MIN);
        let probs = self.dropout.forward(softmax(scores, 3));
        let context = p.matmul(probs, v).swap_dims(1, 2).reshape([b, l, h]);
        self.output_dropout.forward(p.linear(&self.out_lin, context))
    }
}

impl<B: Backend> TransformerLayer<B> {
    fn forward(&self, x: Tensor<B, 3>, padding: Tensor<B, 2, Bool>, p: Precision) -> Tensor<B, 3> {
        let attended = self.attention.forward(x.clone(), padding, p);
        let x = self.sa_layer_norm.forward(attended + x);
        let hidden = p.linear(&self.ffn.lin2, gelu(p.linear(&self.ffn.lin1, x.clone())));
        self.output_layer_norm.forward(self.ffn.dropout.forward(hidden) + x)
    }
}

impl<B: Backend> TextTransformer<B> {
    /// Freezes the embeddings and all but the last `n` layers (`n` ≥ the layer count: nothing).
    pub fn train_last_layers(mut self, n: usize) -> Self {
        let frozen = self.transformer.layer.len().saturating_sub(n);
        if frozen > 0 {
            self.embeddings = self.embeddings.no_grad();
        }
        let layers = std::mem::take(&mut self.transformer.layer);
        self.transformer.layer = layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| if i < frozen { layer.no_grad() } else { layer })
            .collect();
        self
    }

    /// Hidden states of every token: `ids [b, l]`, `mask [b, l]` (1 = token) → `[b, l, h]`.
    pub fn hidden_states(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
        p: Precision,
    ) -> Tensor<B, 3> {
        let [_, l] = ids.dims();
        let e = &self.embeddings;
        let max_pos = e.position_embeddings.weight.dims()[0];
        assert!(l <= max_pos, "sequence of {l} tokens exceeds max_position_embeddings {max_pos}");
        let mut x = e.word_embeddings.forward(ids);
        x = x + e.position_embeddings.weight.val().slice([0..l]).unsqueeze::<3>();
        if let Some(types) = &e.token_type_embeddings {
            // Single-segment input: every token has type 0.
            x = x + types.weight.val().slice([0..1]).unsqueeze::<3>();
        }
        let mut x = e.dropout.forward(e.layer_norm.forward(x));
        let padding = mask.equal_elem(0);
        for layer in &self.transformer.layer {
            x = layer.forward(x, padding.clone(), p);
        }
        x
    }

    /// One vector per sequence (`[CLS]` state or masked mean): `[b, h]`.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
        p: Precision,
    ) -> Tensor<B, 2> {
        let [b, l] = ids.dims();
        let states = self.hidden_states(ids, mask.clone(), p);
        let h = states.dims()[2];
        match self.pooling {
            Pooling::Cls => states.slice([0..b, 0..1]).reshape([b, h]),
            Pooling::Mean => {
                let weights = mask.float().reshape([b, l, 1]);
                let summed = (states * weights.clone()).sum_dim(1).reshape([b, h]);
                let counts = weights.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
                summed / counts
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn tiny(pooling: Pooling) -> TextTransformerConfig {
        TextTransformerConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: 32,
            max_position_embeddings: 20,
            pooling,
            dropout: 0.0,
            attention_dropout: 0.0,
            ..TextTransformerConfig::distilbert_base()
        }
    }

    #[test]
    fn distilbert_base_has_hf_parameter_count() {
        // DistilBertModel(distilbert-base-uncased) has 66,362,880 parameters.
        let m = TextTransformerConfig::distilbert_base().init::<Flex>(&Default::default());
        assert_eq!(m.num_params(), 66_362_880);
    }

    #[test]
    fn padding_does_not_change_real_tokens_or_mean_pooling() {
        let device = Default::default();
        for pooling in [Pooling::Cls, Pooling::Mean] {
            let m = tiny(pooling).init::<Flex>(&device);
            let short = m.forward(
                Tensor::from_ints([[1, 5, 7, 2]], &device),
                Tensor::from_ints([[1, 1, 1, 1]], &device),
                Precision::Fp32,
            );
            let padded = m.forward(
                Tensor::from_ints([[1, 5, 7, 2, 0, 0]], &device),
                Tensor::from_ints([[1, 1, 1, 1, 0, 0]], &device),
                Precision::Fp32,
            );
            let diff = (short - padded).abs().max().into_scalar();
            assert!(diff < 1e-5, "{pooling:?}: {diff}");
        }
    }
}
