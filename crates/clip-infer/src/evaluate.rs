//! Evaluation of a model on a caption split: the contrastive loss and in-batch accuracy batch by
//! batch, and retrieval recall over the whole split (each image embedded once, every caption).

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use clip_data::{ClipLoader, DataError};
use clip_model::loss::in_batch_accuracy;
use clip_model::retrieval::{from_ranks, label_ranks};
use clip_model::{retrieval_metrics, ClipModel, RetrievalMetrics, TextFeatureCache};

use crate::zeroshot::ZeroShotClassifier;
use serde::{Deserialize, Serialize};

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean loss over batches (weighted by batch size).
    pub loss: f64,
    pub acc_i2t: f64,
    pub acc_t2i: f64,
    pub retrieval: RetrievalMetrics,
    /// Class-level retrieval (a hit is any item of the same label), when labels were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_retrieval: Option<RetrievalMetrics>,
    /// Zero-shot top-1 accuracy over the images, when class prompts were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_shot_top1: Option<f64>,
}

/// Optional parts of an evaluation that need class labels.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalExtras<'a> {
    /// The label index of each of the loader's images: adds class-level retrieval.
    pub image_labels: Option<&'a [usize]>,
    /// Class prompts (labels in the same order as `image_labels`): adds zero-shot accuracy.
    pub zero_shot: Option<&'a ZeroShotClassifier>,
}

/// Runs `model` over every batch of `loader` (epoch 0, in the loader's order). The text tower
/// runs once per distinct caption.
pub fn evaluate<B: Backend>(
    model: &ClipModel<B>,
    loader: &ClipLoader,
    device: &B::Device,
) -> Result<Evaluation, DataError> {
    evaluate_with(
        model,
        loader,
        device,
        &mut TextFeatureCache::new(usize::MAX),
        EvalExtras::default(),
    )
}

/// [`evaluate`] with a text-feature cache that may outlive it (one filled by a frozen text tower
/// during training can be reused, as long as the tower has not changed) and label-based extras.
pub fn evaluate_with<B: Backend>(
    model: &ClipModel<B>,
    loader: &ClipLoader,
    device: &B::Device,
    cache: &mut TextFeatureCache,
    extras: EvalExtras<'_>,
) -> Result<Evaluation, DataError> {
    let pairs = loader.dataset();
    let n_txt = pairs.len();
    let n_img = pairs.images().len();
    let mut text_rows: Vec<Option<Vec<f32>>> = vec![None; n_txt];
    let mut image_rows: Vec<Option<Vec<f32>>> = vec![None; n_img];
    let mut caption_image = vec![0usize; n_txt];
    let (mut loss_sum, mut acc_i2t, mut acc_t2i, mut seen) = (0.0, 0.0, 0.0, 0usize);
    let mut dim = 0;
    for batch in loader.epoch(0) {
        let batch = batch?;
        let b = batch.len();
        let features = cache.features(
            || model.text_encoder.model.clone(),
            model.settings.precision,
            device,
            &batch.input_ids,
            &batch.attention_mask,
            batch.seq_len,
        );
        let text_features =
            Tensor::<B, 2>::from_data(TensorData::new(features, [b, cache.dim()]), device);
        let text_embeddings = model.encode_text_features(text_features);
        dim = text_embeddings.dims()[1];

        // Each image is embedded once, however many captions it has (eval mode: the same result).
        let mut fresh: Vec<usize> = Vec::new();
        for (row, &img) in batch.image_indices.iter().enumerate() {
            if image_rows[img].is_none() && !fresh.iter().any(|&r| batch.image_indices[r] == img) {
                fresh.push(row);
            }
        }
        if !fresh.is_empty() {
            let s = batch.image_size;
            let numel = 3 * s * s;
            let mut pixels = Vec::with_capacity(fresh.len() * numel);
            for &row in &fresh {
                pixels.extend_from_slice(&batch.images[row * numel..(row + 1) * numel]);
            }
            let images =
                Tensor::<B, 4>::from_data(TensorData::new(pixels, [fresh.len(), 3, s, s]), device);
            let embedded: Vec<f32> = model
                .encode_image(images)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default();
            for (k, &row) in fresh.iter().enumerate() {
                image_rows[batch.image_indices[row]] =
                    Some(embedded[k * dim..(k + 1) * dim].to_vec());
            }
        }
        let mut paired = Vec::with_capacity(b * dim);
        for &img in &batch.image_indices {
            paired.extend_from_slice(image_rows[img].as_deref().expect("embedded above"));
        }
        let image_embeddings = Tensor::<B, 2>::from_data(TensorData::new(paired, [b, dim]), device);

        let out = model.contrast(image_embeddings, text_embeddings);
        loss_sum += out.loss.into_scalar().elem::<f64>() * b as f64;
        acc_t2i += in_batch_accuracy(out.logits_per_text.clone()) * b as f64;
        acc_i2t += in_batch_accuracy(out.logits_per_text.transpose()) * b as f64;
        seen += b;
        let texts: Vec<f32> =
            out.text_embeddings.into_data().convert::<f32>().to_vec().unwrap_or_default();
        for (row, (&item, &img)) in batch.items.iter().zip(&batch.image_indices).enumerate() {
            text_rows[item] = Some(texts[row * dim..(row + 1) * dim].to_vec());
            caption_image[item] = img;
        }
    }
    if seen == 0 {
        return Ok(Evaluation {
            loss: 0.0,
            acc_i2t: 0.0,
            acc_t2i: 0.0,
            retrieval: RetrievalMetrics::default(),
            ..Default::default()
        });
    }
    // Every item and image is seen when the loader keeps the last partial batch.
    let texts: Vec<f32> = text_rows.into_iter().flatten().flatten().collect();
    let images: Vec<f32> = image_rows.into_iter().flatten().flatten().collect();
    let complete = texts.len() == n_txt * dim && images.len() == n_img * dim;
    let image_t =
        || Tensor::<B, 2>::from_data(TensorData::new(images.clone(), [n_img, dim]), device);
    let text_t = || Tensor::<B, 2>::from_data(TensorData::new(texts.clone(), [n_txt, dim]), device);
    let retrieval = if complete {
        retrieval_metrics(image_t(), text_t(), &caption_image)
    } else {
        RetrievalMetrics::default()
    };
    let image_labels = extras.image_labels;
    let zero_shot_top1 = match (extras.zero_shot, image_labels) {
        (Some(classifier), Some(labels)) if complete && labels.len() == n_img => {
            Some(classifier.accuracy(&images, labels))
        }
        _ => None,
    };
    let label_retrieval = match image_labels {
        Some(labels) if complete && labels.len() == n_img => {
            let text_labels: Vec<usize> = caption_image.iter().map(|&i| labels[i]).collect();
            let (t2i, i2t) = label_ranks(image_t(), text_t(), labels, &text_labels, 1024);
            Some(from_ranks(&t2i, &i2t))
        }
        _ => None,
    };
    let n = seen as f64;
    Ok(Evaluation {
        loss: loss_sum / n,
        acc_i2t: acc_i2t / n,
        acc_t2i: acc_t2i / n,
        retrieval,
        label_retrieval,
        zero_shot_top1,
    })
}
