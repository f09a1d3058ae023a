//! Whole-model operations on gradients: the global norm (for clipping), scaling (loss-scale
//! removal and clipping), and the finite check of fp16 loss scaling. Everything stays on the
//! device as tensors; only the caller decides when to read a value back.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// Visits every float parameter of `module` that has a gradient in `grads`.
fn for_each_grad<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    op: &mut impl GradOp<B::InnerBackend>,
) {
    struct Visitor<'a, B: AutodiffBackend, O> {
        grads: &'a mut GradientsParams,
        op: &'a mut O,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend, O: GradOp<B::InnerBackend>> ModuleVisitor<B> for Visitor<'_, B, O> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                let g = self.op.apply(g);
                self.grads.register::<B::InnerBackend, D>(param.id, g);
            }
        }
    }
    module.visit(&mut Visitor::<B, _> { grads, op, _b: std::marker::PhantomData });
}

trait GradOp<IB: Backend> {
    fn apply<const D: usize>(&mut self, g: Tensor<IB, D>) -> Tensor<IB, D>;
}

struct SumSquares<IB: Backend>(Option<Tensor<IB, 1>>);

impl<IB: Backend> GradOp<IB> for SumSquares<IB> {
    fn apply<const D: usize>(&mut self, g: Tensor<IB, D>) -> Tensor<IB, D> {
        let s = g.clone().square().sum();
        self.0 = Some(match self.0.take() {
            Some(acc) => acc + s,
            None => s,
        });
        g
    }
}

struct Scale<IB: Backend>(Tensor<IB, 1>);

impl<IB: Backend> GradOp<IB> for Scale<IB> {
    fn apply<const D: usize>(&mut self, g: Tensor<IB, D>) -> Tensor<IB, D> {
        let factor = self.0.clone().reshape([1; D]);
        g * factor
    }
}

/// The sum of squares of all gradients of `module` in `grads` (a 1-element tensor), `None`
/// when none of its parameters has a gradient.
pub fn sum_squares<B: AutodiffBackend, M: Module<B>>(module: &M, grads: &mut GradientsParams) -> Option<Tensor<B::InnerBackend, 1>> {
    let mut op = SumSquares(None);
    for_each_grad(module, grads, &mut op);
    op.0
}

/// Multiplies every gradient of `module` in `grads` by `factor` (a 1-element tensor).
pub fn scale<B: AutodiffBackend, M: Module<B>>(module: &M, grads: &mut GradientsParams, factor: Tensor<B::InnerBackend, 1>) {
    for_each_grad(module, grads, &mut Scale(factor));
}
