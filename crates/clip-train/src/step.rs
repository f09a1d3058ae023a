//! One training step's forward and backward passes, over the whole batch at once or in
//! micro-batches. In micro-batches the loss is still the whole batch's (every pair is a negative
//! for every other pair), as with open_clip's `--accum-freq` (gradient caching): a first pass
//! embeds every micro-batch without keeping its graph, then each micro-batch is embedded again
//! and the loss over all embeddings, the other micro-batches' cached, is backpropagated into it.
//! The summed gradients are the whole batch's; memory holds one micro-batch's activations; the
//! price is one more forward pass.

use std::collections::HashSet;
use std::ops::Range;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use clip_data::HostBatch;
use clip_model::batch_norm::detached_training_pass;
use clip_model::loss::in_batch_accuracy;
use clip_model::precision::Precision;
use clip_model::{ClipModel, ClipOutput, ImageFeatureCache, TextFeatureCache};

use crate::collective::{all_gather_rows, Collective};
use crate::optim::GroupGrads;

/// The image side of a batch on the device: pixels, or the image tower's pooled features (a
/// frozen, cached image tower).
#[derive(Debug, Clone)]
pub enum ImageInput<B: Backend> {
    Pixels(Tensor<B, 4>),
    Features(Tensor<B, 2>),
}

/// The text side of a batch on the device: the captions' tokens, or the text tower's pooled
/// features (a frozen, cached text tower).
#[derive(Debug, Clone)]
pub enum TextInput<B: Backend> {
    Tokens { input_ids: Tensor<B, 2, Int>, attention_mask: Tensor<B, 2, Int> },
    Features(Tensor<B, 2>),
}

/// A batch on the device, row `i` of each side a pair.
#[derive(Debug, Clone)]
pub struct StepInputs<B: Backend> {
    pub image: ImageInput<B>,
    pub text: TextInput<B>,
}

impl<B: Backend> StepInputs<B> {
    /// Pixels and tokens: both towers run.
    pub fn tokens(
        images: Tensor<B, 4>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Self {
        Self {
            image: ImageInput::Pixels(images),
            text: TextInput::Tokens { input_ids, attention_mask },
        }
    }

    /// Image–caption pairs in the batch.
    pub fn len(&self) -> usize {
        match &self.image {
            ImageInput::Pixels(t) => t.dims()[0],
            ImageInput::Features(t) => t.dims()[0],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `r` of both sides (a micro-batch, a replica's share).
    pub fn rows(&self, r: Range<usize>) -> Self {
        let image = match &self.image {
            ImageInput::Pixels(t) => ImageInput::Pixels(t.clone().slice(r.clone())),
            ImageInput::Features(t) => ImageInput::Features(t.clone().slice(r.clone())),
        };
        let text = match &self.text {
            TextInput::Tokens { input_ids, attention_mask } => TextInput::Tokens {
                input_ids: input_ids.clone().slice(r.clone()),
                attention_mask: attention_mask.clone().slice(r),
            },
            TextInput::Features(t) => TextInput::Features(t.clone().slice(r)),
        };
        Self { image, text }
    }

    /// Image and text embeddings, `[len, projection_dim]` each.
    fn embed(&self, model: &ClipModel<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let image = match &self.image {
            ImageInput::Pixels(t) => model.encode_image(t.clone()),
            ImageInput::Features(t) => model.encode_image_features(t.clone()),
        };
        let text = match &self.text {
            TextInput::Tokens { input_ids, attention_mask } => {
                model.encode_text(input_ids.clone(), attention_mask.clone())
            }
            TextInput::Features(t) => model.encode_text_features(t.clone()),
        };
        (image, text)
    }
}

/// Images a frozen image tower's cache keeps (a ResNet-50 row is 8 KB: ~1.6 GB at most).
const IMAGE_CACHE_ROWS: usize = 200_000;

/// Distinct captions a frozen text tower's cache keeps (a 768-wide row is 3 KB: ~1.5 GB at most).
const TEXT_CACHE_ROWS: usize = 500_000;

/// The features of towers that do not change while a run trains, computed once per caption or
/// image: a batch's side goes to the device as features when its tower is cached, as tokens or
/// pixels otherwise.
#[derive(Debug, Default)]
pub struct FrozenFeatures {
    pub text: Option<TextFeatureCache>,
    pub image: Option<ImageFeatureCache>,
}

impl FrozenFeatures {
    /// Caches for the frozen towers that `text`/`image` name; an image tower is cached only when
    /// its input does not change from epoch to epoch (`augmented`: it does).
    pub fn new(text: bool, image: bool, augmented: bool) -> Self {
        Self {
            text: text.then(|| TextFeatureCache::new(TEXT_CACHE_ROWS)),
            image: (image && !augmented).then(|| ImageFeatureCache::new(IMAGE_CACHE_ROWS)),
        }
    }

    /// The batch on `device`, each side as features when its tower is cached.
    pub fn inputs<B: AutodiffBackend>(
        &mut self,
        model: &ClipModel<B>,
        precision: Precision,
        batch: HostBatch,
        device: &B::Device,
    ) -> StepInputs<B> {
        let n = batch.len();
        let text = match self.text.as_mut() {
            Some(cache) => {
                let features = cache.features(
                    || model.text_encoder.model.valid(),
                    precision,
                    device,
                    &batch.input_ids,
                    &batch.attention_mask,
                    batch.seq_len,
                );
                TextInput::Features(Tensor::from_data(
                    TensorData::new(features, [n, cache.dim()]),
                    device,
                ))
            }
            None => {
                let [ids, mask] = [&batch.input_ids, &batch.attention_mask].map(|v| {
                    Tensor::<B, 2, Int>::from_data(
                        TensorData::new(v.clone(), [n, batch.seq_len]),
                        device,
                    )
                });
                TextInput::Tokens { input_ids: ids, attention_mask: mask }
            }
        };
        let size = batch.image_size;
        let image = match self.image.as_mut() {
            Some(cache) => {
                let features = cache.features(
                    || model.image_encoder.model.valid(),
                    precision,
                    device,
                    &batch.image_indices,
                    &batch.images,
                    size,
                );
                ImageInput::Features(Tensor::from_data(
                    TensorData::new(features, [n, cache.dim()]),
                    device,
                ))
            }
            None => ImageInput::Pixels(Tensor::from_data(
                TensorData::new(batch.images, [n, 3, size, size]),
                device,
            )),
        };
        StepInputs { image, text }
    }
}

/// What a step's forward and backward passes produced.
pub struct StepOutcome {
    /// The whole batch's loss (unscaled).
    pub loss: f64,
    /// In-batch top-1 accuracy, image→text and text→image.
    pub acc_i2t: f64,
    pub acc_t2i: f64,
    /// Gradients of the loss times the loss factor, summed over micro-batches.
    pub grads: GroupGrads,
}

/// `n` rows cut into `parts` contiguous ranges whose sizes differ by at most one (fewer ranges
/// when there are fewer rows than parts).
pub fn micro_batch_ranges(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|j| {
            let len = base + usize::from(j < extra);
            start += len;
            start - len..start
        })
        .collect()
}

/// Forward and backward passes of one step over `inputs` in `micro_batches` parts, the loss
/// multiplied by `loss_factor` (fp16 loss scaling) before backpropagation. `reseed(j)` is called
/// before micro-batch `j` is embedded, both times it is, so that dropout draws the same masks in
/// both passes.
pub fn forward_backward<B: AutodiffBackend>(
    model: &ClipModel<B>,
    inputs: &StepInputs<B>,
    micro_batches: usize,
    loss_factor: f64,
    reseed: &mut dyn FnMut(usize),
) -> StepOutcome {
    let ranges = micro_batch_ranges(inputs.len(), micro_batches);
    if ranges.len() <= 1 {
        reseed(0);
        let (images, texts) = inputs.embed(model);
        let out = model.contrast(images, texts);
        let (loss, acc_i2t, acc_t2i) = summary(&out);
        let grads = GroupGrads::split(model, out.loss.mul_scalar(loss_factor).backward());
        return StepOutcome { loss, acc_i2t, acc_t2i, grads };
    }

    // First pass: every micro-batch's embeddings from a copy of the model whose trainable
    // weights are detached, so that no autodiff graph (and none of its saved activations) is
    // kept; still in training mode (dropout, batch statistics), but batch norms leave their
    // running statistics alone: the second pass counts each micro-batch once.
    let (detached, trainable) = detach_trainable(model);
    let (mut images, mut texts) =
        (Vec::with_capacity(ranges.len()), Vec::with_capacity(ranges.len()));
    detached_training_pass(trainable, || {
        for (j, r) in ranges.iter().enumerate() {
            reseed(j);
            let (i, t) = inputs.rows(r.clone()).embed(&detached);
            images.push(i);
            texts.push(t);
        }
    });
    drop(detached);
    let whole = model.contrast(Tensor::cat(images.clone(), 0), Tensor::cat(texts.clone(), 0));
    let (loss, acc_i2t, acc_t2i) = summary(&whole);
    drop(whole);

    // Second pass: micro-batch j with its graph, the others from the cache. Every pass sees the
    // same loss, so only the first one carries the temperature's (and logit bias's) gradient.
    let (fixed_scale, fixed_bias) = (model.scale().detach(), model.bias().map(|b| b.detach()));
    let mut grads: Option<GroupGrads> = None;
    for (j, r) in ranges.iter().enumerate() {
        reseed(j);
        let (i, t) = inputs.rows(r.clone()).embed(model);
        let (mut all_images, mut all_texts) = (images.clone(), texts.clone());
        all_images[j] = i;
        all_texts[j] = t;
        let (all_images, all_texts) = (Tensor::cat(all_images, 0), Tensor::cat(all_texts, 0));
        let out = if j == 0 {
            model.contrast(all_images, all_texts)
        } else {
            model.contrast_with(all_images, all_texts, fixed_scale.clone(), fixed_bias.clone())
        };
        let pass = GroupGrads::split(model, out.loss.mul_scalar(loss_factor).backward());
        grads = Some(match grads {
            Some(sum) => sum.add(model, pass),
            None => pass,
        });
    }
    StepOutcome { loss, acc_i2t, acc_t2i, grads: grads.expect("at least two micro-batches") }
}

/// Where a replica's pairs sit in the batch that all replicas of a step share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRows {
    /// This replica's rows of the shared batch.
    pub rows: Range<usize>,
    /// Pairs in the shared batch.
    pub total: usize,
}

/// How a replica's loss is formed from the gathered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaLoss {
    /// Every replica computes the whole gathered batch's loss (`[total, total]` logits), as
    /// open_clip with `--gather-with-grad`.
    Global,
    /// Each replica scores only its own pairs against the gathered batch (`[rows, total]`
    /// logits), as open_clip's `--local-loss`; the shares add up to the global loss.
    Local,
}

/// Serializes the draws of replicas that share a random generator: burn's backends keep one per
/// process, so replica threads reseeding and drawing dropout masks at once would take each
/// other's numbers.
static SHARED_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`forward_backward`] for one replica of a data-parallel step: the replica's pairs (`inputs`,
/// rows `place.rows` of the shared batch) are embedded, the embeddings of all replicas gathered,
/// the contrastive loss taken over the gathered batch, and its gradient brought back into this
/// replica's towers through its own embeddings only; the gradients are then summed over the
/// replicas. With one device and the same batch in as many micro-batches as there are replicas,
/// loss and gradients are the same (a test shows it).
///
/// The gather needs no differentiable collective: the loss is differentiated with respect to
/// the gathered embeddings (leaves), and that gradient, rows `place.rows` of it, is
/// backpropagated through this replica's embedding graph (open_clip's gather-with-grad gives
/// each replica the same gradient through the backward all-reduce of the gather). With the
/// global loss every replica has the whole gradient already; with the local loss the replicas'
/// shares are summed first. The temperature's (and logit bias's) gradient is counted once.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward_replica<B: AutodiffBackend>(
    model: &ClipModel<B>,
    inputs: &StepInputs<B>,
    place: &ReplicaRows,
    micro_batches: usize,
    loss_factor: f64,
    loss_kind: ReplicaLoss,
    reseed: &mut dyn FnMut(usize),
    comm: &dyn Collective<B::InnerBackend>,
) -> crate::error::Result<StepOutcome> {
    let ranges = micro_batch_ranges(inputs.len(), micro_batches);
    let embed =
        |j: usize, inputs: &StepInputs<B>, model: &ClipModel<B>, reseed: &mut dyn FnMut(usize)| {
            let _generator = SHARED_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
            reseed(j);
            inputs.embed(model)
        };
    // This replica's embeddings: kept with their graphs when the share is taken whole, else from
    // a first pass without graphs (as `forward_backward` does).
    let (kept, local) = if ranges.len() <= 1 {
        let (i, t) = embed(0, inputs, model, reseed);
        let values = (i.clone().inner(), t.clone().inner());
        (Some((i, t)), values)
    } else {
        let (detached, trainable) = detach_trainable(model);
        let (mut images, mut texts) = (Vec::new(), Vec::new());
        detached_training_pass(trainable, || {
            for (j, r) in ranges.iter().enumerate() {
                let (i, t) = embed(j, &inputs.rows(r.clone()), &detached, reseed);
                images.push(i.inner());
                texts.push(t.inner());
            }
        });
        (None, (Tensor::cat(images, 0), Tensor::cat(texts, 0)))
    };

    // Both sides gathered in one operation: `[total, 2·dim]`.
    let dim = local.0.dims()[1];
    let total = place.total;
    let gathered =
        all_gather_rows(comm, Tensor::cat(vec![local.0, local.1], 1), place.rows.clone(), total)?;
    let leaf = |cols: Range<usize>| {
        Tensor::<B, 2>::from_inner(gathered.clone().slice([0..total, cols])).require_grad()
    };
    let (all_images, all_texts) = (leaf(0..dim), leaf(dim..2 * dim));

    let first = comm.rank() == 0;
    let (scale, bias) = (model.scale(), model.bias());
    let (loss, logits) = match loss_kind {
        ReplicaLoss::Global => {
            // Every replica holds the same loss: only replica 0 differentiates the temperature.
            let (scale, bias) =
                if first { (scale, bias) } else { (scale.detach(), bias.map(|b| b.detach())) };
            let out = model.contrast_with(all_images.clone(), all_texts.clone(), scale, bias);
            (out.loss, out.logits_per_text.inner())
        }
        ReplicaLoss::Local => {
            let share = model.contrast_rows(
                all_images.clone(),
                all_texts.clone(),
                place.rows.clone(),
                scale.clone(),
                bias,
            );
            let logits = clip_model::loss::logits_per_text(
                all_texts.clone().inner(),
                all_images.clone().inner(),
                scale.inner(),
            );
            (share, logits)
        }
    };
    let mut raw = loss.clone().mul_scalar(loss_factor).backward();
    let grad = |t: &Tensor<B, 2>, raw: &mut B::Gradients| {
        t.grad_remove(raw).unwrap_or_else(|| Tensor::zeros([total, dim], &t.device()))
    };
    let (g_images, g_texts) = (grad(&all_images, &mut raw), grad(&all_texts, &mut raw));
    let loss_grads = GroupGrads::split(model, raw);
    let (g_images, g_texts, loss_value) = match loss_kind {
        ReplicaLoss::Global => (g_images, g_texts, loss.into_scalar().elem::<f64>()),
        ReplicaLoss::Local => {
            // The embeddings' gradient is the sum of every replica's share's, and so is the loss;
            // one operation for both.
            let flat = Tensor::cat(
                vec![
                    g_images.reshape([total * dim]),
                    g_texts.reshape([total * dim]),
                    loss.inner().reshape([1]),
                ],
                0,
            );
            let summed = comm.all_reduce_sum(flat)?;
            let n = total * dim;
            (
                summed.clone().slice(0..n).reshape([total, dim]),
                summed.clone().slice(n..2 * n).reshape([total, dim]),
                summed.slice(2 * n..2 * n + 1).into_scalar().elem::<f64>(),
            )
        }
    };
    let own = |g: &Tensor<B::InnerBackend, 2>, r: Range<usize>| {
        let start = place.rows.start;
        Tensor::<B, 2>::from_inner(g.clone().slice(start + r.start..start + r.end))
    };
    // The loss's gradient into this replica's towers, through its embeddings.
    let backprop = |(i, t): (Tensor<B, 2>, Tensor<B, 2>), r: Range<usize>| {
        let surrogate = (i * own(&g_images, r.clone())).sum() + (t * own(&g_texts, r)).sum();
        GroupGrads::split(model, surrogate.backward())
    };
    let mut grads = match kept {
        Some(embeddings) => backprop(embeddings, 0..inputs.len()),
        None => {
            let mut sum: Option<GroupGrads> = None;
            for (j, r) in ranges.iter().enumerate() {
                let pass = backprop(embed(j, &inputs.rows(r.clone()), model, reseed), r.clone());
                sum = Some(match sum {
                    Some(s) => s.add(model, pass),
                    None => pass,
                });
            }
            sum.expect("at least two micro-batches")
        }
    }
    .add(model, loss_grads);
    grads.all_reduce(model, comm)?;
    Ok(StepOutcome {
        loss: loss_value,
        acc_i2t: in_batch_accuracy(logits.clone().transpose()),
        acc_t2i: in_batch_accuracy(logits),
        grads,
    })
}

/// Initializes every (lazily initialized) parameter of `module` now: burn draws a parameter's
/// initial values at its first use, so a module cloned before that would diverge from its copy.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// A copy of `model` whose trainable parameters are plain (untracked) tensors, and the ids of
/// those parameters.
fn detach_trainable<B: AutodiffBackend>(model: &ClipModel<B>) -> (ClipModel<B>, HashSet<ParamId>) {
    struct Detach(HashSet<ParamId>);
    impl<B: AutodiffBackend> ModuleMapper<B> for Detach {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if !param.is_require_grad() {
                return param;
            }
            self.0.insert(param.id);
            // `detach` alone would keep `require_grad`, making a new tracked leaf.
            param.map(|t| Tensor::from_inner(t.inner()))
        }
    }
    // A lazily initialized parameter cloned before its first use would draw other values in
    // the copy.
    materialize(model);
    let mut detach = Detach(HashSet::new());
    let copy = model.clone().map(&mut detach);
    (copy, detach.0)
}

/// The loss value and in-batch accuracies (image→text, text→image) of an output.
fn summary<B: AutodiffBackend>(out: &ClipOutput<B>) -> (f64, f64, f64) {
    let loss: f64 = out.loss.clone().into_scalar().elem();
    let logits = out.logits_per_text.clone().inner();
    (loss, in_batch_accuracy(logits.clone().transpose()), in_batch_accuracy(logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_cover_the_batch_in_near_equal_parts() {
        assert_eq!(micro_batch_ranges(10, 4), vec![0..3, 3..6, 6..8, 8..10]);
        assert_eq!(micro_batch_ranges(8, 2), vec![0..4, 4..8]);
        assert_eq!(micro_batch_ranges(3, 5), vec![0..1, 1..2, 2..3]);
        assert_eq!(micro_batch_ranges(7, 1), vec![0..7]);
        assert_eq!(micro_batch_ranges(0, 3), vec![0..0]);
    }
}
