//! Contrastive losses over a batch of paired embeddings. Free functions of the embedding
//! matrices, so training, evaluation and (later) gathered multi-device features share them.

use burn::tensor::activation::{log_sigmoid, log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// Which contrastive objective to train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContrastiveLoss {
    /// CLIP's symmetric cross-entropy with the diagonal as targets.
    #[default]
    Infonce,
    /// The Simple-CLIP tutorial's loss: targets are the softmax of the mean of the image–image
    /// and text–text similarities (softens the penalty for near-duplicate pairs).
    SoftTargets,
    /// SigLIP's pairwise sigmoid loss (Zhai et al. 2023): every (text, image) pair is its own
    /// binary match / no-match problem, with a learned bias on the logits. No softmax over the
    /// batch, so it does better than InfoNCE at the small batches one GPU holds.
    #[serde(alias = "siglip")]
    Sigmoid,
}

impl ContrastiveLoss {
    /// Whether the loss adds a learned bias to the logits (`model.logit_bias`).
    pub fn has_bias(self) -> bool {
        self == ContrastiveLoss::Sigmoid
    }
}

/// `scale * text @ image^T`: row `i` scores text `i` against every image.
pub fn logits_per_text<B: Backend>(
    text: Tensor<B, 2>,
    image: Tensor<B, 2>,
    scale: Tensor<B, 1>,
) -> Tensor<B, 2> {
    text.matmul(image.transpose()).mul(scale.unsqueeze::<2>())
}

/// Mean symmetric InfoNCE: `(CE(logits, diag) + CE(logits^T, diag)) / 2`.
pub fn infonce<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let targets = Tensor::<B, 1, Int>::arange(0..n as i64, &logits.device()).reshape([n, 1]);
    let ce = |l: Tensor<B, 2>| -> Tensor<B, 1> {
        log_softmax(l, 1).gather(1, targets.clone()).mean().neg()
    };
    (ce(logits.clone()) + ce(logits.transpose())).div_scalar(2.0)
}

/// SigLIP's loss: `-Σ log σ(z_ij · logits_ij) / n` with `z` = +1 on the diagonal (matching
/// pairs), −1 elsewhere; `logits` already scaled and biased. Symmetric in texts and images.
pub fn sigmoid_pairs<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let signs = Tensor::<B, 2>::eye(n, &logits.device()).mul_scalar(2.0).sub_scalar(1.0);
    log_sigmoid(logits * signs).sum().neg().div_scalar(n.max(1) as f64)
}

/// The Simple-CLIP soft-target loss with temperature `temperature` (logits already divided by it).
pub fn soft_targets<B: Backend>(
    logits: Tensor<B, 2>,
    text: Tensor<B, 2>,
    image: Tensor<B, 2>,
    temperature: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let images_similarity = image.clone().matmul(image.transpose());
    let texts_similarity = text.clone().matmul(text.transpose());
    let targets = softmax(
        (images_similarity + texts_similarity).div_scalar(2.0).mul(temperature.unsqueeze::<2>()),
        1,
    );
    let texts_loss = (targets.clone().neg() * log_softmax(logits.clone(), 1)).sum_dim(1);
    let images_loss = (targets.transpose().neg() * log_softmax(logits.transpose(), 1)).sum_dim(1);
    (images_loss + texts_loss).div_scalar(2.0).mean()
}

/// The share of the batch loss that rows `rows` of a batch of `image.dims()[0]` pairs carry:
/// the per-pair terms of `kind`'s loss for those pairs, divided by the whole batch's size, so
/// that the shares of disjoint row ranges covering the batch add up to the batch loss. This is
/// open_clip's `--local-loss`: a replica holding pairs `rows` of a gathered batch scores only its
/// own `rows.len()` texts and images against every other (a `[rows, batch]` block of logits, not
/// `[batch, batch]`).
pub fn loss_rows<B: Backend>(
    kind: ContrastiveLoss,
    image: Tensor<B, 2>,
    text: Tensor<B, 2>,
    rows: std::ops::Range<usize>,
    scale: Tensor<B, 1>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 1> {
    let [n, _] = image.dims();
    let device = image.device();
    let b = rows.len();
    let scaled = |a: Tensor<B, 2>, others: Tensor<B, 2>| {
        let mut l = logits_per_text(a, others, scale.clone());
        if let Some(bias) = &bias {
            l = l + bias.clone().unsqueeze::<2>();
        }
        l
    };
    // Row i of each block scores text (image) `rows.start + i` against every image (text).
    let per_text = scaled(text.clone().slice(rows.clone()), image.clone());
    let total = n.max(1) as f64;
    match kind {
        ContrastiveLoss::Infonce => {
            let per_image = scaled(image.clone().slice(rows.clone()), text);
            let targets = Tensor::<B, 1, Int>::arange(rows.start as i64..rows.end as i64, &device)
                .reshape([b, 1]);
            let ce_sum = |l: Tensor<B, 2>| log_softmax(l, 1).gather(1, targets.clone()).sum();
            (ce_sum(per_text) + ce_sum(per_image)).neg().div_scalar(2.0 * total)
        }
        ContrastiveLoss::Sigmoid => {
            let signs =
                Tensor::<B, 2>::eye(n, &device).slice(rows.clone()).mul_scalar(2.0).sub_scalar(1.0);
            log_sigmoid(per_text * signs).sum().neg().div_scalar(total)
        }
        ContrastiveLoss::SoftTargets => {
            let per_image = scaled(image.clone().slice(rows.clone()), text.clone());
            // The targets' columns need every row's similarities: [n, n], cheap beside the towers.
            let similarity =
                image.clone().matmul(image.transpose()) + text.clone().matmul(text.transpose());
            let targets =
                softmax(similarity.div_scalar(2.0).mul(scale.recip().unsqueeze::<2>()), 1);
            let texts_loss =
                (targets.clone().slice(rows.clone()).neg() * log_softmax(per_text, 1)).sum();
            let images_loss =
                (targets.slice([0..n, rows]).transpose().neg() * log_softmax(per_image, 1)).sum();
            (texts_loss + images_loss).div_scalar(2.0 * total)
        }
    }
}

/// Fraction of rows whose highest logit is on the diagonal (in-batch top-1 accuracy).
pub fn in_batch_accuracy<B: Backend>(logits: Tensor<B, 2>) -> f64 {
    let [n, _] = logits.dims();
    if n == 0 {
        return 0.0;
    }
    let targets = Tensor::<B, 1, Int>::arange(0..n as i64, &logits.device());
    let hits = logits.argmax(1).reshape([n]).equal(targets).int().sum().into_scalar();
    let hits: i64 = burn::tensor::ElementConversion::elem(hits);
    hits as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn infonce_of_uniform_logits_is_log_n_and_perfect_is_near_zero() {
        let device = Default::default();
        let uniform = Tensor::<Flex, 2>::zeros([4, 4], &device);
        assert!((infonce(uniform).into_scalar() - 4f32.ln()).abs() < 1e-6);
        let perfect = Tensor::<Flex, 2>::eye(4, &device).mul_scalar(100.0);
        assert!(infonce(perfect.clone()).into_scalar() < 1e-6);
        assert_eq!(in_batch_accuracy(perfect), 1.0);
    }

    #[test]
    fn row_shares_add_up_to_the_batch_loss_for_every_loss() {
        use burn::tensor::Distribution;
        let device = Default::default();
        let n = 7;
        let unit = |t: Tensor<Flex, 2>| {
            let norm = t.clone().square().sum_dim(1).sqrt();
            t / norm
        };
        let image =
            unit(Tensor::<Flex, 2>::random([n, 5], Distribution::Normal(0.0, 1.0), &device));
        let text = unit(Tensor::<Flex, 2>::random([n, 5], Distribution::Normal(0.0, 1.0), &device));
        let scale = Tensor::<Flex, 1>::from_floats([3.0], &device);
        for kind in
            [ContrastiveLoss::Infonce, ContrastiveLoss::Sigmoid, ContrastiveLoss::SoftTargets]
        {
            let bias = kind.has_bias().then(|| Tensor::<Flex, 1>::from_floats([-1.5], &device));
            let mut logits = logits_per_text(text.clone(), image.clone(), scale.clone());
            if let Some(b) = &bias {
                logits = logits + b.clone().unsqueeze::<2>();
            }
            let whole: f32 = match kind {
                ContrastiveLoss::Infonce => infonce(logits),
                ContrastiveLoss::Sigmoid => sigmoid_pairs(logits),
                ContrastiveLoss::SoftTargets => {
                    soft_targets(logits, text.clone(), image.clone(), scale.clone().recip())
                }
            }
            .into_scalar();
            let parts: f32 = [0..3, 3..5, 5..7]
                .into_iter()
                .map(|r| {
                    let share = loss_rows(
                        kind,
                        image.clone(),
                        text.clone(),
                        r,
                        scale.clone(),
                        bias.clone(),
                    );
                    share.into_scalar()
                })
                .sum();
            assert!(whole > 0.1, "{kind:?}: {whole}");
            assert!((whole - parts).abs() < 1e-5 * whole, "{kind:?}: {whole} vs {parts}");
        }
    }

    #[test]
    fn sigmoid_loss_matches_its_definition() {
        let device = Default::default();
        let values = [[2.0f32, -1.0, 0.5], [-3.0, 1.5, 0.0], [0.25, -0.5, -2.0]];
        let logits = Tensor::<Flex, 2>::from_floats(values, &device);
        let mut want = 0.0f64;
        for (i, row) in values.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                let z = if i == j { 1.0 } else { -1.0 };
                want -= (1.0 / (1.0 + (-(z * x as f64)).exp())).ln();
            }
        }
        want /= 3.0;
        let got = sigmoid_pairs(logits).into_scalar() as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Confident and right: near zero; the same margins with the labels swapped: large.
        let right = Tensor::<Flex, 2>::eye(3, &device).mul_scalar(40.0).sub_scalar(20.0);
        assert!(sigmoid_pairs(right.clone()).into_scalar() < 1e-6);
        assert!(sigmoid_pairs(right.neg()).into_scalar() > 50.0);
    }
}
