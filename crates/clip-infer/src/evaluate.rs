//! Evaluation of a model on a caption split: the contrastive loss and in-batch accuracy batch by
//! batch, and retrieval recall over the whole split (each image embedded once, every caption).

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use clip_data::{ClipLoader, DataError};
use clip_model::loss::in_batch_accuracy;
use clip_model::{retrieval_metrics, ClipModel, RetrievalMetrics};
use serde::{Deserialize, Serialize};

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean loss over batches (weighted by batch size).
    pub loss: f64,
    pub acc_i2t: f64,
    pub acc_t2i: f64,
    pub retrieval: RetrievalMetrics,
}

/// Runs `model` over every batch of `loader` (epoch 0, in the loader's order).
pub fn evaluate<B: Backend>(model: &ClipModel<B>, loader: &ClipLoader, device: &B::Device) -> Result<Evaluation, DataError> {
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
        let on_device = batch.to_device::<B>(device);
        let out = model.forward(on_device.images, on_device.input_ids, on_device.attention_mask);
        loss_sum += out.loss.into_scalar().elem::<f64>() * b as f64;
        acc_t2i += in_batch_accuracy(out.logits_per_text.clone()) * b as f64;
        acc_i2t += in_batch_accuracy(out.logits_per_text.transpose()) * b as f64;
        seen += b;
        dim = out.text_embeddings.dims()[1];
        let texts: Vec<f32> = out.text_embeddings.into_data().convert::<f32>().to_vec().unwrap_or_default();
        let images: Vec<f32> = out.image_embeddings.into_data().convert::<f32>().to_vec().unwrap_or_default();
        for (row, (&item, &img)) in batch.items.iter().zip(&batch.image_indices).enumerate() {
            text_rows[item] = Some(texts[row * dim..(row + 1) * dim].to_vec());
            caption_image[item] = img;
            if image_rows[img].is_none() {
                image_rows[img] = Some(images[row * dim..(row + 1) * dim].to_vec());
            }
        }
    }
    if seen == 0 {
        return Ok(Evaluation { loss: 0.0, acc_i2t: 0.0, acc_t2i: 0.0, retrieval: RetrievalMetrics::default() });
    }
    // Every item and image is seen when the loader keeps the last partial batch.
    let texts: Vec<f32> = text_rows.into_iter().flatten().flatten().collect();
    let images: Vec<f32> = image_rows.into_iter().flatten().flatten().collect();
    let retrieval = if texts.len() == n_txt * dim && images.len() == n_img * dim {
        retrieval_metrics(
            Tensor::<B, 2>::from_data(TensorData::new(images, [n_img, dim]), device),
            Tensor::<B, 2>::from_data(TensorData::new(texts, [n_txt, dim]), device),
            &caption_image,
        )
    } else {
        RetrievalMetrics::default()
    };
    let n = seen as f64;
    Ok(Evaluation {
        loss: loss_sum / n,
        acc_i2t: acc_i2t / n,
        acc_t2i: acc_t2i / n,
        retrieval,
    })
}
