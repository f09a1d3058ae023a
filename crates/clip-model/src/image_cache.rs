//! Pooled image-tower features per image, for a frozen (locked) image tower trained without
//! augmentation: LiT's setting (Zhai et al. 2022, arXiv:2111.07991: a locked pretrained image
//! tower, the text tower and heads trained). The tower then gives each image the same features
//! every epoch, so it runs once per image instead of once per image and epoch; a frozen tower's
//! batch norms use their running statistics and a ResNet has no dropout, so a cached row is
//! exactly what the tower would compute again.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::feature_rows::FeatureCache;
use crate::precision::Precision;
use crate::resnet::ResNet;

/// Cached features keyed by the image's index in its dataset.
pub type ImageFeatureCache = FeatureCache<usize>;

impl ImageFeatureCache {
    /// Features `[batch * out_features]` (row-major) of a batch: `keys` name each row's image,
    /// `pixels` are the rows `[batch, 3, size, size]` (host memory). `tower` is called only if
    /// some image is new; rows of the same image in one batch are computed once.
    pub fn features<TB: Backend>(
        &mut self,
        tower: impl FnOnce() -> ResNet<TB>,
        precision: Precision,
        device: &TB::Device,
        keys: &[usize],
        pixels: &[f32],
        size: usize,
    ) -> Vec<f32> {
        let per_image = 3 * size * size;
        self.serve(keys, |missing| {
            let data: Vec<f32> = missing
                .iter()
                .flat_map(|&(_, row)| {
                    pixels[row * per_image..(row + 1) * per_image].iter().copied()
                })
                .collect();
            let images = Tensor::<TB, 4>::from_data(
                TensorData::new(data, [missing.len(), 3, size, size]),
                device,
            );
            tower()
                .forward(images, precision)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 features")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resnet::ResNetConfig;
    use burn::backend::Flex;
    use burn::module::Module;

    #[test]
    fn each_image_runs_through_the_tower_once_and_rows_match_the_tower() {
        let device = Default::default();
        let config = ResNetConfig::tiny(4);
        let tower = config.init::<Flex>(&device).no_grad();
        let size = 16;
        let pixels: Vec<f32> =
            (0..3 * 3 * size * size).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let want = tower.forward(
            Tensor::<Flex, 4>::from_data(
                TensorData::new(pixels.clone(), [3, 3, size, size]),
                &device,
            ),
            Precision::Fp32,
        );
        let want = want.into_data().to_vec::<f32>().unwrap();
        let dim = want.len() / 3;

        let mut cache = ImageFeatureCache::new(10);
        let mut calls = 0;
        // Rows 0 and 2 show image 7, row 1 image 3 (row 2's pixels are those of row 0 then).
        let mut batch = pixels.clone();
        batch.copy_within(0..3 * size * size, 2 * 3 * size * size);
        let got = cache.features(
            || {
                calls += 1;
                tower.clone()
            },
            Precision::Fp32,
            &device,
            &[7, 3, 7],
            &batch,
            size,
        );
        assert_eq!(calls, 1);
        assert_eq!((cache.len(), cache.misses, cache.hits), (2, 3, 0));
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(
            close(&got[..dim], &want[..dim])
                && close(&got[dim..2 * dim], &want[dim..2 * dim])
                && close(&got[2 * dim..], &want[..dim])
        );
        // Known images: no tower call, the same rows.
        let again = cache.features(
            || -> ResNet<Flex> { panic!("the tower should not run") },
            Precision::Fp32,
            &device,
            &[3, 7],
            &pixels,
            size,
        );
        assert_eq!(&again[..dim], &got[dim..2 * dim]);
        assert_eq!(cache.hits, 2);
    }
}
