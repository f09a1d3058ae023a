//! The exported ONNX towers compute what the Burn model computes: run by an independent runtime
//! (tract), on tiny models covering every variant the export spells out (both stems and block
//! kinds, downsampling, both poolings, token-type embeddings, L2 normalization), with trained
//! batch-norm statistics and padded captions.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use clip_model::onnx::{image_encoder_onnx, text_encoder_onnx, write_onnx};
use clip_model::{
    BlockKind, ClipConfig, ClipModel, Pooling, ResNetConfig, Stem, TextTransformerConfig,
};
use tract_onnx::prelude::*;

type B = Flex;

fn config(
    block: BlockKind,
    stem: Stem,
    pooling: Pooling,
    token_types: bool,
    normalize: bool,
) -> ClipConfig {
    let image = ResNetConfig {
        block,
        layers: [1, 2, 1, 1],
        channels: [4, 6, 8, 8],
        stem_channels: 4,
        stem,
        zero_init_residual: false,
        pointwise_matmul: true,
    };
    let text = TextTransformerConfig {
        vocab_size: 40,
        hidden_size: 12,
        num_layers: 2,
        num_heads: 3,
        intermediate_size: 20,
        max_position_embeddings: 16,
        type_vocab_size: if token_types { 2 } else { 0 },
        layer_norm_eps: if token_types { 1e-12 } else { 1e-5 },
        pooling,
        ..TextTransformerConfig::distilbert_base()
    };
    ClipConfig {
        projection_dim: 6,
        normalize_embeddings: normalize,
        ..ClipConfig::new(image, text)
    }
}

const IDS: [[i64; 7]; 3] = [[1, 5, 9, 2, 0, 0, 0], [1, 7, 3, 8, 11, 4, 2], [1, 2, 0, 0, 0, 0, 0]];

fn mask() -> Vec<i64> {
    IDS.iter().flatten().map(|&t| (t != 0) as i64).collect()
}

/// A model after one training-mode forward pass, so its batch norms hold non-trivial running
/// statistics, in inference mode.
fn trained_model(config: &ClipConfig, images: &Tensor<Autodiff<B>, 4>) -> ClipModel<B> {
    let device = Default::default();
    let model = config.init::<Autodiff<B>>(&device);
    let ids = Tensor::<Autodiff<B>, 2, Int>::from_data(
        TensorData::new(IDS.iter().flatten().copied().collect::<Vec<_>>(), [3, 7]),
        &device,
    );
    let mask = Tensor::<Autodiff<B>, 2, Int>::from_data(TensorData::new(mask(), [3, 7]), &device);
    let _ = model.forward(images.clone(), ids, mask);
    model.valid()
}

fn run(
    path: &std::path::Path,
    inputs: Vec<(tract_onnx::prelude::Tensor, InferenceFact)>,
) -> Vec<f32> {
    let mut model = tract_onnx::onnx().model_for_path(path).unwrap();
    for (i, (_, fact)) in inputs.iter().enumerate() {
        model = model.with_input_fact(i, fact.clone()).unwrap();
    }
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let out = plan.run(inputs.into_iter().map(|(t, _)| t.into()).collect()).unwrap();
    out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
}

fn assert_close(what: &str, ours: &[f32], onnx: &[f32]) {
    assert_eq!(ours.len(), onnx.len(), "{what}");
    let worst =
        ours.iter().zip(onnx).map(|(a, b)| (a - b).abs() / (1e-3 + a.abs())).fold(0f32, f32::max);
    assert!(worst < 1e-3, "{what}: relative difference {worst}\nburn {ours:?}\nonnx {onnx:?}");
}

#[test]
fn exported_towers_compute_the_burn_models_embeddings() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let variants = [
        (BlockKind::Bottleneck, Stem::Imagenet, Pooling::Cls, false, false),
        (BlockKind::Basic, Stem::Small, Pooling::Mean, true, true),
    ];
    for (n, (block, stem, pooling, token_types, normalize)) in variants.into_iter().enumerate() {
        let config = config(block, stem, pooling, token_types, normalize);
        let size = if stem == Stem::Small { 16 } else { 40 };
        let pixels = Tensor::<Autodiff<B>, 4>::random(
            [3, 3, size, size],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let model = trained_model(&config, &pixels);

        let image_path = dir.path().join(format!("image-{n}.onnx"));
        write_onnx(&image_encoder_onnx(&model, &[]), &image_path).unwrap();
        // The batch and the image size are free in the file: another batch and size too.
        let other = Tensor::<B, 4>::random(
            [1, 3, size + 8, size + 8],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        for pixels in [pixels.inner(), other] {
            let dims = pixels.dims();
            let ours = model.encode_image(pixels.clone()).into_data().to_vec::<f32>().unwrap();
            let values = pixels.into_data().to_vec::<f32>().unwrap();
            let input = tract_onnx::prelude::Tensor::from_shape(&dims, &values).unwrap();
            let onnx = run(&image_path, vec![(input, f32::fact(dims).into())]);
            assert_close(&format!("image tower {n} at {dims:?}"), &ours, &onnx);
        }

        let text_path = dir.path().join(format!("text-{n}.onnx"));
        let metadata = [("image_size".to_string(), size.to_string())];
        let proto = text_encoder_onnx(&model, &config, &metadata);
        assert_eq!(proto.metadata_props[0].value, size.to_string());
        write_onnx(&proto, &text_path).unwrap();
        // All three captions at length 7, then the first two cut to length 5 (batch and
        // sequence length are free in the file).
        for (rows, len) in [(3, 7), (2, 5)] {
            let ids: Vec<i64> = IDS.iter().take(rows).flat_map(|r| r[..len].to_vec()).collect();
            let mask: Vec<i64> = ids.iter().map(|&t| (t != 0) as i64).collect();
            let ids_burn =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [rows, len]), &device);
            let mask_burn =
                Tensor::<B, 2, Int>::from_data(TensorData::new(mask.clone(), [rows, len]), &device);
            let ours = model.encode_text(ids_burn, mask_burn).into_data().to_vec::<f32>().unwrap();
            let inputs = vec![
                (
                    tract_onnx::prelude::Tensor::from_shape(&[rows, len], &ids).unwrap(),
                    i64::fact([rows, len]).into(),
                ),
                (
                    tract_onnx::prelude::Tensor::from_shape(&[rows, len], &mask).unwrap(),
                    i64::fact([rows, len]).into(),
                ),
            ];
            let onnx = run(&text_path, inputs);
            assert_close(&format!("text tower {n} at {rows}×{len}"), &ours, &onnx);
            if normalize {
                let norm: f32 = onnx[..6].iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "{norm}");
            }
        }
    }
}
