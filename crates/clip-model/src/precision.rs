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
    pub fn matmul<B: Backend, const D: usize>(
        self,
        a: Tensor<B, D>,
        b: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.to_f32(self.to_compute(a).matmul(self.to_compute(b)))
    }

    /// A burn `Linear` layer evaluated in the compute dtype, result in f32. Leading dimensions
    /// are folded into one first: a single 2-D matmul instead of burn's broadcast batched one,
    /// about 2.7× faster forward + backward on Flex for a `[16, 32, 768] × [768, 3072]` layer
    /// (BENCHMARKS.md), and one matmul shape per layer on CUDA whatever the batch and length.
    pub fn linear<B: Backend, const D: usize>(
        self,
        layer: &Linear<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let mut shape = x.dims();
        let features_in = shape[D - 1];
        let rows = shape[..D - 1].iter().product::<usize>();
        let x: Tensor<B, 2> = x.reshape([rows, features_in]);
        let out = burn::tensor::module::linear(
            self.to_compute(x),
            self.to_compute(layer.weight.val()),
            layer.bias.as_ref().map(|b| self.to_compute(b.val())),
        );
        shape[D - 1] = out.dims()[1];
        self.to_f32(out).reshape(shape)
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
        let x =
            Tensor::<B, 2>::random([3, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
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

    /// Folding the leading dimensions changes nothing: the same outputs and gradients as
    /// burn's `Linear::forward` on 3-D and 4-D inputs.
    #[test]
    fn folded_linear_matches_burn_linear() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let layer = LinearConfig::new(8, 5).init::<B>(&device);
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let x3 = Tensor::<B, 3>::random([2, 3, 8], normal, &device).require_grad();
        let ours = Precision::Fp32.linear(&layer, x3.clone());
        let burns = layer.forward(x3.clone());
        assert_eq!(ours.dims(), [2, 3, 5]);
        ours.to_data()
            .assert_approx_eq::<f32>(&burns.to_data(), burn::tensor::Tolerance::default());
        let g_ours = (ours * 1.5).sum().backward();
        let g_burn = (burns * 1.5).sum().backward();
        let w = |g| layer.weight.grad(g).unwrap().to_data();
        w(&g_ours).assert_approx_eq::<f32>(&w(&g_burn), burn::tensor::Tolerance::default());
        x3.grad(&g_ours).unwrap().to_data().assert_approx_eq::<f32>(
            &x3.grad(&g_burn).unwrap().to_data(),
            burn::tensor::Tolerance::default(),
        );

        let x4 = Tensor::<B, 4>::random([2, 2, 3, 8], normal, &device);
        let ours = Precision::Bf16Mixed.linear(&layer, x4.clone());
        assert_eq!(ours.dims(), [2, 2, 3, 5]);
        let err = (ours - layer.forward(x4)).abs().max().into_scalar();
        assert!(err < 0.05, "{err}");
    }
}
