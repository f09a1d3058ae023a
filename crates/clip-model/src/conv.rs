//! A 2-D convolution with PyTorch's parameter layout and symmetric padding, evaluated in the
//! model's compute precision.

use burn::module::{Initializer, Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Slice, Tensor};

use crate::precision::Precision;

/// `Conv2d` as torchvision builds it: weight `[out, in, k, k]`, optional bias.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub stride: usize,
    pub padding: usize,
    /// Evaluate an unpadded 1×1 kernel as a matmul (see [`Conv2d::forward`]).
    pub pointwise_matmul: bool,
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
    pub pointwise_matmul: bool,
}

impl Conv2dConfig {
    pub fn new(
        channels_in: usize,
        channels_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self {
            channels_in,
            channels_out,
            kernel,
            stride,
            padding,
            bias: false,
            pointwise_matmul: true,
        }
    }

    pub fn with_pointwise_matmul(mut self, on: bool) -> Self {
        self.pointwise_matmul = on;
        self
    }

    /// Kaiming-normal in fan-out mode, as torchvision and timm initialize ResNets.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Conv2d<B> {
        let k = self.kernel;
        let fan_out = self.channels_out * k * k;
        let weight = Initializer::Normal { mean: 0.0, std: (2.0 / fan_out as f64).sqrt() }
            .init([self.channels_out, self.channels_in, k, k], device);
        let bias = self.bias.then(|| Initializer::Zeros.init([self.channels_out], device));
        Conv2d {
            weight,
            bias,
            stride: self.stride,
            padding: self.padding,
            pointwise_matmul: self.pointwise_matmul,
        }
    }
}

impl<B: Backend> Conv2d<B> {
    /// `[batch, in, h, w]` → `[batch, out, h', w']`.
    pub fn forward(&self, x: Tensor<B, 4>, precision: Precision) -> Tensor<B, 4> {
        let x = precision.to_compute(x);
        let weight = precision.to_compute(self.weight.val());
        let bias = self.bias.as_ref().map(|b| precision.to_compute(b.val()));
        let out = if pointwise_as_matmul::<B>(self.pointwise_matmul) && self.is_pointwise() {
            pointwise(x, weight, bias, self.stride)
        } else {
            let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
            conv2d(x, weight, bias, options)
        };
        precision.to_f32(out)
    }

    /// A 1×1 convolution without padding: a matrix product over channels.
    pub fn is_pointwise(&self) -> bool {
        let [_, _, kh, kw] = self.weight.dims();
        kh == 1 && kw == 1 && self.padding == 0
    }
}

/// Whether a layer built with `pointwise_matmul = requested` runs its 1×1 kernels as matmuls on
/// `B`. Training on LibTorch they stay convolutions, with LibTorch's backward: as fast as the
/// matmul at 224² and a quarter faster at 64² on the seed model (BENCHMARKS.md, 2026-12-06).
pub fn pointwise_as_matmul<B: Backend>(requested: bool) -> bool {
    #[cfg(feature = "tch")]
    if crate::libtorch::trains_on_libtorch::<B>() {
        return false;
    }
    requested
}

/// burn's `conv2d`; when training on LibTorch, with LibTorch's own backward kernels
/// ([`crate::libtorch`]).
fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    #[cfg(feature = "tch")]
    if crate::libtorch::trains_on_libtorch::<B>() {
        let out = crate::libtorch::conv2d(x, weight, options);
        return match bias {
            Some(bias) => {
                let channels = bias.dims()[0];
                out + bias.reshape([1, channels, 1, 1])
            }
            None => out,
        };
    }
    burn::tensor::module::conv2d(x, weight, bias, options)
}

/// A 1×1 convolution as a batched matmul (`[out, in] × [in, h·w]`, strided input subsampled
/// first): the same values as `conv2d`, about twice as fast forward + backward on Flex, and on
/// CUDA one matmul kernel family instead of a convolution autotune set per shape (ResNet-50's
/// bottlenecks are two-thirds 1×1 convolutions).
fn pointwise<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
) -> Tensor<B, 4> {
    let x = if stride > 1 {
        let [_, _, h, w] = x.dims();
        x.slice([
            Slice::full(),
            Slice::full(),
            Slice::new(0, Some(h as isize), stride as isize),
            Slice::new(0, Some(w as isize), stride as isize),
        ])
    } else {
        x
    };
    let [b, c_in, h, w] = x.dims();
    let [c_out, ..] = weight.dims();
    let out = weight
        .reshape([1, c_out, c_in])
        .matmul(x.reshape([b, c_in, h * w]))
        .reshape([b, c_out, h, w]);
    match bias {
        Some(bias) => out + bias.reshape([1, c_out, 1, 1]),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type B = Autodiff<Flex>;

    /// The matmul form of a 1×1 convolution gives conv2d's outputs and gradients, strided or not.
    #[test]
    fn pointwise_matches_conv2d_forward_and_backward() {
        let device = Default::default();
        for (stride, bias, h, w) in
            [(1, false, 5, 6), (2, true, 7, 6), (2, false, 8, 8), (3, true, 7, 5)]
        {
            let x = Tensor::<B, 4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let weight =
                Tensor::<B, 4>::random([4, 3, 1, 1], Distribution::Normal(0.0, 1.0), &device)
                    .require_grad();
            let b = bias.then(|| {
                Tensor::<B, 1>::random([4], Distribution::Normal(0.0, 1.0), &device).require_grad()
            });
            let options = ConvOptions::new([stride; 2], [0, 0], [1, 1], 1);
            let reference =
                burn::tensor::module::conv2d(x.clone(), weight.clone(), b.clone(), options);
            let ours = pointwise(x.clone(), weight.clone(), b.clone(), stride);
            assert_eq!(ours.dims(), reference.dims(), "stride {stride}, {h}×{w}");
            ours.to_data().assert_approx_eq::<f32>(&reference.to_data(), Tolerance::default());

            let upstream =
                Tensor::<B, 4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
            let g_ref = (reference * upstream.clone()).sum().backward();
            let g_ours = (ours * upstream).sum().backward();
            x.grad(&g_ours)
                .unwrap()
                .to_data()
                .assert_approx_eq::<f32>(&x.grad(&g_ref).unwrap().to_data(), Tolerance::default());
            weight.grad(&g_ours).unwrap().to_data().assert_approx_eq::<f32>(
                &weight.grad(&g_ref).unwrap().to_data(),
                Tolerance::default(),
            );
            if let Some(b) = &b {
                b.grad(&g_ours).unwrap().to_data().assert_approx_eq::<f32>(
                    &b.grad(&g_ref).unwrap().to_data(),
                    Tolerance::default(),
                );
            }
        }
    }

    #[test]
    fn only_unpadded_one_by_one_kernels_take_the_matmul_path() {
        let device = Default::default();
        assert!(Conv2dConfig::new(8, 4, 1, 2, 0).init::<Flex>(&device).is_pointwise());
        assert!(!Conv2dConfig::new(8, 4, 3, 1, 1).init::<Flex>(&device).is_pointwise());
        assert!(!Conv2dConfig::new(8, 4, 1, 1, 1).init::<Flex>(&device).is_pointwise());
    }
}
