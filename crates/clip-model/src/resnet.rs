//! ResNet image tower with the torchvision/timm layout ("ResNet v1.5": the stride sits in the
//! bottleneck's 3×3 convolution), returning globally average-pooled features and no classifier.
//!
//! Parameter paths follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, ...) except the
//! downsample branch, which is `downsample.conv` / `downsample.bn` here and `downsample.0` /
//! `downsample.1` upstream; `import` maps between them.
//! Reference: He et al. 2015 (arXiv:1512.03385); torchvision `models/resnet.py`, timm `models/resnet.py`.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::batch_norm::BatchNorm2d;
use crate::conv::{Conv2d, Conv2dConfig};
use crate::precision::Precision;
// burn's ReLU; when training on LibTorch, one with LibTorch's backward.
#[cfg(feature = "tch")]
use crate::libtorch::relu;
#[cfg(not(feature = "tch"))]
use burn::tensor::activation::relu;

/// Residual block kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1 → 3×3 → 1×1 with 4× expansion (ResNet-50 and up).
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The layers before the residual stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7×7 stride-2 convolution, then 3×3 stride-2 max pooling: stages start at ¼ resolution
    /// (ImageNet-sized inputs; the torchvision/timm layout).
    #[default]
    Imagenet,
    /// One 3×3 stride-1 convolution and no pooling: stages start at full resolution, for small
    /// images (28–64 px: MNIST, CIFAR), where the ImageNet stem would leave a few pixels.
    Small,
}

/// Shape of a ResNet. `resnet50()` is the seed's image tower; tiny configs serve tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Planes per stage (output channels are `planes * expansion`).
    pub channels: [usize; 4],
    /// Output channels of the stem.
    pub stem_channels: usize,
    #[serde(default)]
    pub stem: Stem,
    /// Start each residual branch at zero (timm's default `zero_init_last`).
    #[serde(default = "yes")]
    pub zero_init_residual: bool,
    /// 1×1 convolutions as matmuls (same values; faster on Flex, one kernel family on CUDA);
    /// `false` keeps the backend's convolution kernels. Ignored when training on LibTorch
    /// ([`crate::conv::pointwise_as_matmul`]).
    #[serde(default = "yes")]
    pub pointwise_matmul: bool,
}

fn yes() -> bool {
    true
}

impl ResNetConfig {
    /// ResNet-18, -34, -50, -101 or -152 by depth.
    pub fn depth(depth: usize) -> Option<Self> {
        let (block, layers) = match depth {
            18 => (BlockKind::Basic, [2, 2, 2, 2]),
            34 => (BlockKind::Basic, [3, 4, 6, 3]),
            50 => (BlockKind::Bottleneck, [3, 4, 6, 3]),
            101 => (BlockKind::Bottleneck, [3, 4, 23, 3]),
            152 => (BlockKind::Bottleneck, [3, 8, 36, 3]),
            _ => return None,
        };
        Some(Self {
            block,
            layers,
            channels: [64, 128, 256, 512],
            stem_channels: 64,
            stem: Stem::Imagenet,
            zero_init_residual: true,
            pointwise_matmul: true,
        })
    }

    pub fn resnet50() -> Self {
        Self::depth(50).expect("50 is a known depth")
    }

    /// One basic block per stage, `width` channels throughout, no zero-initialized branches: a
    /// tower small enough for unit tests on the CPU.
    pub fn tiny(width: usize) -> Self {
        Self {
            block: BlockKind::Basic,
            layers: [1, 1, 1, 1],
            channels: [width; 4],
            stem_channels: width,
            stem: Stem::default(),
            zero_init_residual: false,
            pointwise_matmul: true,
        }
    }

    /// Width of the pooled features (2048 for ResNet-50).
    pub fn out_features(&self) -> usize {
        self.channels[3] * self.block.expansion()
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let e = self.block.expansion();
        let mut in_ch = self.stem_channels;
        let mut stages = Vec::with_capacity(4);
        for (stage, (&n, &planes)) in self.layers.iter().zip(&self.channels).enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            let blocks: Vec<Block<B>> = (0..n)
                .map(|i| {
                    let s = if i == 0 { stride } else { 1 };
                    let b = Block::new(
                        self.block,
                        in_ch,
                        planes,
                        s,
                        self.zero_init_residual,
                        self.pointwise_matmul,
                        device,
                    );
                    in_ch = planes * e;
                    b
                })
                .collect();
            stages.push(blocks);
        }
        let mut stages = stages.into_iter();
        let conv1 = match self.stem {
            Stem::Imagenet => Conv2dConfig::new(3, self.stem_channels, 7, 2, 3),
            Stem::Small => Conv2dConfig::new(3, self.stem_channels, 3, 1, 1),
        };
        ResNet {
            conv1: conv1.init(device),
            bn1: BatchNorm2d::new(self.stem_channels, false, device),
            layer1: stages.next().unwrap_or_default(),
            layer2: stages.next().unwrap_or_default(),
            layer3: stages.next().unwrap_or_default(),
            layer4: stages.next().unwrap_or_default(),
            stem: self.stem,
        }
    }
}

/// The 1×1 projection of a residual connection whose shape changes.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm2d<B>,
}

/// A basic or bottleneck residual block (`conv3`/`bn3` only in bottlenecks).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm2d<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm2d<B>,
    pub conv3: Option<Conv2d<B>>,
    pub bn3: Option<BatchNorm2d<B>>,
    pub downsample: Option<Downsample<B>>,
}

impl<B: Backend> Block<B> {
    fn new(
        kind: BlockKind,
        in_ch: usize,
        planes: usize,
        stride: usize,
        zero_last: bool,
        pointwise_matmul: bool,
        device: &B::Device,
    ) -> Self {
        let out_ch = planes * kind.expansion();
        let conv = |c_in, c_out, k, stride, pad| {
            Conv2dConfig::new(c_in, c_out, k, stride, pad)
                .with_pointwise_matmul(pointwise_matmul)
                .init(device)
        };
        let downsample = (stride != 1 || in_ch != out_ch).then(|| Downsample {
            conv: conv(in_ch, out_ch, 1, stride, 0),
            bn: BatchNorm2d::new(out_ch, false, device),
        });
        match kind {
            BlockKind::Basic => Self {
                conv1: conv(in_ch, planes, 3, stride, 1),
                bn1: BatchNorm2d::new(planes, false, device),
                conv2: conv(planes, planes, 3, 1, 1),
                bn2: BatchNorm2d::new(planes, zero_last, device),
                conv3: None,
                bn3: None,
                downsample,
            },
            BlockKind::Bottleneck => Self {
                conv1: conv(in_ch, planes, 1, 1, 0),
                bn1: BatchNorm2d::new(planes, false, device),
                conv2: conv(planes, planes, 3, stride, 1),
                bn2: BatchNorm2d::new(planes, false, device),
                conv3: Some(conv(planes, out_ch, 1, 1, 0)),
                bn3: Some(BatchNorm2d::new(out_ch, zero_last, device)),
                downsample,
            },
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>, p: Precision) -> Tensor<B, 4> {
        let shortcut = match &self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x.clone(), p)),
            None => x.clone(),
        };
        let mut h = relu(self.bn1.forward(self.conv1.forward(x, p)));
        h = self.bn2.forward(self.conv2.forward(h, p));
        if let (Some(conv3), Some(bn3)) = (&self.conv3, &self.bn3) {
            h = bn3.forward(conv3.forward(relu(h), p));
        }
        relu(h + shortcut)
    }
}

/// ResNet trunk: stem, four stages, global average pooling.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm2d<B>,
    pub layer1: Vec<Block<B>>,
    pub layer2: Vec<Block<B>>,
    pub layer3: Vec<Block<B>>,
    pub layer4: Vec<Block<B>>,
    #[module(skip)]
    pub stem: Stem,
}

impl<B: Backend> ResNet<B> {
    /// Freezes the stem and all but the last `n` stages (`n` ≥ 4: nothing).
    pub fn train_last_stages(mut self, n: usize) -> Self {
        let frozen = 4usize.saturating_sub(n);
        if frozen > 0 {
            self.conv1 = self.conv1.no_grad();
            self.bn1 = self.bn1.no_grad();
        }
        let stages = [&mut self.layer1, &mut self.layer2, &mut self.layer3, &mut self.layer4];
        for stage in stages.into_iter().take(frozen) {
            *stage = std::mem::take(stage).no_grad();
        }
        self
    }

    /// `[batch, 3, H, W]` → pooled features `[batch, out_features]`.
    pub fn forward(&self, images: Tensor<B, 4>, p: Precision) -> Tensor<B, 2> {
        let mut x = relu(self.bn1.forward(self.conv1.forward(images, p)));
        if self.stem == Stem::Imagenet {
            x = burn::tensor::module::max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for block in self.layer1.iter().chain(&self.layer2).chain(&self.layer3).chain(&self.layer4)
        {
            x = block.forward(x, p);
        }
        let [b, c, _, _] = x.dims();
        x.mean_dim(3).mean_dim(2).reshape([b, c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn resnet50_has_torchvisions_parameter_count() {
        // torchvision resnet50 without its fc layer: 25,557,032 - 2,049,000 = 23,508,032
        // parameters; burn also counts the BatchNorm running statistics (2 x 26,560 channels).
        let m = ResNetConfig::resnet50().init::<Flex>(&Default::default());
        assert_eq!(m.num_params(), 23_508_032 + 2 * 26_560);
        assert_eq!(ResNetConfig::resnet50().out_features(), 2048);
    }

    #[test]
    fn resnet18_shapes() {
        let cfg = ResNetConfig {
            channels: [4, 8, 16, 32],
            stem_channels: 4,
            ..ResNetConfig::depth(18).unwrap()
        };
        let m = cfg.init::<Flex>(&Default::default());
        let y = m.forward(Tensor::zeros([2, 3, 32, 32], &Default::default()), Precision::Fp32);
        assert_eq!(y.dims(), [2, 32]);
    }

    #[test]
    fn small_stem_keeps_full_resolution() {
        let cfg = ResNetConfig {
            channels: [4, 8, 16, 32],
            stem_channels: 4,
            stem: Stem::Small,
            ..ResNetConfig::depth(18).unwrap()
        };
        let m = cfg.init::<Flex>(&Default::default());
        assert_eq!(m.conv1.weight.dims(), [4, 3, 3, 3]);
        let x = Tensor::<Flex, 4>::zeros([2, 3, 28, 28], &Default::default());
        let stem = relu(m.bn1.forward(m.conv1.forward(x.clone(), Precision::Fp32)));
        assert_eq!(stem.dims(), [2, 4, 28, 28]);
        assert_eq!(m.forward(x, Precision::Fp32).dims(), [2, 32]);
    }

    #[test]
    fn pointwise_matmul_changes_no_output() {
        let device = Default::default();
        let base = ResNetConfig {
            channels: [4, 8, 8, 8],
            stem_channels: 8,
            zero_init_residual: false,
            ..ResNetConfig::resnet50()
        };
        let x = Tensor::<Flex, 4>::random(
            [2, 3, 32, 32],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let m = base.init::<Flex>(&device);
        // burn initializes parameters lazily, on first use: a clone taken before that would
        // draw its own random weights. Run the model once so both share the same ones.
        let on = m.forward(x.clone(), Precision::Fp32);
        let mut off = m.clone();
        for block in [&mut off.layer1, &mut off.layer2, &mut off.layer3, &mut off.layer4]
            .into_iter()
            .flatten()
        {
            block.conv1.pointwise_matmul = false;
            block.conv3.as_mut().unwrap().pointwise_matmul = false;
            if let Some(d) = block.downsample.as_mut() {
                d.conv.pointwise_matmul = false;
            }
        }
        let off = off.forward(x, Precision::Fp32);
        on.to_data().assert_approx_eq::<f32>(&off.to_data(), burn::tensor::Tolerance::default());
    }
}
