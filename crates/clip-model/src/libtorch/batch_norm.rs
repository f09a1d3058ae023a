//! Training-mode batch normalization as one LibTorch kernel each way: `native_batch_norm`
//! forward (which also yields the batch's statistics) and `at::native_batch_norm_backward`.

use std::ffi::{c_char, c_int};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_tch::{LibTorch, TchTensor};
use tch::Tensor as AtTensor;
use torch_sys::C_tensor;

use super::{cast, on_libtorch, take_results, OnLibTorch};

extern "C" {
    fn clip_libtorch_batch_norm_backward(
        grad_output: *const C_tensor,
        input: *const C_tensor,
        weight: *const C_tensor,
        save_mean: *const C_tensor,
        save_invstd: *const C_tensor,
        eps: f64,
        want_input: c_int,
        want_weight: c_int,
        want_bias: c_int,
        grad_input: *mut *mut C_tensor,
        grad_weight: *mut *mut C_tensor,
        grad_bias: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Per-channel statistics of the batch just normalized, without gradient, for the running
/// averages.
pub struct BatchStatistics<B: Backend> {
    pub mean: Tensor<B, 1>,
    /// The biased variance (divided by the count), the one the batch was normalized with.
    pub variance: Tensor<B, 1>,
}

/// `(x − mean) / √(var + ε) · weight + bias` over the batch's per-channel statistics, with
/// LibTorch's kernels both ways when training on LibTorch. Elsewhere `x` is handed back for
/// burn's ops.
pub fn batch_norm_training<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    epsilon: f64,
) -> Result<(Tensor<B, 4>, BatchStatistics<B>), Tensor<B, 4>> {
    match on_libtorch::<B>() {
        OnLibTorch::Plain => {
            let (out, stats) =
                tracked::<NoCheckpointing>(cast(x), cast(weight), cast(bias), epsilon);
            Ok((cast(out), stats.cast()))
        }
        OnLibTorch::Recomputed => {
            let (out, stats) =
                tracked::<BalancedCheckpointing>(cast(x), cast(weight), cast(bias), epsilon);
            Ok((cast(out), stats.cast()))
        }
        OnLibTorch::Elsewhere => Err(x),
    }
}

type Trained<C> = Autodiff<LibTorch, C>;

impl<A: Backend> BatchStatistics<A> {
    fn cast<B: Backend>(self) -> BatchStatistics<B> {
        BatchStatistics { mean: cast(self.mean), variance: cast(self.variance) }
    }
}

fn tracked<C: CheckpointStrategy>(
    x: Tensor<Trained<C>, 4>,
    weight: Tensor<Trained<C>, 1>,
    bias: Tensor<Trained<C>, 1>,
    epsilon: f64,
) -> (Tensor<Trained<C>, 4>, BatchStatistics<Trained<C>>) {
    let x: FloatTensor<Trained<C>> = x.into_primitive().tensor();
    let weight: FloatTensor<Trained<C>> = weight.into_primitive().tensor();
    let bias: FloatTensor<Trained<C>> = bias.into_primitive().tensor();
    let (out, mean, invstd) = AtTensor::native_batch_norm(
        &x.primitive.tensor,
        Some(&weight.primitive.tensor),
        Some(&bias.primitive.tensor),
        None::<&AtTensor>,
        None::<&AtTensor>,
        true,
        0.0,
        epsilon,
    );
    // 1/√(var + ε) back to the variance it came from.
    let variance = TchTensor::new(invstd.pow_tensor_scalar(-2.0) - epsilon);
    // One storage handle shared by the caller's mean and the backward pass's: burn-tch updates a
    // tensor in place when its handle is the only one, which would overwrite the saved mean.
    let mean = TchTensor::new(mean);
    let out = TchTensor::new(out);
    let out = match NativeBatchNorm
        .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let weight_state = prep.checkpoint(&weight);
            let saved = (mean.clone(), TchTensor::new(invstd));
            prep.finish((x_state, weight_state, saved, epsilon), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    let untracked = |t: TchTensor| {
        Tensor::<Trained<C>, 1>::from_inner(Tensor::from_primitive(TensorPrimitive::Float(t)))
    };
    let stats = BatchStatistics { mean: untracked(mean), variance: untracked(variance) };
    (Tensor::from_primitive(TensorPrimitive::Float(out)), stats)
}

#[derive(Debug)]
struct NativeBatchNorm;

impl Backward<LibTorch, 3> for NativeBatchNorm {
    /// The input's and weight's checkpoints, the batch's mean and 1/√(var + ε), and ε.
    type State = (NodeId, NodeId, (TchTensor, TchTensor), f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad: TchTensor = grads.consume::<LibTorch>(&ops.node);
        let (x_state, weight_state, (mean, invstd), epsilon) = ops.state;
        let x: TchTensor = checkpointer.retrieve_node_output(x_state);
        let weight: TchTensor = checkpointer.retrieve_node_output(weight_state);
        let mut handles = [std::ptr::null_mut(); 3];
        // SAFETY: the five inputs are live tensor handles borrowed for the call; the shim writes
        // null or a new handle into each output and keeps nothing after it returns.
        let message = unsafe {
            let [grad_x, grad_weight, grad_bias] = &mut handles;
            clip_libtorch_batch_norm_backward(
                grad.tensor.as_ptr(),
                x.tensor.as_ptr(),
                weight.tensor.as_ptr(),
                mean.tensor.as_ptr(),
                invstd.tensor.as_ptr(),
                epsilon,
                node_x.is_some() as c_int,
                node_weight.is_some() as c_int,
                node_bias.is_some() as c_int,
                grad_x,
                grad_weight,
                grad_bias,
            )
        };
        let results = take_results("batch norm backward", message, handles);
        for (node, g) in [node_x, node_weight, node_bias].into_iter().zip(results) {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<LibTorch>(node.id, TchTensor::new(g));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    struct Run {
        out: TensorData,
        mean: TensorData,
        variance: TensorData,
        grads: [TensorData; 3],
    }

    /// Batch norm of `x`, its statistics, and the gradients of `sum(out · probe)` for x, weight
    /// and bias: by LibTorch's kernels, or by burn's ops written out.
    fn run<B: AutodiffBackend>(inputs: &[TensorData; 4], native: bool) -> Run {
        let device = Default::default();
        let x = Tensor::<B, 4>::from_data(inputs[0].clone(), &device).require_grad();
        let weight = Tensor::<B, 1>::from_data(inputs[1].clone(), &device).require_grad();
        let bias = Tensor::<B, 1>::from_data(inputs[2].clone(), &device).require_grad();
        let probe = Tensor::<B, 4>::from_data(inputs[3].clone(), &device);
        let [n, c, h, w] = x.dims();
        let (out, mean, variance) = if native {
            let (out, stats) =
                batch_norm_training(x.clone(), weight.clone(), bias.clone(), 1e-5).ok().unwrap();
            let (mean, variance) = (stats.mean.to_data(), stats.variance.to_data());
            // What the running averages do with them, before the backward pass: operations
            // that consume the statistics (which burn-tch may run in place) must not touch
            // what the backward pass saved.
            let _ = stats.mean.mul_scalar(0.0).add(stats.variance.mul_scalar(0.0));
            let data = |d: TensorData| Tensor::<B, 1>::from_data(d, &device);
            (out, data(mean), data(variance))
        } else {
            let channels = x.clone().swap_dims(0, 1).reshape([c, n * h * w]);
            let mean = channels.clone().mean_dim(1);
            let variance = (channels - mean.clone()).square().mean_dim(1);
            let per = |t: Tensor<B, 2>| t.reshape([1, c, 1, 1]);
            let normalized =
                (x.clone() - per(mean.clone())) / per(variance.clone().add_scalar(1e-5).sqrt());
            let out = normalized * per(weight.clone().reshape([c, 1]))
                + per(bias.clone().reshape([c, 1]));
            (out, mean.reshape([c]).detach(), variance.reshape([c]).detach())
        };
        let grads = (out.clone() * probe).sum().backward();
        Run {
            out: out.into_data(),
            mean: mean.into_data(),
            variance: variance.into_data(),
            grads: [
                x.grad(&grads).unwrap().into_data(),
                weight.grad(&grads).unwrap().into_data(),
                bias.grad(&grads).unwrap().into_data(),
            ],
        }
    }

    fn compare<B: AutodiffBackend>() {
        let device = Default::default();
        let random = |shape: [usize; 4], mean, std| {
            Tensor::<LibTorch, 4>::random(shape, Distribution::Normal(mean, std), &device)
                .into_data()
        };
        let channel = |mean, std| random([1, 1, 1, 3], mean, std).convert::<f32>();
        let flat = |d: TensorData| TensorData::new(d.to_vec::<f32>().unwrap(), [3]);
        let inputs = [
            random([4, 3, 5, 6], 2.0, 3.0),
            flat(channel(1.0, 0.5)),
            flat(channel(0.0, 0.5)),
            random([4, 3, 5, 6], 0.0, 1.0),
        ];
        let ours = run::<B>(&inputs, true);
        let want = run::<B>(&inputs, false);
        let close = |a: &TensorData, b: &TensorData| {
            a.assert_approx_eq::<f32>(b, Tolerance::absolute(1e-4))
        };
        close(&ours.out, &want.out);
        close(&ours.mean, &want.mean);
        // √ of the variance's inverse and back: a little looser.
        ours.variance.assert_approx_eq::<f32>(&want.variance, Tolerance::rel_abs(1e-4, 1e-4));
        for (a, b) in ours.grads.iter().zip(&want.grads) {
            close(a, b);
        }
    }

    #[test]
    fn libtorch_batch_norm_matches_burns_ops() {
        compare::<Autodiff<LibTorch>>();
        compare::<Autodiff<LibTorch, BalancedCheckpointing>>();
    }

    #[test]
    fn elsewhere_the_input_is_handed_back() {
        type Flex = Autodiff<burn::backend::Flex>;
        let x = Tensor::<Flex, 4>::ones([1, 2, 2, 2], &Default::default());
        let back = batch_norm_training(
            x.clone(),
            Tensor::ones([2], &Default::default()),
            Tensor::zeros([2], &Default::default()),
            1e-5,
        );
        assert_eq!(back.err().unwrap().into_data(), x.into_data());
    }
}
