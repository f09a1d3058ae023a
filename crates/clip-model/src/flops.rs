//! Floating-point work of the model, counted from its configuration: the yardstick for a
//! throughput figure (achieved TFLOP/s against a device's peak), before any profiling. Counts
//! the multiply–adds of convolutions, linear layers and attention (two FLOPs each); element-wise
//! work (normalization, activations, softmax) is left out, being bound by memory traffic rather
//! than arithmetic.

use crate::clip::ClipConfig;
use crate::resnet::{BlockKind, ResNetConfig, Stem};
use crate::text::TextTransformerConfig;

/// FLOPs of one forward pass over a batch, per part of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardFlops {
    pub image_tower: f64,
    pub text_tower: f64,
    /// Both projection heads and the similarity matrix.
    pub heads: f64,
}

impl ForwardFlops {
    pub fn total(&self) -> f64 {
        self.image_tower + self.text_tower + self.heads
    }

    /// A training step: the backward pass computes two products (input and weight gradients)
    /// for each one of the forward pass, so about three times the forward's work.
    pub fn train_step(&self) -> f64 {
        3.0 * self.total()
    }
}

/// FLOPs of a forward pass of `config` over `batch` pairs of `image_size`² images and captions
/// of `seq_len` tokens.
pub fn forward_flops(
    config: &ClipConfig,
    batch: usize,
    image_size: usize,
    seq_len: usize,
) -> ForwardFlops {
    let (b, d) = (batch as f64, config.projection_dim as f64);
    let head = |input: usize| 2.0 * b * (input as f64 * d + d * d);
    ForwardFlops {
        image_tower: b * resnet_flops(&config.image, image_size),
        text_tower: b * text_flops(&config.text, seq_len),
        heads: head(config.image.out_features()) + head(config.text.hidden_size) + 2.0 * b * b * d,
    }
}

/// Output size of a convolution or pooling window along one axis.
fn out_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// FLOPs of a convolution producing `out`² positions.
fn conv(c_in: usize, c_out: usize, kernel: usize, out: usize) -> f64 {
    2.0 * (c_in * kernel * kernel) as f64 * c_out as f64 * (out * out) as f64
}

/// Per image.
fn resnet_flops(c: &ResNetConfig, image_size: usize) -> f64 {
    let (mut flops, mut size) = match c.stem {
        Stem::Imagenet => {
            let s = out_size(image_size, 7, 2, 3);
            (conv(3, c.stem_channels, 7, s), out_size(s, 3, 2, 1))
        }
        Stem::Small => (conv(3, c.stem_channels, 3, image_size), image_size),
    };
    let e = c.block.expansion();
    let mut in_ch = c.stem_channels;
    for stage in 0..4 {
        let planes = c.channels[stage];
        let out_ch = planes * e;
        for i in 0..c.layers[stage] {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let out = out_size(size, 3, stride, 1);
            flops += match c.block {
                BlockKind::Bottleneck => {
                    conv(in_ch, planes, 1, size)
                        + conv(planes, planes, 3, out)
                        + conv(planes, out_ch, 1, out)
                }
                BlockKind::Basic => conv(in_ch, planes, 3, out) + conv(planes, planes, 3, out),
            };
            if stride != 1 || in_ch != out_ch {
                flops += conv(in_ch, out_ch, 1, out);
            }
            in_ch = out_ch;
            size = out;
        }
    }
    flops
}

/// Per caption.
fn text_flops(c: &TextTransformerConfig, seq_len: usize) -> f64 {
    let (l, h, i) = (seq_len as f64, c.hidden_size as f64, c.intermediate_size as f64);
    // Query, key, value and output projections; scores and the weighted sum; the feed-forward.
    let per_layer = 2.0 * l * (4.0 * h * h) + 2.0 * (2.0 * l * l * h) + 2.0 * l * (2.0 * h * i);
    c.num_layers as f64 * per_layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet50_and_distilbert_match_their_published_counts() {
        // torchvision's ResNet-50: 4.09 G multiply-adds at 224² (its 2048×1000 classifier, 2 M,
        // is not part of a tower).
        let macs = resnet_flops(&ResNetConfig::depth(50).unwrap(), 224) / 2.0;
        assert!((macs - 4.09e9).abs() < 0.03e9, "{macs:e}");
        // ResNet-18: 1.82 G.
        let macs = resnet_flops(&ResNetConfig::depth(18).unwrap(), 224) / 2.0;
        assert!((macs - 1.82e9).abs() < 0.02e9, "{macs:e}");
        // DistilBERT at 128 tokens: 6 layers × 128 × (4·768² + 2·768·3072) + attention
        // 6 × 2·128²·768 = 5.59 G multiply-adds.
        let macs = text_flops(&TextTransformerConfig::distilbert_base(), 128) / 2.0;
        assert!((macs - 5.59e9).abs() < 0.01e9, "{macs:e}");
    }

    #[test]
    fn a_training_step_scales_with_the_batch_and_triples_the_forward() {
        let seed = ClipConfig::seed();
        let one = forward_flops(&seed, 1, 224, 32);
        let many = forward_flops(&seed, 64, 224, 32);
        assert!((many.image_tower / one.image_tower - 64.0).abs() < 1e-9);
        assert!((many.text_tower / one.text_tower - 64.0).abs() < 1e-9);
        assert_eq!(many.train_step(), 3.0 * many.total());
        // The seed's model at 224² and 32 tokens: ResNet-50 8.2 GFLOPs an image, DistilBERT
        // 2.7 GFLOPs a caption, the heads next to nothing.
        assert!((many.image_tower / 64.0 - 8.18e9).abs() < 0.06e9, "{many:?}");
        assert!((many.text_tower / 64.0 - 2.74e9).abs() < 0.02e9, "{many:?}");
        assert!(many.heads < 1e-3 * many.total(), "{many:?}");
    }
}
