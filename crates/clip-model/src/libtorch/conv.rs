//! A convolution whose backward is `at::convolution_backward`.

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
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Tensor, TensorPrimitive};
use burn_tch::{LibTorch, TchTensor};
use tch::Tensor as AtTensor;
use torch_sys::C_tensor;

use super::{cast, on_libtorch, take_results, OnLibTorch};

extern "C" {
    fn clip_libtorch_conv2d_backward(
        grad_output: *const C_tensor,
        input: *const C_tensor,
        weight: *const C_tensor,
        stride: *const i64,
        padding: *const i64,
        dilation: *const i64,
        groups: i64,
        want_input: c_int,
        want_weight: c_int,
        grad_input: *mut *mut C_tensor,
        grad_weight: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// A 2-D convolution without bias; when training on LibTorch its backward is LibTorch's own,
/// elsewhere it is burn's `conv2d`.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    match on_libtorch::<B>() {
        OnLibTorch::Plain => cast(tracked::<NoCheckpointing>(cast(x), cast(weight), options)),
        OnLibTorch::Recomputed => {
            cast(tracked::<BalancedCheckpointing>(cast(x), cast(weight), options))
        }
        OnLibTorch::Elsewhere => burn::tensor::module::conv2d(x, weight, None, options),
    }
}

fn tracked<C: CheckpointStrategy>(
    x: Tensor<Autodiff<LibTorch, C>, 4>,
    weight: Tensor<Autodiff<LibTorch, C>, 4>,
    options: ConvOptions<2>,
) -> Tensor<Autodiff<LibTorch, C>, 4> {
    let x: FloatTensor<Autodiff<LibTorch, C>> = x.into_primitive().tensor();
    let weight: FloatTensor<Autodiff<LibTorch, C>> = weight.into_primitive().tensor();
    let out = match NativeConv2d
        .prepare::<C>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let weight_state = prep.checkpoint(&weight);
            let out = forward(&x.primitive, &weight.primitive, &options);
            prep.finish((x_state, weight_state, options), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&x.primitive, &weight.primitive, &options)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn forward(x: &TchTensor, weight: &TchTensor, options: &ConvOptions<2>) -> TchTensor {
    let out = AtTensor::conv2d(
        &x.tensor,
        &weight.tensor,
        None::<AtTensor>,
        options.stride.map(|v| v as i64),
        options.padding.map(|v| v as i64),
        options.dilation.map(|v| v as i64),
        options.groups as i64,
    );
    TchTensor::new(out)
}

#[derive(Debug)]
struct NativeConv2d;

impl Backward<LibTorch, 2> for NativeConv2d {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad: TchTensor = grads.consume::<LibTorch>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x: TchTensor = checkpointer.retrieve_node_output(x_state);
        let weight: TchTensor = checkpointer.retrieve_node_output(weight_state);
        let stride = options.stride.map(|v| v as i64);
        let padding = options.padding.map(|v| v as i64);
        let dilation = options.dilation.map(|v| v as i64);
        let mut handles = [std::ptr::null_mut(); 2];
        // SAFETY: the three inputs are live tensor handles borrowed for the call; the shim writes
        // null or a new handle into each output and keeps nothing after it returns.
        let message = unsafe {
            let [grad_x, grad_weight] = &mut handles;
            clip_libtorch_conv2d_backward(
                grad.tensor.as_ptr(),
                x.tensor.as_ptr(),
                weight.tensor.as_ptr(),
                stride.as_ptr(),
                padding.as_ptr(),
                dilation.as_ptr(),
                options.groups as i64,
                node_x.is_some() as c_int,
                node_weight.is_some() as c_int,
                grad_x,
                grad_weight,
            )
        };
        let [grad_x, grad_weight] = take_results("convolution backward", message, handles);
        for (node, g) in [(node_x, grad_x), (node_weight, grad_weight)] {
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
    use burn::tensor::{Distribution, Tolerance};

    type Plain = Autodiff<LibTorch>;
    type Recomputed = Autodiff<LibTorch, BalancedCheckpointing>;

    type Inner<B> = Tensor<<B as AutodiffBackend>::InnerBackend, 4>;

    /// Gradients of `sum(conv(x, w) * probe)` for x and w, by LibTorch's backward ([`conv2d`])
    /// and by burn's generic one (burn's `conv2d` on the same backend).
    fn gradients<B: AutodiffBackend>(
        x: &Tensor<B, 4>,
        weight: &Tensor<B, 4>,
        probe: &Tensor<B, 4>,
        options: &ConvOptions<2>,
        native: bool,
        x_tracked: bool,
    ) -> (Tensor<B, 4>, Option<Inner<B>>, Inner<B>) {
        let x = if x_tracked { x.clone().require_grad() } else { x.clone() };
        let weight = weight.clone().require_grad();
        let out = if native {
            conv2d(x.clone(), weight.clone(), options.clone())
        } else {
            burn::tensor::module::conv2d(x.clone(), weight.clone(), None, options.clone())
        };
        let grads = (out.clone() * probe.clone()).sum().backward();
        (out, x.grad(&grads), weight.grad(&grads).expect("the weight's gradient"))
    }

    fn compare<B: AutodiffBackend>() {
        let device = Default::default();
        // (channels in, out, kernel, stride, padding, groups): ResNet's stem, its 3×3 and 1×1
        // layers with and without stride, and a grouped convolution.
        let cases = [
            (3, 8, 7, 2, 3, 1),
            (8, 8, 3, 1, 1, 1),
            (8, 16, 3, 2, 1, 1),
            (16, 8, 1, 1, 0, 1),
            (8, 16, 1, 2, 0, 1),
            (8, 8, 3, 1, 1, 4),
        ];
        for (c_in, c_out, k, stride, padding, groups) in cases {
            for x_tracked in [true, false] {
                let x = Tensor::<B, 4>::random(
                    [2, c_in, 12, 10],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                let weight = Tensor::<B, 4>::random(
                    [c_out, c_in / groups, k, k],
                    Distribution::Normal(0.0, 0.3),
                    &device,
                );
                let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], groups);
                let probe_shape =
                    burn::tensor::module::conv2d(x.clone(), weight.clone(), None, options.clone())
                        .dims();
                let probe =
                    Tensor::<B, 4>::random(probe_shape, Distribution::Normal(0.0, 1.0), &device);
                let (out, gx, gw) = gradients(&x, &weight, &probe, &options, true, x_tracked);
                let (want, want_gx, want_gw) =
                    gradients(&x, &weight, &probe, &options, false, x_tracked);
                let case = format!(
                    "{c_in}→{c_out} k{k} s{stride} p{padding} g{groups} x_tracked={x_tracked}"
                );
                out.into_data()
                    .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
                gw.into_data()
                    .assert_approx_eq::<f32>(&want_gw.into_data(), Tolerance::absolute(1e-3));
                assert_eq!(gx.is_some(), x_tracked, "{case}");
                if let (Some(gx), Some(want_gx)) = (gx, want_gx) {
                    gx.into_data()
                        .assert_approx_eq::<f32>(&want_gx.into_data(), Tolerance::absolute(1e-3));
                }
            }
        }
    }

    #[test]
    fn libtorch_backward_matches_burns_generic_backward() {
        assert!(
            super::super::trains_on_libtorch::<Plain>()
                && super::super::trains_on_libtorch::<Recomputed>()
        );
        assert!(!super::super::trains_on_libtorch::<LibTorch>());
        compare::<Plain>();
        compare::<Recomputed>();
    }

    #[test]
    fn other_backends_keep_burns_convolution() {
        assert!(!super::super::trains_on_libtorch::<Autodiff<burn::backend::Flex>>());
        let device = Default::default();
        let x = Tensor::<Autodiff<burn::backend::Flex>, 4>::ones([1, 2, 4, 4], &device);
        let weight = Tensor::ones([3, 2, 3, 3], &device);
        let out = conv2d(x, weight, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
        // The centre sees all 9 taps of both channels; a corner 4 of each.
        let values = out.into_data().to_vec::<f32>().unwrap();
        assert_eq!((values[5], values[0]), (18.0, 8.0));
    }
}
