//! Batch normalization with PyTorch's semantics and parameter names (`weight`, `bias`,
//! `running_mean`, `running_var`), so torchvision/timm state dicts load as they are.
//!
//! Differences from `burn::nn::BatchNorm`: the running variance is updated with the unbiased
//! batch variance (as PyTorch does), and a layer whose parameters are frozen keeps using (and
//! never updates) its running statistics, like a locked tower in open_clip.

use std::cell::RefCell;
use std::collections::HashSet;

use burn::module::{Initializer, Module, Param, ParamId, RunningState};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

thread_local! {
    /// During a detached training pass: the batch norms (by weight id) that are trainable.
    static DETACHED_PASS: RefCell<Option<HashSet<ParamId>>> = const { RefCell::new(None) };
}

/// Runs `f`, a training-mode forward pass of a model whose trainable weights were detached (so
/// that no autodiff graph is kept), with the batch norms whose weight ids are in `trainable`
/// normalizing as trainable layers do (batch statistics; the others, frozen, use their running
/// statistics) and none of them updating its running statistics. This is the first, cached pass
/// of gradient accumulation: it must compute what the second pass will, without counting the
/// data twice in the running averages.
pub fn detached_training_pass<R>(trainable: HashSet<ParamId>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<HashSet<ParamId>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DETACHED_PASS.with(|d| *d.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(DETACHED_PASS.with(|d| d.borrow_mut().replace(trainable)));
    f()
}

/// `BatchNorm2d(num_features, eps=1e-5, momentum=0.1)`.
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub running_mean: RunningState<Tensor<B, 1>>,
    pub running_var: RunningState<Tensor<B, 1>>,
    pub momentum: f64,
    pub epsilon: f64,
}

impl<B: Backend> BatchNorm2d<B> {
    /// A fresh layer: weight 1 (or 0, to start a residual branch at zero), bias 0.
    pub fn new(channels: usize, zero_weight: bool, device: &B::Device) -> Self {
        let weight = if zero_weight { Initializer::Zeros } else { Initializer::Ones };
        Self {
            weight: weight.init([channels], device),
            bias: Initializer::Zeros.init([channels], device),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    /// Whether this call normalizes with batch statistics (training) or running ones.
    pub fn uses_batch_statistics(&self, device: &B::Device) -> bool {
        B::ad_enabled(device)
            && (self.weight.is_require_grad() || self.detached_but_trainable().unwrap_or(false))
    }

    /// In a detached training pass, whether this layer is one of its trainable ones.
    fn detached_but_trainable(&self) -> Option<bool> {
        DETACHED_PASS.with(|d| d.borrow().as_ref().map(|ids| ids.contains(&self.weight.id)))
    }

    /// Moves the running averages towards a training batch's statistics, except in a detached
    /// pass (whose batch the second pass counts).
    fn update_running_statistics(
        &self,
        mean: Tensor<B, 1>,
        unbiased: Tensor<B, 1>,
        device: &B::Device,
    ) {
        if self.detached_but_trainable().is_some() {
            return;
        }
        let m = self.momentum;
        let running_mean = self.running_mean.value_sync().to_device(device);
        let running_var = self.running_var.value_sync().to_device(device);
        self.running_mean.update(running_mean.mul_scalar(1.0 - m).add(mean.mul_scalar(m)));
        self.running_var.update(running_var.mul_scalar(1.0 - m).add(unbiased.mul_scalar(m)));
    }

    /// `[batch, channels, h, w]` → same shape.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        let [n, c, h, w] = x.dims();
        let count = (n * h * w) as f64;
        // Training on LibTorch: its own batch-norm kernels both ways ([`crate::libtorch`]).
        #[cfg(feature = "tch")]
        let x = if crate::libtorch::trains_on_libtorch::<B>() && self.uses_batch_statistics(&device)
        {
            let (weight, bias) = (self.weight.val(), self.bias.val());
            match crate::libtorch::batch_norm_training(x, weight, bias, self.epsilon) {
                Ok((out, stats)) => {
                    let unbiased = stats.variance.mul_scalar(count / (count - 1.0).max(1.0));
                    self.update_running_statistics(stats.mean, unbiased, &device);
                    return out;
                }
                Err(x) => x,
            }
        } else {
            x
        };
        // Everything runs on `[n·c, h·w]` rows with per-row scalars: the layout burn Flex's SIMD
        // broadcast path handles. `[1, c, 1, 1]` broadcasts and a channels-first transposed
        // copy both fall back to a scalar strided iterator, a quarter of a CPU training step.
        let rows = x.reshape([n * c, h * w]);
        let per_row = |t: Tensor<B, 1>| t.reshape([1, c]).expand([n, c]).reshape([n * c, 1]);
        let (mean, var) = if self.uses_batch_statistics(&device) {
            let per_channel = |t: Tensor<B, 2>| t.reshape([n, c]).sum_dim(0).reshape([c]);
            let mean = per_channel(rows.clone().sum_dim(1)).div_scalar(count);
            let centered = rows.clone() - per_row(mean.clone());
            let sum_sq = per_channel(centered.square().sum_dim(1));
            let var = sum_sq.clone().div_scalar(count);
            let unbiased = sum_sq.detach().div_scalar((count - 1.0).max(1.0));
            self.update_running_statistics(mean.clone().detach(), unbiased, &device);
            (mean, var)
        } else {
            (self.running_mean.value_sync(), self.running_var.value_sync())
        };
        let scale = self.weight.val().div(var.add_scalar(self.epsilon).sqrt());
        let shift = self.bias.val() - mean.mul(scale.clone());
        rows.mul(per_row(scale)).add(per_row(shift)).reshape([n, c, h, w])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type B = Autodiff<Flex>;

    #[test]
    fn training_normalizes_per_channel_and_tracks_unbiased_variance() {
        let device = Default::default();
        let bn = BatchNorm2d::<B>::new(2, false, &device);
        let x = Tensor::<B, 4>::random([4, 2, 3, 3], Distribution::Normal(3.0, 2.0), &device);
        let y = bn.forward(x.clone());
        let per_channel = y.clone().swap_dims(0, 1).reshape([2, 36]);
        let means = per_channel.clone().mean_dim(1).into_data();
        means.assert_approx_eq::<f32>(
            &TensorData::from([[0.0f32], [0.0]]),
            Tolerance::absolute(1e-5),
        );
        let vars = per_channel.var_bias(1).into_data();
        vars.assert_approx_eq::<f32>(
            &TensorData::from([[1.0f32], [1.0]]),
            Tolerance::absolute(1e-3),
        );

        let flat = x.swap_dims(0, 1).reshape([2, 36]);
        let want_var = flat.clone().var(1).reshape([2]).mul_scalar(0.1).add_scalar(0.9);
        bn.running_var
            .value_sync()
            .into_data()
            .assert_approx_eq::<f32>(&want_var.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn inference_and_frozen_layers_use_running_statistics() {
        let device = Default::default();
        let bn = BatchNorm2d::<B>::new(1, false, &device);
        let x = Tensor::<B, 4>::from_floats([[[[1.0, 3.0]]]], &device);
        // Running stats are mean 0, var 1: inference is the identity (up to eps).
        let y = bn.valid().forward(x.clone().inner());
        y.into_data().assert_approx_eq::<f32>(
            &TensorData::from([[[[1.0f32, 3.0]]]]),
            Tolerance::absolute(1e-4),
        );
        let frozen = bn.no_grad();
        let y = frozen.forward(x);
        y.into_data().assert_approx_eq::<f32>(
            &TensorData::from([[[[1.0f32, 3.0]]]]),
            Tolerance::absolute(1e-4),
        );
        assert_eq!(frozen.running_mean.value_sync().into_scalar(), 0.0);
    }

    #[test]
    fn a_detached_training_pass_normalizes_as_training_does_and_updates_nothing() {
        let device = Default::default();
        let bn = BatchNorm2d::<B>::new(2, false, &device);
        let x = Tensor::<B, 4>::random([3, 2, 2, 2], Distribution::Normal(5.0, 2.0), &device);
        let detached = BatchNorm2d {
            weight: bn.weight.clone().map(|t| Tensor::from_inner(t.inner())),
            bias: bn.bias.clone().map(|t| Tensor::from_inner(t.inner())),
            ..bn.clone()
        };
        let trainable = HashSet::from([bn.weight.id]);
        let y = detached_training_pass(trainable, || detached.forward(x.clone()));
        assert!(!y.is_require_grad());
        assert_eq!(bn.running_mean.value_sync().into_data(), TensorData::from([0.0f32, 0.0]));
        assert_eq!(bn.running_var.value_sync().into_data(), TensorData::from([1.0f32, 1.0]));
        // A layer not in the trainable set (a frozen one) uses its running statistics, still
        // mean 0 and variance 1: the identity (up to eps).
        let frozen = detached_training_pass(HashSet::new(), || detached.forward(x.clone()));
        frozen
            .into_data()
            .assert_approx_eq::<f32>(&x.clone().into_data(), Tolerance::absolute(1e-4));
        let trained = bn.forward(x.clone());
        y.into_data().assert_approx_eq::<f32>(&trained.into_data(), Tolerance::absolute(1e-6));
        let mean: Vec<f32> = bn.running_mean.value_sync().into_data().to_vec().unwrap();
        assert!(mean.iter().all(|m| (m - 0.5).abs() < 0.3), "not updated after the pass: {mean:?}");
    }
}
