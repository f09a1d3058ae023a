//! The CLIP model: an image tower and a text tower, each followed by a projection head into a
//! shared space, a temperature, and a contrastive loss.
//!
//! The module layout mirrors the seed notebook's (`image_encoder.model`, `image_encoder.projection`,
//! `text_encoder.model`, `text_encoder.projection`), so its checkpoints load by name.

use burn::module::{Module, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::loss::{
    infonce, logits_per_text, loss_rows, sigmoid_pairs, soft_targets, ContrastiveLoss,
};
use crate::precision::Precision;
use crate::projection::{ProjectionHead, ProjectionHeadConfig};
use crate::resnet::{ResNet, ResNetConfig};
use crate::text::{TextTransformer, TextTransformerConfig};

/// Everything needed to build a [`ClipModel`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    pub image: ResNetConfig,
    pub text: TextTransformerConfig,
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    /// Dropout inside the projection heads.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Initial temperature: logits are `similarity / temperature` (the seed: 1.0; CLIP: 0.07).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Learn the temperature as CLIP's log logit scale (clamped to `max_logit_scale`).
    #[serde(default)]
    pub learnable_temperature: bool,
    #[serde(default = "default_max_logit_scale")]
    pub max_logit_scale: f64,
    /// L2-normalize embeddings before the similarity (CLIP does; the seed does not).
    #[serde(default)]
    pub normalize_embeddings: bool,
    /// Train the image tower's trunk (the projection head always trains).
    #[serde(default = "yes")]
    pub image_trainable: bool,
    /// Train the text tower's trunk.
    #[serde(default = "yes")]
    pub text_trainable: bool,
    /// Train only the last N of the image trunk's four stages (the stem and earlier stages
    /// frozen, their batch norms on running statistics): fine-tuning pretrained weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_trainable_stages: Option<usize>,
    /// Train only the last N transformer layers of the text trunk (embeddings and earlier
    /// layers frozen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_trainable_layers: Option<usize>,
    #[serde(default)]
    pub loss: ContrastiveLoss,
    /// Initial logit bias of the sigmoid loss (SigLIP: −10, with temperature 0.1); learned
    /// with the temperature when that is learnable. Unused by the other losses.
    #[serde(default = "default_logit_bias")]
    pub logit_bias: f64,
}

fn default_logit_bias() -> f64 {
    -10.0
}

fn default_projection_dim() -> usize {
    256
}
fn default_dropout() -> f64 {
    0.1
}
fn default_temperature() -> f64 {
    1.0
}
fn default_max_logit_scale() -> f64 {
    100.0
}
fn yes() -> bool {
    true
}

impl ClipConfig {
    /// The seed's model: ResNet-50 + DistilBERT, 256-d heads, dropout 0.1, temperature 1.0.
    pub fn seed() -> Self {
        Self::new(ResNetConfig::resnet50(), TextTransformerConfig::distilbert_base())
    }

    /// Seed defaults around the given towers.
    pub fn new(image: ResNetConfig, text: TextTransformerConfig) -> Self {
        Self {
            image,
            text,
            projection_dim: default_projection_dim(),
            dropout: default_dropout(),
            temperature: default_temperature(),
            learnable_temperature: false,
            max_logit_scale: default_max_logit_scale(),
            normalize_embeddings: false,
            image_trainable: true,
            text_trainable: true,
            image_trainable_stages: None,
            text_trainable_layers: None,
            loss: ContrastiveLoss::Infonce,
            logit_bias: default_logit_bias(),
        }
    }

    /// The towers with the parameters this config does not train frozen (applied at init and
    /// again after importing weights, which come in trainable).
    pub fn freeze<B: Backend>(
        &self,
        image: ResNet<B>,
        text: TextTransformer<B>,
    ) -> (ResNet<B>, TextTransformer<B>) {
        let image = match (self.image_trainable, self.image_trainable_stages) {
            (false, _) => image.no_grad(),
            (true, Some(n)) => image.train_last_stages(n),
            (true, None) => image,
        };
        let text = match (self.text_trainable, self.text_trainable_layers) {
            (false, _) => text.no_grad(),
            (true, Some(n)) => text.train_last_layers(n),
            (true, None) => text,
        };
        (image, text)
    }

    /// Checks the values a config file can get wrong; messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature > 0.0) {
            return Err(format!("model.temperature must be positive, got {}", self.temperature));
        }
        if self.learnable_temperature && !(self.max_logit_scale >= 1.0 / self.temperature) {
            return Err(format!(
                "model.max_logit_scale ({}) is below the initial scale 1/temperature ({})",
                self.max_logit_scale,
                1.0 / self.temperature
            ));
        }
        if !self.logit_bias.is_finite() {
            return Err(format!(
                "model.logit_bias must be a finite number, got {}",
                self.logit_bias
            ));
        }
        if self.projection_dim == 0 {
            return Err("model.projection_dim must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("model.dropout must be in [0, 1), got {}", self.dropout));
        }
        if let Some(n) = self.image_trainable_stages {
            if !self.image_trainable || !(1..=4).contains(&n) {
                return Err(format!(
                    "model.image_trainable_stages must be 1 to 4 with a trainable image tower (got {n}; image_trainable = false freezes it all)"
                ));
            }
        }
        if let Some(n) = self.text_trainable_layers {
            if !self.text_trainable || !(1..=self.text.num_layers).contains(&n) {
                return Err(format!(
                    "model.text_trainable_layers must be 1 to {} with a trainable text tower (got {n}; text_trainable = false freezes it all)",
                    self.text.num_layers
                ));
            }
        }
        let t = &self.text;
        if t.num_heads == 0 || !t.hidden_size.is_multiple_of(t.num_heads) {
            return Err(format!(
                "model.text.hidden_size ({}) must be a multiple of model.text.num_heads ({})",
                t.hidden_size, t.num_heads
            ));
        }
        Ok(())
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipModel<B> {
        let head = |input: usize| {
            ProjectionHeadConfig {
                input_dim: input,
                projection_dim: self.projection_dim,
                dropout: self.dropout,
            }
            .init(device)
        };
        let (image_model, text_model) =
            self.freeze(self.image.init(device), self.text.init(device));
        let scale = Tensor::from_floats([(1.0 / self.temperature).ln() as f32], device);
        let logit_scale = Param::from_tensor(scale).set_require_grad(self.learnable_temperature);
        let logit_bias = self.loss.has_bias().then(|| {
            Param::from_tensor(Tensor::from_floats([self.logit_bias as f32], device))
                .set_require_grad(self.learnable_temperature)
        });
        ClipModel {
            image_encoder: ImageEncoder {
                model: image_model,
                projection: head(self.image.out_features()),
            },
            text_encoder: TextEncoder {
                model: text_model,
                projection: head(self.text.hidden_size),
            },
            logit_scale,
            logit_bias,
            settings: ClipSettings {
                precision: Precision::Fp32,
                normalize: self.normalize_embeddings,
                max_logit_scale: self.max_logit_scale,
                learnable_temperature: self.learnable_temperature,
                loss: self.loss,
            },
        }
    }
}

/// ResNet trunk + projection head.
#[derive(Module, Debug)]
pub struct ImageEncoder<B: Backend> {
    pub model: ResNet<B>,
    pub projection: ProjectionHead<B>,
}

/// BERT-family trunk + projection head.
#[derive(Module, Debug)]
pub struct TextEncoder<B: Backend> {
    pub model: TextTransformer<B>,
    pub projection: ProjectionHead<B>,
}

/// Run-time settings that are not weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSettings {
    pub precision: Precision,
    pub normalize: bool,
    pub max_logit_scale: f64,
    pub learnable_temperature: bool,
    pub loss: ContrastiveLoss,
}

/// A CLIP model.
#[derive(Module, Debug)]
pub struct ClipModel<B: Backend> {
    pub image_encoder: ImageEncoder<B>,
    pub text_encoder: TextEncoder<B>,
    /// Natural log of the logit scale (`ln(1 / temperature)`); trainable only when learnable.
    pub logit_scale: Param<Tensor<B, 1>>,
    /// Added to the scaled similarities by the sigmoid loss (present only with it).
    pub logit_bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub settings: ClipSettings,
}

/// Embeddings, logits and loss of one batch.
#[derive(Debug, Clone)]
pub struct ClipOutput<B: Backend> {
    /// `[batch, projection_dim]`.
    pub image_embeddings: Tensor<B, 2>,
    /// `[batch, projection_dim]`.
    pub text_embeddings: Tensor<B, 2>,
    /// `[batch, batch]`: text `i` against image `j`.
    pub logits_per_text: Tensor<B, 2>,
    /// Scalar, shape `[1]`.
    pub loss: Tensor<B, 1>,
}

impl<B: Backend> ClipModel<B> {
    /// The same model computing its heavy ops in another precision.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.settings.precision = precision;
        self
    }

    /// Pooled image-tower features, before the head: `[batch, features]`.
    pub fn image_features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.image_encoder.model.forward(images, self.settings.precision)
    }

    /// Pooled text-tower features, before the head: `[batch, hidden]`.
    pub fn text_features(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        self.text_encoder.model.forward(input_ids, attention_mask, self.settings.precision)
    }

    /// Image embeddings in the shared space (L2-normalized if the model normalizes).
    pub fn encode_image(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let p = self.settings.precision;
        self.finish(self.image_encoder.projection.forward(self.image_features(images), p))
    }

    /// Text embeddings in the shared space (L2-normalized if the model normalizes).
    pub fn encode_text(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let p = self.settings.precision;
        self.finish(
            self.text_encoder.projection.forward(self.text_features(input_ids, attention_mask), p),
        )
    }

    fn finish(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if self.settings.normalize {
            l2_normalize(x)
        } else {
            x
        }
    }

    /// `exp(logit_scale)`, the factor applied to similarities: `[1]`.
    pub fn scale(&self) -> Tensor<B, 1> {
        self.logit_scale.val().exp()
    }

    /// The sigmoid loss's logit bias: `[1]` (None for the other losses).
    pub fn bias(&self) -> Option<Tensor<B, 1>> {
        self.logit_bias.as_ref().map(|b| b.val())
    }

    /// The current temperature (`1 / scale`).
    pub fn temperature(&self) -> f64 {
        use burn::tensor::ElementConversion;
        let s: f64 = self.scale().into_scalar().elem();
        1.0 / s
    }

    /// Embeds both sides of a batch and computes the contrastive loss.
    pub fn forward(
        &self,
        images: Tensor<B, 4>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> ClipOutput<B> {
        let image_embeddings = self.encode_image(images);
        let text_embeddings = self.encode_text(input_ids, attention_mask);
        self.contrast(image_embeddings, text_embeddings)
    }

    /// Like [`forward`](Self::forward), with the text tower's pooled features given (from a
    /// [`TextFeatureCache`](crate::text_cache::TextFeatureCache)): only the text head runs.
    pub fn forward_with_text_features(
        &self,
        images: Tensor<B, 4>,
        text_features: Tensor<B, 2>,
    ) -> ClipOutput<B> {
        let image_embeddings = self.encode_image(images);
        let text_embeddings = self.encode_text_features(text_features);
        self.contrast(image_embeddings, text_embeddings)
    }

    /// Image embeddings from the image tower's pooled features (the head only).
    pub fn encode_image_features(&self, image_features: Tensor<B, 2>) -> Tensor<B, 2> {
        self.finish(self.image_encoder.projection.forward(image_features, self.settings.precision))
    }

    /// Text embeddings from the text tower's pooled features (the head only).
    pub fn encode_text_features(&self, text_features: Tensor<B, 2>) -> Tensor<B, 2> {
        self.finish(self.text_encoder.projection.forward(text_features, self.settings.precision))
    }

    /// Logits and loss of paired embeddings (row `i` of each side is a pair).
    pub fn contrast(
        &self,
        image_embeddings: Tensor<B, 2>,
        text_embeddings: Tensor<B, 2>,
    ) -> ClipOutput<B> {
        self.contrast_with(image_embeddings, text_embeddings, self.scale(), self.bias())
    }

    /// [`contrast`](Self::contrast) with the logit scale and bias given: detached ones let
    /// several backward passes over one loss (gradient accumulation) count their gradients once.
    pub fn contrast_with(
        &self,
        image_embeddings: Tensor<B, 2>,
        text_embeddings: Tensor<B, 2>,
        scale: Tensor<B, 1>,
        bias: Option<Tensor<B, 1>>,
    ) -> ClipOutput<B> {
        let mut logits =
            logits_per_text(text_embeddings.clone(), image_embeddings.clone(), scale.clone());
        if let Some(bias) = bias {
            logits = logits + bias.unsqueeze::<2>();
        }
        let loss = match self.settings.loss {
            ContrastiveLoss::Infonce => infonce(logits.clone()),
            ContrastiveLoss::SoftTargets => soft_targets(
                logits.clone(),
                text_embeddings.clone(),
                image_embeddings.clone(),
                scale.recip(),
            ),
            ContrastiveLoss::Sigmoid => sigmoid_pairs(logits.clone()),
        };
        ClipOutput { image_embeddings, text_embeddings, logits_per_text: logits, loss }
    }

    /// The share of the contrastive loss over a (gathered) batch that pairs `rows` carry
    /// ([`loss_rows`]): a replica's local loss.
    pub fn contrast_rows(
        &self,
        image_embeddings: Tensor<B, 2>,
        text_embeddings: Tensor<B, 2>,
        rows: std::ops::Range<usize>,
        scale: Tensor<B, 1>,
        bias: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 1> {
        loss_rows(self.settings.loss, image_embeddings, text_embeddings, rows, scale, bias)
    }
}

impl<B: AutodiffBackend> ClipModel<B> {
    /// Clamps a learnable logit scale to `[0, ln(max_logit_scale)]`, as CLIP does after each
    /// optimizer step. The result is a fresh leaf parameter, still trainable.
    pub fn clamp_logit_scale(mut self) -> Self {
        if !self.settings.learnable_temperature {
            return self;
        }
        let max = self.settings.max_logit_scale.ln();
        self.logit_scale =
            self.logit_scale.map(|t| Tensor::from_inner(t.inner().clamp(0.0, max)).require_grad());
        self
    }
}

/// Rows divided by their L2 norm.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resnet::Stem;
    use burn::backend::{Autodiff, Flex};
    use burn::module::ModuleVisitor;

    type B = Autodiff<Flex>;

    /// Counts float parameters by whether they are trained.
    #[derive(Default)]
    struct Trained {
        yes: usize,
        no: usize,
    }
    impl ModuleVisitor<B> for Trained {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.yes += 1;
            } else {
                self.no += 1;
            }
        }
    }
    fn trained<M: Module<B>>(m: &M) -> (usize, usize) {
        let mut t = Trained::default();
        m.visit(&mut t);
        (t.yes, t.no)
    }

    fn tiny() -> ClipConfig {
        let image = ResNetConfig { stem: Stem::Small, ..ResNetConfig::tiny(4) };
        let text = TextTransformerConfig {
            vocab_size: 50,
            num_layers: 2,
            ..TextTransformerConfig::tiny()
        };
        ClipConfig { projection_dim: 4, ..ClipConfig::new(image, text) }
    }

    #[test]
    fn partial_training_freezes_the_early_stages_and_layers() {
        let config = ClipConfig {
            image_trainable_stages: Some(1),
            text_trainable_layers: Some(1),
            ..tiny()
        };
        config.validate().unwrap();
        let m = config.init::<B>(&Default::default());
        let r = &m.image_encoder.model;
        for frozen in
            [trained(&r.conv1), trained(&r.layer1), trained(&r.layer2), trained(&r.layer3)]
        {
            assert_eq!(frozen.0, 0, "{frozen:?}");
        }
        // BatchNorm weight/bias train; running statistics never do.
        let (yes, no) = trained(&r.layer4);
        assert!(yes > 0 && no > 0, "{yes} {no}");
        assert_eq!(
            trained(&r.layer4).0,
            trained(&tiny().init::<B>(&Default::default()).image_encoder.model.layer4).0
        );
        let t = &m.text_encoder.model;
        assert_eq!(trained(&t.embeddings).0, 0);
        assert_eq!(trained(&t.transformer.layer[0]).0, 0);
        assert_eq!(trained(&t.transformer.layer[1]).1, 0);
        assert!(trained(&m.image_encoder.projection).0 > 0, "the heads always train");

        // Frozen stages normalize with running statistics, whatever the batch.
        assert!(!r.bn1.uses_batch_statistics(&Default::default()));

        let bad = ClipConfig { image_trainable_stages: Some(5), ..tiny() }.validate().unwrap_err();
        assert!(bad.contains("model.image_trainable_stages"), "{bad}");
        let bad = ClipConfig { text_trainable_layers: Some(1), text_trainable: false, ..tiny() }
            .validate()
            .unwrap_err();
        assert!(bad.contains("model.text_trainable_layers"), "{bad}");
    }
}
