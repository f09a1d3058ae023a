//! Contrastive losses over a batch of paired embeddings. Free functions of the embedding
//! matrices, so training, evaluation and (later) gathered multi-device features share them.

use burn::tensor::activation::{log_softmax, softmax};
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
}

/// `scale * text @ image^T`: row `i` scores text `i` against every image.
pub fn logits_per_text<B: Backend>(text: Tensor<B, 2>, image: Tensor<B, 2>, scale: Tensor<B, 1>) -> Tensor<B, 2> {
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

/// The Simple-CLIP soft-target loss with temperature `temperature` (logits already divided by it).
pub fn soft_targets<B: Backend>(
    logits: Tensor<B, 2>,
    text: Tensor<B, 2>,
    image: Tensor<B, 2>,
    temperature: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let images_similarity = image.clone().matmul(image.transpose());
    let texts_similarity = text.clone().matmul(text.transpose());
    let targets = softmax((images_similarity + texts_similarity).div_scalar(2.0).mul(temperature.unsqueeze::<2>()), 1);
    let texts_loss = (targets.clone().neg() * log_softmax(logits.clone(), 1)).sum_dim(1);
    let images_loss = (targets.transpose().neg() * log_softmax(logits.transpose(), 1)).sum_dim(1);
    (images_loss + texts_loss).div_scalar(2.0).mean()
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
}
