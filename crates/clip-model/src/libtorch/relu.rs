//! ReLU whose backward is LibTorch's `threshold_backward`: one vectorized pass, where burn's
//! generic backward is a comparison into a mask and a masked fill.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::retro_forward::RetroForward;
use burn::backend::autodiff::checkpoint::state::BackwardStates;
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

use super::{cast, on_libtorch, OnLibTorch};

/// `max(x, 0)`; when training on LibTorch its backward is LibTorch's own, elsewhere it is
/// burn's `relu`.
pub fn relu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match on_libtorch::<B>() {
        OnLibTorch::Plain => cast(tracked::<NoCheckpointing, D>(cast(x))),
        OnLibTorch::Recomputed => cast(tracked::<BalancedCheckpointing, D>(cast(x))),
        OnLibTorch::Elsewhere => burn::tensor::activation::relu(x),
    }
}

/// Recorded as burn records its own ReLU: memory-bound, keeping its input (recomputed from the
/// input's input under recomputation), so memory use is what it was.
fn tracked<C: CheckpointStrategy, const D: usize>(
    x: Tensor<Autodiff<LibTorch, C>, D>,
) -> Tensor<Autodiff<LibTorch, C>, D> {
    let x: FloatTensor<Autodiff<LibTorch, C>> = x.into_primitive().tensor();
    let out = match NativeRelu
        .prepare::<C>([x.node.clone()])
        .memory_bound()
        .retro_forward(RetroRelu { input: x.node.id })
        .parents([&x])
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&x);
            prep.finish(state, forward(&x.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&x.primitive)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn forward(x: &TchTensor) -> TchTensor {
    TchTensor::new(x.tensor.relu())
}

#[derive(Debug)]
struct NativeRelu;

impl Backward<LibTorch, 1> for NativeRelu {
    type State = NodeId;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad: TchTensor = grads.consume::<LibTorch>(&ops.node);
        let x: TchTensor = checkpointer.retrieve_node_output(ops.state);
        if let Some(node) = parent {
            // The gradient where x > 0, else 0.
            let grad_x = x.tensor.threshold_backward(&grad.tensor, 0.0);
            grads.register::<LibTorch>(node.id, TchTensor::new(grad_x));
        }
    }
}

/// Recomputes the output from the input when a recomputing strategy dropped it.
#[derive(Debug, Clone)]
struct RetroRelu {
    input: NodeId,
}

impl RetroForward for RetroRelu {
    fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
        let x: TchTensor = states.get_state(&self.input);
        states.save(out_node, forward(&x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::TensorData;

    /// ReLU's output and the gradient of `sum(relu(x) · probe)`, by this module or by burn.
    fn run<B: AutodiffBackend>(native: bool) -> (TensorData, TensorData) {
        let device = Default::default();
        // Exact zeros too: both gradients are 0 there.
        let x = Tensor::<B, 2>::from_floats([[-2.0, -0.5, 0.0], [0.0, 0.25, 3.0]], &device);
        let probe = Tensor::<B, 2>::from_floats([[0.5, -1.0, 2.0], [1.5, -0.75, 4.0]], &device);
        let x = x.require_grad();
        let out = if native { relu(x.clone()) } else { burn::tensor::activation::relu(x.clone()) };
        let grads = (out.clone() * probe).sum().backward();
        (out.into_data(), x.grad(&grads).unwrap().into_data())
    }

    #[test]
    fn libtorch_relu_matches_burns_forward_and_backward() {
        let want = run::<Autodiff<LibTorch>>(false);
        assert_eq!(want.1, TensorData::from([[0.0f32, 0.0, 0.0], [0.0, -0.75, 4.0]]));
        assert_eq!(run::<Autodiff<LibTorch>>(true), want);
        assert_eq!(run::<Autodiff<LibTorch, BalancedCheckpointing>>(true), want);
    }
}
