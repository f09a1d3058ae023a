//! The optimizer side of a training step: per-group learning rates (image trunk, text trunk,
//! heads + temperature), global-norm gradient clipping, and fp16 dynamic loss scaling. burn 0.21
//! has no parameter groups, no global-norm clipping and no loss scaler, so they are built here.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer,
};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use clip_infer::CheckpointDir;
use clip_model::ClipModel;
use serde::{Deserialize, Serialize};

use crate::config::{OptimizerKind, TrainSpec};
use crate::error::{Result, TrainError};
use crate::grads;

enum AnyOptim<B: AutodiffBackend> {
    Adam(OptimizerAdaptor<Adam, ClipModel<B>, B>),
    AdamW(OptimizerAdaptor<AdamW, ClipModel<B>, B>),
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

impl<B: AutodiffBackend> AnyOptim<B> {
    /// The optimizer without weight decay: [`ClipOptimizer`] applies decay itself, per group
    /// and only to the parameters that get it.
    fn new(spec: &TrainSpec) -> Self {
        let [b1, b2] = spec.betas.map(|b| b as f32);
        match spec.optimizer {
            OptimizerKind::Adam => AnyOptim::Adam(
                AdamConfig::new()
                    .with_beta_1(b1)
                    .with_beta_2(b2)
                    .with_epsilon(spec.eps as f32)
                    .init(),
            ),
            OptimizerKind::Adamw => AnyOptim::AdamW(
                AdamWConfig::new()
                    .with_beta_1(b1)
                    .with_beta_2(b2)
                    .with_epsilon(spec.eps as f32)
                    .with_weight_decay(0.0)
                    .init(),
            ),
        }
    }

    fn step(&mut self, lr: f64, model: ClipModel<B>, grads: GradientsParams) -> ClipModel<B> {
        match self {
            AnyOptim::Adam(o) => o.step(lr, model, grads),
            AnyOptim::AdamW(o) => o.step(lr, model, grads),
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let err = |source| TrainError::Record {
            path: path.into(),
            what: "cannot save the optimizer state",
            source,
        };
        let bytes = match self {
            AnyOptim::Adam(o) => crate::checkpoint::record_bytes::<B, _>(o.to_record()),
            AnyOptim::AdamW(o) => crate::checkpoint::record_bytes::<B, _>(o.to_record()),
        };
        crate::checkpoint::write_record_file(&bytes.map_err(err)?, path)
    }

    fn load(self, path: &Path, device: &B::Device) -> Result<Self> {
        let err = |source| TrainError::Record {
            path: path.into(),
            what: "cannot read the optimizer state",
            source,
        };
        Ok(match self {
            AnyOptim::Adam(o) => AnyOptim::Adam(
                o.load_record(recorder().load(path.to_path_buf(), device).map_err(err)?),
            ),
            AnyOptim::AdamW(o) => AnyOptim::AdamW(
                o.load_record(recorder().load(path.to_path_buf(), device).map_err(err)?),
            ),
        })
    }
}

/// Dynamic loss scaling for fp16: scale the loss up so small gradients survive in half
/// precision, skip steps whose gradients overflowed and halve the scale, double it after a run
/// of good steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub enabled: bool,
    pub scale: f64,
    pub growth_interval: usize,
    pub good_steps: usize,
    /// Steps skipped because a gradient was infinite or NaN.
    pub skipped_steps: usize,
}

impl LossScaler {
    pub fn new(spec: &TrainSpec) -> Self {
        Self {
            enabled: spec.precision == clip_model::Precision::Fp16Mixed,
            scale: spec.loss_scale,
            growth_interval: spec.loss_scale_growth_interval,
            good_steps: 0,
            skipped_steps: 0,
        }
    }

    /// The factor the loss is multiplied by before `backward` (1 when disabled).
    pub fn factor(&self) -> f64 {
        if self.enabled {
            self.scale
        } else {
            1.0
        }
    }

    fn update(&mut self, finite: bool) {
        if !self.enabled {
            return;
        }
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale = (self.scale * 2.0).min(2f64.powi(24));
                self.good_steps = 0;
            }
        } else {
            self.skipped_steps += 1;
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
    }
}

/// What an optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// False when the step was skipped: a gradient was infinite or NaN (the weights are left
    /// as they were; under fp16 loss scaling the scale is lowered).
    pub applied: bool,
    /// Global gradient norm before clipping (unscaled); absent only when no parameter had one.
    pub grad_norm: Option<f64>,
}

/// The gradients of a backward pass split into the three parameter groups (image trunk, text
/// trunk, heads + temperature). The gradients of several passes add up: gradient accumulation.
pub struct GroupGrads {
    image: GradientsParams,
    text: GradientsParams,
    heads: GradientsParams,
}

impl GroupGrads {
    pub fn split<B: AutodiffBackend>(model: &ClipModel<B>, mut raw: B::Gradients) -> Self {
        Self {
            image: GradientsParams::from_module(&mut raw, &model.image_encoder.model),
            text: GradientsParams::from_module(&mut raw, &model.text_encoder.model),
            heads: GradientsParams::from_grads(raw, model),
        }
    }

    /// The gradient of one parameter, from whichever group holds it.
    pub fn get<B: AutodiffBackend, const D: usize>(
        &self,
        id: burn::module::ParamId,
    ) -> Option<Tensor<B::InnerBackend, D>> {
        [&self.image, &self.text, &self.heads]
            .into_iter()
            .find_map(|g| g.get::<B::InnerBackend, D>(id))
    }

    /// All groups in one set, for a single optimizer over the whole model.
    pub fn merged<B: AutodiffBackend>(self, model: &ClipModel<B>) -> GradientsParams {
        let mut acc = GradientsAccumulator::<ClipModel<B>>::new();
        for g in [self.image, self.text, self.heads] {
            acc.accumulate(model, g);
        }
        acc.grads()
    }

    /// Each group's gradients summed over the replicas of `comm` (one collective operation per
    /// group).
    pub fn all_reduce<B: AutodiffBackend>(
        &mut self,
        model: &ClipModel<B>,
        comm: &dyn crate::collective::Collective<B::InnerBackend>,
    ) -> Result<()> {
        let none = Default::default();
        grads::all_reduce(&model.image_encoder.model, &mut self.image, &none, comm)?;
        grads::all_reduce(&model.text_encoder.model, &mut self.text, &none, comm)?;
        let mut trunks = grads::param_ids(&model.image_encoder.model);
        trunks.extend(grads::param_ids(&model.text_encoder.model));
        grads::all_reduce(model, &mut self.heads, &trunks, comm)
    }

    /// The sum of two passes' gradients (a parameter missing from one counts as zero there).
    pub fn add<B: AutodiffBackend>(self, model: &ClipModel<B>, other: Self) -> Self {
        fn sum<B: AutodiffBackend, M: AutodiffModule<B>>(
            module: &M,
            a: GradientsParams,
            b: GradientsParams,
        ) -> GradientsParams {
            let mut acc = GradientsAccumulator::<M>::new();
            acc.accumulate(module, a);
            acc.accumulate(module, b);
            acc.grads()
        }
        Self {
            image: sum(&model.image_encoder.model, self.image, other.image),
            text: sum(&model.text_encoder.model, self.text, other.text),
            heads: sum(model, self.heads, other.heads),
        }
    }
}

/// Optimizers for the three parameter groups plus clipping and loss scaling.
pub struct ClipOptimizer<B: AutodiffBackend> {
    image: AnyOptim<B>,
    text: AnyOptim<B>,
    heads: AnyOptim<B>,
    lrs: [f64; 3],
    /// Weight decay of each group, the kind (decoupled for AdamW, added to the gradient for
    /// Adam), and whether 1-D parameters get it too.
    decays: [f64; 3],
    kind: OptimizerKind,
    decay_1d: bool,
    clip_norm: Option<f64>,
    pub scaler: LossScaler,
}

impl<B: AutodiffBackend> ClipOptimizer<B> {
    pub fn new(spec: &TrainSpec) -> Self {
        Self {
            image: AnyOptim::new(spec),
            text: AnyOptim::new(spec),
            heads: AnyOptim::new(spec),
            lrs: [
                spec.image_encoder_lr.unwrap_or(spec.lr),
                spec.text_encoder_lr.unwrap_or(spec.lr),
                spec.head_lr.unwrap_or(spec.lr),
            ],
            decays: [
                spec.image_encoder_weight_decay.unwrap_or(spec.weight_decay),
                spec.text_encoder_weight_decay.unwrap_or(spec.weight_decay),
                spec.head_weight_decay.unwrap_or(spec.weight_decay),
            ],
            kind: spec.optimizer,
            decay_1d: spec.weight_decay_1d,
            clip_norm: spec.grad_clip_norm,
            scaler: LossScaler::new(spec),
        }
    }

    /// Base learning rates of the image trunk, text trunk and heads.
    pub fn base_lrs(&self) -> [f64; 3] {
        self.lrs
    }

    /// Applies one step from the gradients of the *scaled* loss: unscale, check that the global
    /// norm is finite (a step with an infinite or NaN gradient is never applied, whatever the
    /// precision: weights stay finite), clip the global norm, update each group with its learning
    /// rate times `lr_factor`, clamp the temperature.
    pub fn step(
        &mut self,
        model: ClipModel<B>,
        grads: GroupGrads,
        lr_factor: f64,
    ) -> (ClipModel<B>, StepReport) {
        let device = model.logit_scale.device();
        let GroupGrads { mut image, mut text, mut heads } = grads;
        let factor = |v: f64| Tensor::<B::InnerBackend, 1>::from_floats([v as f32], &device);

        if self.scaler.enabled {
            let inv = factor(1.0 / self.scaler.scale);
            grads::scale(&model.image_encoder.model, &mut image, inv.clone());
            grads::scale(&model.text_encoder.model, &mut text, inv.clone());
            grads::scale(&model, &mut heads, inv);
        }
        let mut norm = None;
        let parts = [
            grads::sum_squares(&model.image_encoder.model, &mut image),
            grads::sum_squares(&model.text_encoder.model, &mut text),
            grads::sum_squares(&model, &mut heads),
        ];
        if let Some(total) = parts.into_iter().flatten().reduce(|a, b| a + b) {
            let total = total.sqrt();
            if let Some(max) = self.clip_norm {
                // PyTorch's clip_grad_norm_: scale by max / (norm + 1e-6) when above max.
                let f = total.clone().add_scalar(1e-6).recip().mul_scalar(max).clamp_max(1.0);
                grads::scale(&model.image_encoder.model, &mut image, f.clone());
                grads::scale(&model.text_encoder.model, &mut text, f.clone());
                grads::scale(&model, &mut heads, f);
            }
            norm = Some(total.into_scalar().elem::<f64>());
        }
        let finite = norm.is_none_or(f64::is_finite);
        self.scaler.update(finite);
        if !finite {
            return (model, StepReport { applied: false, grad_norm: norm });
        }
        let mut model = model;
        // Weight decay, as PyTorch's optimizers apply it: Adam adds `wd·θ` to the gradient (after
        // clipping), AdamW shrinks θ by `1 − lr·wd` before its update (burn's order too).
        let lrs = self.lrs.map(|lr| lr * lr_factor);
        match self.kind {
            OptimizerKind::Adam => {
                grads::add_decay(
                    &model.image_encoder.model,
                    &mut image,
                    self.decays[0],
                    self.decay_1d,
                );
                grads::add_decay(
                    &model.text_encoder.model,
                    &mut text,
                    self.decays[1],
                    self.decay_1d,
                );
                grads::add_decay(&model, &mut heads, self.decays[2], self.decay_1d);
            }
            OptimizerKind::Adamw => {
                let mut factors = std::collections::HashMap::new();
                grads::decay_factors(
                    &model.image_encoder.model,
                    &image,
                    1.0 - lrs[0] * self.decays[0],
                    self.decay_1d,
                    &mut factors,
                );
                grads::decay_factors(
                    &model.text_encoder.model,
                    &text,
                    1.0 - lrs[1] * self.decays[1],
                    self.decay_1d,
                    &mut factors,
                );
                grads::decay_factors(
                    &model,
                    &heads,
                    1.0 - lrs[2] * self.decays[2],
                    self.decay_1d,
                    &mut factors,
                );
                model = grads::shrink(model, &factors);
            }
        }
        if !image.is_empty() {
            model = self.image.step(self.lrs[0] * lr_factor, model, image);
        }
        if !text.is_empty() {
            model = self.text.step(self.lrs[1] * lr_factor, model, text);
        }
        if !heads.is_empty() {
            model = self.heads.step(self.lrs[2] * lr_factor, model, heads);
        }
        (model.clamp_logit_scale(), StepReport { applied: true, grad_norm: norm })
    }

    /// Writes the three optimizer states into the checkpoint folder `dir`
    /// ([`CheckpointDir::optimizer`]).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let files = CheckpointDir::new(dir).optimizer();
        for (optim, file) in [&self.image, &self.text, &self.heads].into_iter().zip(files) {
            optim.save(&file)?;
        }
        Ok(())
    }

    /// Restores the three optimizer states from the checkpoint folder `dir`.
    pub fn load(mut self, dir: &Path, device: &B::Device) -> Result<Self> {
        let [image, text, heads] = CheckpointDir::new(dir).optimizer();
        self.image = self.image.load(&image, device)?;
        self.text = self.text.load(&text, device)?;
        self.heads = self.heads.load(&heads, device)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::{Module, ModuleVisitor, Param};
    use clip_model::{ClipConfig, ResNetConfig, TextTransformerConfig};

    type B = Autodiff<Flex>;

    fn tiny() -> ClipModel<B> {
        let image = ResNetConfig::tiny(4);
        let text = TextTransformerConfig { vocab_size: 50, ..TextTransformerConfig::tiny() };
        ClipConfig { projection_dim: 4, dropout: 0.0, ..ClipConfig::new(image, text) }
            .init(&Default::default())
    }

    /// Sum of squared gradients over all parameters, the plain way.
    fn manual_norm(model: &ClipModel<B>, grads: &<B as AutodiffBackend>::Gradients) -> f64 {
        struct V<'a>(&'a <B as AutodiffBackend>::Gradients, f64);
        impl ModuleVisitor<B> for V<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<burn::tensor::Tensor<B, D>>) {
                if let Some(g) = p.grad(self.0) {
                    self.1 += g.square().sum().into_scalar().elem::<f64>();
                }
            }
        }
        let mut v = V(grads, 0.0);
        model.visit(&mut v);
        v.1.sqrt()
    }

    fn grads(model: &ClipModel<B>) -> <B as AutodiffBackend>::Gradients {
        let device = Default::default();
        let images = Tensor::<B, 4>::random(
            [3, 3, 16, 16],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let ids = Tensor::<B, 2, burn::tensor::Int>::from_ints(
            [[1, 5, 7], [1, 9, 2], [1, 3, 3]],
            &device,
        );
        let mask = Tensor::<B, 2, burn::tensor::Int>::ones([3, 3], &device);
        model.forward(images, ids, mask).loss.mul_scalar(100.0).backward()
    }

    #[test]
    fn global_norm_is_the_norm_over_all_groups_and_clipping_bounds_the_update() {
        let model = tiny();
        let g = grads(&model);
        let want = manual_norm(&model, &g);
        assert!(want > 1.0, "{want}");
        let spec = TrainSpec {
            grad_clip_norm: Some(0.5),
            optimizer: OptimizerKind::Adam,
            weight_decay: 0.0,
            ..TrainSpec::default()
        };
        let mut optim = ClipOptimizer::<B>::new(&spec);
        let (_, report) = optim.step(model.clone(), GroupGrads::split(&model, g), 1.0);
        assert!(report.applied);
        assert!(
            (report.grad_norm.unwrap() - want).abs() / want < 1e-4,
            "{:?} vs {want}",
            report.grad_norm
        );

        // Scaling (what clipping and loss-scale removal do) multiplies every gradient: the sum of
        // squares scales by the factor squared.
        let mut g = grads(&model);
        let mut image = GradientsParams::from_module(&mut g, &model.image_encoder.model);
        let s = grads::sum_squares(&model.image_encoder.model, &mut image)
            .unwrap()
            .into_scalar()
            .elem::<f64>();
        let f = Tensor::<<B as AutodiffBackend>::InnerBackend, 1>::from_floats(
            [0.25],
            &Default::default(),
        );
        grads::scale(&model.image_encoder.model, &mut image, f);
        let scaled = grads::sum_squares(&model.image_encoder.model, &mut image)
            .unwrap()
            .into_scalar()
            .elem::<f64>();
        assert!((scaled - s * 0.0625).abs() / s < 1e-5);
    }

    /// Every trainable float parameter's rank and values, in visiting order (batch norms'
    /// running statistics, which each forward pass moves, are not trainable).
    fn snapshot<M: Module<B>>(module: &M) -> Vec<(usize, Vec<f32>)> {
        struct V(Vec<(usize, Vec<f32>)>);
        impl ModuleVisitor<B> for V {
            fn visit_float<const D: usize>(&mut self, p: &Param<burn::tensor::Tensor<B, D>>) {
                if p.is_require_grad() {
                    self.0.push((D, p.val().into_data().to_vec::<f32>().unwrap()));
                }
            }
        }
        let mut v = V(vec![]);
        module.visit(&mut v);
        v.0
    }

    /// All-zero gradients of every trainable parameter (the forward pass also moves the batch
    /// norms' running statistics: snapshot after it).
    fn zero_grads(model: &ClipModel<B>) -> <B as AutodiffBackend>::Gradients {
        let device = Default::default();
        let images = Tensor::<B, 4>::random(
            [2, 3, 16, 16],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let ids = Tensor::<B, 2, burn::tensor::Int>::from_ints([[1, 5, 7], [1, 9, 2]], &device);
        let mask = Tensor::<B, 2, burn::tensor::Int>::ones([2, 3], &device);
        model.forward(images, ids, mask).loss.mul_scalar(0.0).backward()
    }

    /// One step on all-zero gradients (Adam's own update is then zero: only decay moves weights).
    fn zero_grad_step(model: &ClipModel<B>, spec: &TrainSpec) -> ClipModel<B> {
        let g = zero_grads(model);
        ClipOptimizer::<B>::new(spec).step(model.clone(), GroupGrads::split(model, g), 1.0).0
    }

    /// (parameters shrunk by `factor`, parameters unchanged), by rank: [1-D, ≥2-D].
    fn decayed(
        before: &[(usize, Vec<f32>)],
        after: &[(usize, Vec<f32>)],
        factor: f32,
    ) -> [(usize, usize); 2] {
        let mut counts = [(0, 0); 2];
        for ((d, a), (_, b)) in before.iter().zip(after) {
            let slot = &mut counts[usize::from(*d >= 2)];
            if a == b {
                slot.1 += 1;
            } else if a
                .iter()
                .zip(b)
                .all(|(x, y)| (x * factor - y).abs() <= 1e-6 * x.abs().max(1e-3))
            {
                slot.0 += 1;
            } else {
                panic!("a parameter moved by something other than decay");
            }
        }
        counts
    }

    #[test]
    fn adamw_decays_matrices_not_biases_and_gains_and_each_group_by_its_own_rate() {
        let model = tiny();
        zero_grads(&model);
        let before = snapshot(&model);
        let spec = TrainSpec { lr: 0.1, weight_decay: 0.5, ..TrainSpec::default() };
        // 1 − lr·wd = 0.95 for every matrix; biases and norm gains untouched.
        let [one_d, matrices] = decayed(&before, &snapshot(&zero_grad_step(&model, &spec)), 0.95);
        assert!(
            one_d.0 == 0 && one_d.1 > 10 && matrices.0 > 10 && matrices.1 == 0,
            "{one_d:?} {matrices:?}"
        );
        // weight_decay_1d: everything trainable shrinks, exactly as burn's own AdamW decay does.
        let all = zero_grad_step(&model, &TrainSpec { weight_decay_1d: true, ..spec.clone() });
        let [one_d, _] = decayed(&before, &snapshot(&all), 0.95);
        assert!(one_d.0 > 10, "gains shrink too (zero biases stay zero): {one_d:?}");
        let mut burns: OptimizerAdaptor<AdamW, ClipModel<B>, B> =
            AdamWConfig::new().with_weight_decay(0.5).init();
        let g = zero_grads(&model);
        let reference = burns.step(0.1, model.clone(), GradientsParams::from_grads(g, &model));
        for ((_, a), (_, b)) in snapshot(&reference).iter().zip(snapshot(&all).iter()) {
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(1e-3)));
        }
        // Per group: no decay on the image trunk, the heads' matrices still decayed.
        let per_group =
            zero_grad_step(&model, &TrainSpec { image_encoder_weight_decay: Some(0.0), ..spec });
        assert!(snapshot(&per_group.image_encoder.model) == snapshot(&model.image_encoder.model));
        let [_, head_matrices] = decayed(
            &snapshot(&model.text_encoder.projection),
            &snapshot(&per_group.text_encoder.projection),
            0.95,
        );
        assert!(head_matrices.0 > 0, "{head_matrices:?}");
    }

    #[test]
    fn adam_adds_decay_to_the_gradient_of_matrices_only() {
        let model = tiny();
        zero_grads(&model);
        let before = snapshot(&model);
        let spec = TrainSpec {
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            weight_decay: 0.5,
            ..TrainSpec::default()
        };
        let after = snapshot(&zero_grad_step(&model, &spec));
        let mut moved = [0, 0];
        for ((d, a), (_, b)) in before.iter().zip(&after) {
            if a != b {
                moved[usize::from(*d >= 2)] += 1;
            }
        }
        assert!(moved[0] == 0 && moved[1] > 10, "{moved:?}");
    }

    #[test]
    fn loss_scale_grows_after_good_steps_and_halves_on_overflow() {
        let mut s = LossScaler {
            enabled: true,
            scale: 1024.0,
            growth_interval: 2,
            good_steps: 0,
            skipped_steps: 0,
        };
        s.update(true);
        s.update(true);
        assert_eq!(s.scale, 2048.0);
        s.update(false);
        assert_eq!((s.scale, s.skipped_steps, s.good_steps), (1024.0, 1, 0));
        let mut off = LossScaler { enabled: false, ..s.clone() };
        off.update(false);
        assert_eq!(off.skipped_steps, 1, "disabled scalers count nothing new");
    }
}
