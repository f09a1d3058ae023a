//! Whole-model operations on gradients: the global norm (for clipping), scaling (loss-scale
//! removal and clipping), and the finite check of fp16 loss scaling. Everything stays on the
//! device as tensors; only the caller decides when to read a value back.

use std::collections::HashSet;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
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
pub fn sum_squares<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let mut op = SumSquares(None);
    for_each_grad(module, grads, &mut op);
    op.0
}

/// Multiplies every gradient of `module` in `grads` by `factor` (a 1-element tensor).
pub fn scale<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: Tensor<B::InnerBackend, 1>,
) {
    for_each_grad(module, grads, &mut Scale(factor));
}

/// Whether weight decay applies to a parameter of `dims` dimensions.
fn decays(dims: usize, decay_1d: bool) -> bool {
    decay_1d || dims >= 2
}

/// Adds `wd · θ` to the gradient of every parameter of `module` in `grads` that decays (Adam's
/// coupled L2 weight decay).
pub fn add_decay<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    wd: f64,
    decay_1d: bool,
) {
    struct Visitor<'a> {
        grads: &'a mut GradientsParams,
        wd: f64,
        decay_1d: bool,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Visitor<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !decays(D, self.decay_1d) {
                return;
            }
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                let g = g + param.val().inner().mul_scalar(self.wd);
                self.grads.register::<B::InnerBackend, D>(param.id, g);
            }
        }
    }
    if wd > 0.0 {
        module.visit(&mut Visitor { grads, wd, decay_1d });
    }
}

/// Records `factor` for every parameter of `module` that has a gradient in `grads` and decays
/// (AdamW's decoupled decay multiplies those by `1 − lr·wd`).
pub fn decay_factors<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &GradientsParams,
    factor: f64,
    decay_1d: bool,
    out: &mut std::collections::HashMap<ParamId, f64>,
) {
    struct Visitor<'a> {
        grads: &'a GradientsParams,
        factor: f64,
        decay_1d: bool,
        out: &'a mut std::collections::HashMap<ParamId, f64>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Visitor<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if decays(D, self.decay_1d) && self.grads.get::<B::InnerBackend, D>(param.id).is_some()
            {
                self.out.insert(param.id, self.factor);
            }
        }
    }
    if factor != 1.0 {
        module.visit(&mut Visitor { grads, factor, decay_1d, out });
    }
}

/// Multiplies each parameter named in `factors` by its factor (still a trainable leaf).
pub fn shrink<B: AutodiffBackend, M: Module<B>>(
    module: M,
    factors: &std::collections::HashMap<ParamId, f64>,
) -> M {
    struct Mapper<'a>(&'a std::collections::HashMap<ParamId, f64>);
    impl<B: AutodiffBackend> ModuleMapper<B> for Mapper<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            match self.0.get(&param.id) {
                Some(&f) => {
                    param.map(|t| Tensor::from_inner(t.inner().mul_scalar(f)).require_grad())
                }
                None => param,
            }
        }
    }
    if factors.is_empty() {
        return module;
    }
    module.map(&mut Mapper(factors))
}

/// Replaces `grads` of `module` by their sum over the replicas of `comm`, in one collective
/// operation: the gradients of every trainable parameter, in visit order (one a replica lacks
/// counting as zeros there), flattened into one tensor, summed, and cut back.
///
/// Parameters in `skip` are left out (another group's).
pub fn all_reduce<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    skip: &HashSet<ParamId>,
    comm: &dyn crate::collective::Collective<B::InnerBackend>,
) -> crate::error::Result<()> {
    struct Flatten<'a, IB: Backend> {
        grads: &'a mut GradientsParams,
        skip: &'a HashSet<ParamId>,
        parts: Vec<Tensor<IB, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.is_require_grad() || self.skip.contains(&param.id) {
                return;
            }
            let value = param.val();
            let n = value.shape().num_elements();
            let part = match self.grads.remove::<B::InnerBackend, D>(param.id) {
                Some(g) => g.reshape([n]),
                None => Tensor::zeros([n], &value.device()),
            };
            self.parts.push(part);
        }
    }
    struct Unflatten<'a, IB: Backend> {
        grads: &'a mut GradientsParams,
        skip: &'a HashSet<ParamId>,
        summed: Tensor<IB, 1>,
        at: usize,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.is_require_grad() || self.skip.contains(&param.id) {
                return;
            }
            let dims = param.val().dims();
            let n: usize = dims.iter().product();
            let g = self.summed.clone().slice(self.at..self.at + n).reshape(dims);
            self.at += n;
            self.grads.register::<B::InnerBackend, D>(param.id, g);
        }
    }
    let mut flatten = Flatten { grads, skip, parts: Vec::new() };
    module.visit(&mut flatten);
    let Flatten { grads, parts, .. } = flatten;
    if parts.is_empty() {
        return Ok(());
    }
    let summed = comm.all_reduce_sum(Tensor::cat(parts, 0))?;
    module.visit(&mut Unflatten { grads, skip, summed, at: 0 });
    Ok(())
}

/// The ids of every float parameter of `module`.
pub fn param_ids<B: Backend, M: Module<B>>(module: &M) -> HashSet<ParamId> {
    struct Ids(HashSet<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.insert(param.id);
        }
    }
    let mut ids = Ids(HashSet::new());
    module.visit(&mut ids);
    ids.0
}
