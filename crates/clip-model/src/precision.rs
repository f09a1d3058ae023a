//! Mixed precision without autocast: burn 0.21 has none, so the few heavy ops (matmul and
//! convolution) cast their inputs and f32 weights to half precision themselves and cast the
//! result back to f32. Casts are differentiable, so gradients reach the f32 parameters in f32:
//! master weights and optimizer state stay f32.

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Numeric precision of the heavy ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    #[serde(rename = "fp32")]
    Fp32,
    /// Matmuls and convolutions in bfloat16, the rest in f32.
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
    /// Matmuls and convolutions in float16, the rest in f32 (needs loss scaling when training).
    #[serde(rename = "fp16-mixed")]
    Fp16Mixed,
}

impl Precision {
    /// The dtype heavy ops compute in, or `None` for plain f32.
    pub fn compute_dtype(self) -> Option<DType> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16Mixed => Some(DType::BF16),
            Precision::Fp16Mixed => Some(DType::F16),
        }
    }

    /// Casts a tensor to the compute dtype (no-op in fp32).
    pub fn to_compute<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.compute_dtype() {
            Some(dt) => x.cast(dt),
            None => x,
        }
    }

    /// Casts a tensor back to f32 (no-op in fp32).
    pub fn to_f32<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.compute_dtype() {
            Some(_) => x.cast(DType::F32),
            None => x,
        }
    }

    /// `a @ b` in the compute dtype, result in f32.
    pub fn matmul<B: Backend, const D: usize>(self, a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
        self.to_f32(self.to_compute(a).matmul(self.to_compute(b)))
    }

    /// A burn `Linear` layer evaluated in the compute dtype, result in f32.
    pub fn linear<B: Backend, const D: usize>(self, layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
        if self.compute_dtype().is_none() {
            return layer.forward(x);
        }
        let out = burn::tensor::module::linear(
            self.to_compute(x),
            self.to_compute(layer.weight.val()),
            layer.bias.as_ref().map(|b| self.to_compute(b.val())),
        );
        self.to_f32(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::LinearConfig;

    #[test]
    fn serde_names() {
        #[derive(Deserialize)]
        struct P {
            p: Precision,
        }
        let p: P = serde_json::from_str(r#"{"p": "bf16-mixed"}"#).unwrap();
        assert_eq!(p.p, Precision::Bf16Mixed);
    }

    #[test]
    fn half_linear_is_close_and_gradients_stay_f32() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let layer = LinearConfig::new(8, 4).init::<B>(&device);
        let x = Tensor::<B, 2>::random([3, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let full = Precision::Fp32.linear(&layer, x.clone());
        for p in [Precision::Fp16Mixed, Precision::Bf16Mixed] {
            let half = p.linear(&layer, x.clone());
            assert_eq!(half.dtype(), DType::F32);
            let err = (half.clone() - full.clone()).abs().max().into_scalar();
            assert!(err < 0.05, "{p:?}: {err}");
            let grads = half.sum().backward();
            let g = layer.weight.grad(&grads).unwrap();
            assert_eq!(g.dtype(), DType::F32);
        }
    }
}
