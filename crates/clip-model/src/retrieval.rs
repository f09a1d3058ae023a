//! Retrieval evaluation with the multi-caption protocol (as CLIP_benchmark): every caption has one
//! image, an image has several captions.
//! - text → image: a caption's hit at k when its image ranks in the top k of all images;
//! - image → text: an image's hit at k when *any* of its captions ranks in the top k of all captions.
//!
//! Similarities are cosine (both sides L2-normalized). Scores are computed on the device in chunks
//! of captions, so the full caption × image matrix never exists at once.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::clip::l2_normalize;

/// Recall at 1/5/10 and ranks, both directions.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    pub images: usize,
    pub captions: usize,
    pub t2i_r1: f64,
    pub t2i_r5: f64,
    pub t2i_r10: f64,
    pub i2t_r1: f64,
    pub i2t_r5: f64,
    pub i2t_r10: f64,
    /// Mean and median 1-based rank of the right image for a caption.
    pub t2i_mean_rank: f64,
    pub t2i_median_rank: f64,
    /// Mean and median 1-based rank of an image's best caption.
    pub i2t_mean_rank: f64,
    pub i2t_median_rank: f64,
}

impl std::fmt::Display for RetrievalMetrics {
    /// `text→image R@1 a% R@5 b% R@10 c% | image→text R@1 d% R@5 e% R@10 f%`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "text→image R@1 {:.1}% R@5 {:.1}% R@10 {:.1}% | image→text R@1 {:.1}% R@5 {:.1}% R@10 {:.1}%",
            self.t2i_r1 * 100.0,
            self.t2i_r5 * 100.0,
            self.t2i_r10 * 100.0,
            self.i2t_r1 * 100.0,
            self.i2t_r5 * 100.0,
            self.i2t_r10 * 100.0
        )
    }
}

/// Zero-based ranks: for each caption, how many images score above its own image; for each
/// image, how many captions score above its best caption.
pub fn ranks<B: Backend>(
    image_embeddings: Tensor<B, 2>,
    text_embeddings: Tensor<B, 2>,
    caption_image: &[usize],
    chunk: usize,
) -> (Vec<usize>, Vec<usize>) {
    let [n_img, _] = image_embeddings.dims();
    let [n_txt, _] = text_embeddings.dims();
    assert_eq!(caption_image.len(), n_txt, "one image index per caption");
    assert!(caption_image.iter().all(|&i| i < n_img), "caption image index out of range");
    let device = image_embeddings.device();
    let images = l2_normalize(image_embeddings);
    let texts = l2_normalize(text_embeddings);

    // Each caption's score with its own image.
    let own = Tensor::<B, 1, Int>::from_data(
        TensorData::new(caption_image.iter().map(|&i| i as i64).collect::<Vec<_>>(), [n_txt]),
        &device,
    );
    let own_images = images.clone().select(0, own);
    let positive: Vec<f32> = (texts.clone() * own_images)
        .sum_dim(1)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    // Each image's best caption score.
    let mut best = vec![f32::NEG_INFINITY; n_img];
    for (c, &i) in caption_image.iter().enumerate() {
        best[i] = best[i].max(positive[c]);
    }
    let best_t =
        Tensor::<B, 1>::from_data(TensorData::new(best, [n_img]), &device).reshape([1, n_img]);

    let mut t2i = Vec::with_capacity(n_txt);
    let mut i2t = vec![0usize; n_img];
    let chunk = chunk.max(1);
    for start in (0..n_txt).step_by(chunk) {
        let end = (start + chunk).min(n_txt);
        let rows = end - start;
        let sims = texts.clone().slice([start..end]).matmul(images.clone().transpose()); // [rows, n_img]
        let pos = Tensor::<B, 1>::from_data(
            TensorData::new(positive[start..end].to_vec(), [rows]),
            &device,
        )
        .reshape([rows, 1]);
        let above_own = sims.clone().greater(pos.expand([rows, n_img])).int().sum_dim(1);
        let above_best = sims.greater(best_t.clone().expand([rows, n_img])).int().sum_dim(0);
        let above_own: Vec<i64> =
            above_own.into_data().convert::<i64>().to_vec().unwrap_or_default();
        let above_best: Vec<i64> =
            above_best.into_data().convert::<i64>().to_vec().unwrap_or_default();
        t2i.extend(above_own.into_iter().map(|v| v as usize));
        for (acc, v) in i2t.iter_mut().zip(above_best) {
            *acc += v as usize;
        }
    }
    (t2i, i2t)
}

/// Zero-based ranks where relevance is a shared label (class-level retrieval, for datasets whose
/// captions name a class, such as Fashion-MNIST's): for each caption, how many images of another
/// label score above its best-scoring image of its own label; for each image, how many captions
/// of another label score above its best caption of its own label.
pub fn label_ranks<B: Backend>(
    image_embeddings: Tensor<B, 2>,
    text_embeddings: Tensor<B, 2>,
    image_labels: &[usize],
    text_labels: &[usize],
    chunk: usize,
) -> (Vec<usize>, Vec<usize>) {
    let [n_img, _] = image_embeddings.dims();
    let [n_txt, _] = text_embeddings.dims();
    assert_eq!(image_labels.len(), n_img, "one label per image");
    assert_eq!(text_labels.len(), n_txt, "one label per caption");
    let device = image_embeddings.device();
    let images = l2_normalize(image_embeddings);
    let texts = l2_normalize(text_embeddings);
    let img_lab = Tensor::<B, 1, Int>::from_data(
        TensorData::new(image_labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n_img]),
        &device,
    )
    .reshape([1, n_img]);
    let chunk = chunk.max(1);
    let chunks: Vec<(usize, usize)> =
        (0..n_txt).step_by(chunk).map(|s| (s, (s + chunk).min(n_txt))).collect();
    // [rows, n_img]: similarities and same-label mask of a chunk of captions.
    let block = |start: usize, end: usize| {
        let rows = end - start;
        let sims = texts.clone().slice([start..end]).matmul(images.clone().transpose());
        let lab = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                text_labels[start..end].iter().map(|&l| l as i64).collect::<Vec<_>>(),
                [rows],
            ),
            &device,
        )
        .reshape([rows, 1]);
        let same = lab.expand([rows, n_img]).equal(img_lab.clone().expand([rows, n_img]));
        (sims, same)
    };
    let host = |t: Tensor<B, 1>| -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap_or_default()
    };
    let host_int = |t: Tensor<B, 1, Int>| -> Vec<usize> {
        t.into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v as usize)
            .collect()
    };

    // Pass 1: each caption's best own-label image (done per chunk), each image's best own-label caption.
    let mut best_caption = vec![f32::NEG_INFINITY; n_img];
    let mut t2i = Vec::with_capacity(n_txt);
    for &(start, end) in &chunks {
        let rows = end - start;
        let (sims, same) = block(start, end);
        let own = sims.clone().mask_fill(same.clone().bool_not(), f32::NEG_INFINITY);
        let best_image = own.clone().max_dim(1); // [rows, 1]
        let others_above = sims.greater(best_image.expand([rows, n_img])).bool_and(same.bool_not());
        t2i.extend(host_int(others_above.int().sum_dim(1).reshape([rows])));
        for (acc, v) in best_caption.iter_mut().zip(host(own.max_dim(0).reshape([n_img]))) {
            *acc = acc.max(v);
        }
    }
    // Pass 2: captions of other labels above each image's best own-label caption.
    let best_t = Tensor::<B, 1>::from_data(TensorData::new(best_caption, [n_img]), &device)
        .reshape([1, n_img]);
    let mut i2t = vec![0usize; n_img];
    for &(start, end) in &chunks {
        let rows = end - start;
        let (sims, same) = block(start, end);
        let others_above =
            sims.greater(best_t.clone().expand([rows, n_img])).bool_and(same.bool_not());
        for (acc, v) in i2t.iter_mut().zip(host_int(others_above.int().sum_dim(0).reshape([n_img])))
        {
            *acc += v;
        }
    }
    (t2i, i2t)
}

/// Recall@1/5/10 and mean/median ranks from image and caption embeddings.
pub fn retrieval_metrics<B: Backend>(
    image_embeddings: Tensor<B, 2>,
    text_embeddings: Tensor<B, 2>,
    caption_image: &[usize],
) -> RetrievalMetrics {
    let images = image_embeddings.dims()[0];
    let captions = text_embeddings.dims()[0];
    if images == 0 || captions == 0 {
        return RetrievalMetrics::default();
    }
    let (t2i, i2t) = ranks(image_embeddings, text_embeddings, caption_image, 1024);
    from_ranks(&t2i, &i2t)
}

/// Summarizes zero-based ranks.
pub fn from_ranks(t2i: &[usize], i2t: &[usize]) -> RetrievalMetrics {
    let recall = |ranks: &[usize], k: usize| {
        ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len().max(1) as f64
    };
    let mean = |ranks: &[usize]| {
        ranks.iter().map(|&r| r as f64 + 1.0).sum::<f64>() / ranks.len().max(1) as f64
    };
    let median = |ranks: &[usize]| {
        let mut v: Vec<usize> = ranks.to_vec();
        v.sort_unstable();
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2] as f64 + 1.0,
            n => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0 + 1.0,
        }
    };
    RetrievalMetrics {
        images: i2t.len(),
        captions: t2i.len(),
        t2i_r1: recall(t2i, 1),
        t2i_r5: recall(t2i, 5),
        t2i_r10: recall(t2i, 10),
        i2t_r1: recall(i2t, 1),
        i2t_r5: recall(i2t, 5),
        i2t_r10: recall(i2t, 10),
        t2i_mean_rank: mean(t2i),
        t2i_median_rank: median(t2i),
        i2t_mean_rank: mean(i2t),
        i2t_median_rank: median(i2t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn t(rows: &[[f32; 2]]) -> Tensor<Flex, 2> {
        Tensor::from_data(TensorData::new(rows.concat(), [rows.len(), 2]), &Default::default())
    }

    #[test]
    fn ranks_follow_the_multi_caption_protocol() {
        // Three images on the unit circle at 0°, 90°, 180°.
        let images = t(&[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]);
        // Captions: image 0 has two (one right, one pointing at image 1); image 1 one (pointing at
        // image 2); image 2 one (right).
        let texts = t(&[[1.0, 0.1], [0.1, 1.0], [-1.0, 0.2], [-1.0, -0.1]]);
        let owner = [0, 0, 1, 2];
        let (t2i, i2t) = ranks(images.clone(), texts.clone(), &owner, 3);
        assert_eq!(t2i, vec![0, 1, 1, 0]);
        // Image 0's best caption (the first) is top; image 1's only caption is beaten by caption 1
        // (which belongs to image 0); image 2's caption scores 0.995, above caption 2's 0.98.
        assert_eq!(i2t[0], 0);
        assert_eq!(i2t[1], 1);
        assert_eq!(i2t[2], 0);
        let m = from_ranks(&t2i, &i2t);
        assert_eq!(m.t2i_r1, 0.5);
        assert_eq!(m.t2i_r5, 1.0);
        assert!((m.i2t_r1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.t2i_median_rank, 1.5);
        // Chunking does not change anything.
        assert_eq!(ranks(images.clone(), texts.clone(), &owner, 1), (t2i, i2t));

        // Class level: images 0 and 2 share label 0, image 1 has label 1. Caption 1 (label 0)
        // points at image 1: its best label-0 image (0, score 0.1) is beaten by image 1 only.
        // Caption 2 (label 1) scores image 2 (label 0) above its own image 1: rank 1.
        let (t2i, i2t) = label_ranks(images.clone(), texts.clone(), &[0, 1, 0], &[0, 0, 1, 0], 2);
        assert_eq!(t2i, vec![0, 1, 1, 0]);
        // Image 0: best label-0 caption is caption 0 (top) → 0; image 1: its only caption (2) is
        // beaten by caption 1 (label 0) → 1; image 2: caption 3 is top → 0.
        assert_eq!(i2t, vec![0, 1, 0]);
        assert_eq!(label_ranks(images, texts, &[0, 1, 0], &[0, 0, 1, 0], 7), (t2i, i2t));
    }
}
