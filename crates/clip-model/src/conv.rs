//! A 2-D convolution with PyTorch's parameter layout and symmetric padding, evaluated in the
//! model's compute precision.

use burn::module::{Initializer, Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;

use crate::precision::Precision;

/// `Conv2d` as torchvision builds it: weight `[out, in, k, k]`, optional bias.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub stride: usize,
    pub padding: usize,
}

/// Builds a [`Conv2d`].
#[derive(Debug, Clone)]
pub struct Conv2dConfig {
    pub channels_in: usize,
    pub channels_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

impl Conv2dConfig {
    pub fn new(channels_in: usize, channels_out: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            channels_in,
            channels_out,
            kernel,
            stride,
            padding,
            bias: false,
        }
    }

    /// Kaiming-normal in fan-out mode, as torchvision and timm initialize ResNets.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Conv2d<B> {
        let k = self.kernel;
        let fan_out = self.channels_out * k * k;
        let weight = Initializer::Normal {
            mean: 0.0,
            std: (2.0 / fan_out as f64).sqrt(),
        }
        .init([self.channels_out, self.channels_in, k, k], device);
        let bias = self.bias.then(|| Initializer::Zeros.init([self.channels_out], device));
        Conv2d {
            weight,
            bias,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

impl<B: Backend> Conv2d<B> {
    /// `[batch, in, h, w]` → `[batch, out, h', w']`.
    pub fn forward(&self, x: Tensor<B, 4>, precision: Precision) -> Tensor<B, 4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        let out = burn::tensor::module::conv2d(
            precision.to_compute(x),
            precision.to_compute(self.weight.val()),
            self.bias.as_ref().map(|b| precision.to_compute(b.val())),
            options,
        );
        precision.to_f32(out)
    }
}
