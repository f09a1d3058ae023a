//! Pooled text-tower features per distinct caption, for a tower that does not change while the
//! cache lives: a frozen (locked) text tower during training, as in LiT (Zhai et al. 2022,
//! arXiv:2111.07991), or any tower during one evaluation. Captions repeat (five per image, the
//! same wording across images, every epoch), so the tower runs once per distinct caption; with a
//! pretrained MiniLM on a CPU this turns the text side from most of a step into almost nothing.
//!
//! The tower runs in evaluation mode (no dropout), as a locked tower should.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::feature_rows::FeatureCache;
use crate::precision::Precision;
use crate::text::TextTransformer;

/// Cached features keyed by a caption's token ids (without padding).
pub type TextFeatureCache = FeatureCache<Vec<i32>>;

/// Distinct captions computed per tower call.
const CHUNK: usize = 256;

impl TextFeatureCache {
    /// Features `[batch * hidden]` (row-major) for a batch of padded token ids and its mask
    /// (`[batch, seq_len]`, host memory). `tower` is called only if some caption is new.
    pub fn features<TB: Backend>(
        &mut self,
        tower: impl FnOnce() -> TextTransformer<TB>,
        precision: Precision,
        device: &TB::Device,
        input_ids: &[i32],
        attention_mask: &[i32],
        seq_len: usize,
    ) -> Vec<f32> {
        let batch = input_ids.len().checked_div(seq_len).unwrap_or(0);
        let keys: Vec<Vec<i32>> = (0..batch)
            .map(|r| {
                let ids = &input_ids[r * seq_len..(r + 1) * seq_len];
                let mask = &attention_mask[r * seq_len..(r + 1) * seq_len];
                ids.iter().zip(mask).filter(|(_, &m)| m != 0).map(|(&i, _)| i).collect()
            })
            .collect();
        self.serve(&keys, |missing| {
            // Computed in token order (captions of similar length padded together), chunk by
            // chunk, then put back in the order asked.
            let mut order: Vec<usize> = (0..missing.len()).collect();
            order.sort_by_key(|&i| missing[i].0);
            let tower = tower();
            let mut sorted_rows: Vec<Vec<f32>> = Vec::with_capacity(missing.len());
            for chunk in order.chunks(CHUNK) {
                let captions: Vec<&Vec<i32>> = chunk.iter().map(|&i| missing[i].0).collect();
                let rows = compute(&tower, precision, device, &captions);
                let dim = rows.len() / captions.len();
                sorted_rows.extend(rows.chunks(dim).map(<[f32]>::to_vec));
            }
            let mut rows = vec![Vec::new(); missing.len()];
            for (row, &i) in sorted_rows.into_iter().zip(&order) {
                rows[i] = row;
            }
            rows.concat()
        })
    }
}

/// Runs the tower over unpadded captions, padding them to the longest.
fn compute<TB: Backend>(
    tower: &TextTransformer<TB>,
    precision: Precision,
    device: &TB::Device,
    captions: &[&Vec<i32>],
) -> Vec<f32> {
    let n = captions.len();
    let len = captions.iter().map(|c| c.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![0i32; n * len];
    let mut mask = vec![0i32; n * len];
    for (r, c) in captions.iter().enumerate() {
        ids[r * len..r * len + c.len()].copy_from_slice(c);
        mask[r * len..r * len + c.len()].fill(1);
    }
    let ids = Tensor::<TB, 2, Int>::from_data(TensorData::new(ids, [n, len]), device);
    let mask = Tensor::<TB, 2, Int>::from_data(TensorData::new(mask, [n, len]), device);
    tower.forward(ids, mask, precision).into_data().convert::<f32>().to_vec().expect("f32 features")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::TextTransformerConfig;
    use burn::backend::Flex;

    #[test]
    fn cached_features_equal_the_towers_and_repeats_hit() {
        let device = Default::default();
        let cfg = TextTransformerConfig {
            vocab_size: 50,
            hidden_size: 8,
            num_layers: 1,
            num_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 16,
            dropout: 0.0,
            attention_dropout: 0.0,
            pooling: crate::Pooling::Mean,
            ..TextTransformerConfig::distilbert_base()
        };
        let tower = cfg.init::<Flex>(&device);
        // Three rows, padded to 4; rows 0 and 2 are the same caption.
        let ids = [5, 6, 7, 0, 9, 10, 0, 0, 5, 6, 7, 0];
        let mask = [1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0];
        let want: Vec<f32> = tower
            .forward(
                Tensor::from_data(TensorData::new(ids.to_vec(), [3, 4]), &device),
                Tensor::from_data(TensorData::new(mask.to_vec(), [3, 4]), &device),
                Precision::Fp32,
            )
            .into_data()
            .to_vec()
            .unwrap();
        // (Computed first: a clone of a lazily initialized module would draw its own weights.)
        let mut cache = TextFeatureCache::new(100);
        let got = cache.features(|| tower.clone(), Precision::Fp32, &device, &ids, &mask, 4);
        assert_eq!(got.len(), 24);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!((cache.len(), cache.hits, cache.misses), (2, 0, 3));
        // A second batch of known captions never calls the tower.
        let again = cache.features::<Flex>(
            || panic!("tower called for cached captions"),
            Precision::Fp32,
            &device,
            &ids[..8],
            &mask[..8],
            4,
        );
        assert_eq!(again, got[..16]);
        assert_eq!((cache.hits, cache.misses), (2, 3));
    }

    #[test]
    fn a_full_cache_still_answers() {
        let device = Default::default();
        let cfg = TextTransformerConfig {
            vocab_size: 20,
            hidden_size: 4,
            num_layers: 1,
            num_heads: 1,
            intermediate_size: 8,
            max_position_embeddings: 8,
            ..TextTransformerConfig::distilbert_base()
        };
        let tower = cfg.init::<Flex>(&device);
        let mut cache = TextFeatureCache::new(1);
        let out = cache.features(
            || tower.clone(),
            Precision::Fp32,
            &device,
            &[3, 4, 5, 6],
            &[1, 1, 1, 1],
            2,
        );
        assert_eq!(out.len(), 8);
        assert_eq!(cache.len(), 1);
    }
}
