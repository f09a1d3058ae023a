//! The seed notebook's optimizer, `torch.optim.Adam(params, lr=1e-4, weight_decay=5e-4)`, against
//! PyTorch's own steps (`tests/fixtures/make_adam_decay.py`): coupled L2 decay on every parameter
//! (`weight_decay_1d = true`), first alone (zero raw gradients), then with a gradient.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use clip_model::import::{export_clip, import_clip};
use clip_model::{BlockKind, ClipConfig, ClipModel, ResNetConfig, TextTransformerConfig};
use clip_train::config::{OptimizerKind, TrainSpec};
use clip_train::optim::{ClipOptimizer, GroupGrads};

type B = Autodiff<Flex>;

fn seed_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../clip-model/tests/fixtures/seed_notebook")
        .join(name)
}

/// The architecture of the tiny seed checkpoint.
fn tiny_seed_config() -> ClipConfig {
    let image = ResNetConfig {
        block: BlockKind::Bottleneck,
        layers: [1, 1, 1, 1],
        channels: [4, 8, 16, 32],
        stem_channels: 64,
        stem: Default::default(),
        zero_init_residual: true,
        pointwise_matmul: true,
    };
    let text = TextTransformerConfig {
        vocab_size: 100,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 40,
        ..TextTransformerConfig::distilbert_base()
    };
    ClipConfig { projection_dim: 16, ..ClipConfig::new(image, text) }
}

/// Gradients equal to `g` for every trainable parameter: the backward pass of `g · Σ params`.
fn constant_grads(model: &ClipModel<B>, g: f64) -> <B as AutodiffBackend>::Gradients {
    struct Sum(Option<Tensor<B, 1>>);
    impl ModuleVisitor<B> for Sum {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            if p.is_require_grad() {
                let s = p.val().sum();
                self.0 = Some(match self.0.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut sum = Sum(None);
    model.visit(&mut sum);
    sum.0.expect("trainable parameters").mul_scalar(g).backward()
}

/// Every tensor of a model exported with upstream (PyTorch) names.
fn exported(model: &ClipModel<B>, dir: &std::path::Path, name: &str) -> BTreeMap<String, Vec<f32>> {
    let path = dir.join(name);
    export_clip(&model.valid(), &path).unwrap();
    read_f32(&std::fs::read(path).unwrap(), "")
}

fn read_f32(bytes: &[u8], prefix: &str) -> BTreeMap<String, Vec<f32>> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, t)| t.dtype() == safetensors::Dtype::F32)
        .filter_map(|(k, t)| {
            let k = k.strip_prefix(prefix)?.to_string();
            Some((
                k,
                t.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ))
        })
        .collect()
}

/// Each parameter's movement from `init` matches PyTorch's within 1e-3 of its size.
fn assert_same_moves(
    phase: &str,
    init: &BTreeMap<String, Vec<f32>>,
    ours: &BTreeMap<String, Vec<f32>>,
    theirs: &BTreeMap<String, Vec<f32>>,
) {
    assert!(theirs.len() >= 90, "{phase}: {} tensors", theirs.len());
    let mut largest = 0f32;
    for (name, want) in theirs {
        let (start, got) = (&init[name], &ours[name]);
        let moved = |v: &[f32]| v.iter().zip(start).map(|(a, b)| a - b).collect::<Vec<f32>>();
        let (d_got, d_want) = (moved(got), moved(want));
        let scale = d_want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = d_got.iter().zip(&d_want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-3 * scale + 1e-9,
            "{phase} {name}: moved {err:.3e} away from PyTorch's move (largest {scale:.3e})"
        );
        largest = largest.max(scale);
    }
    // Coupled decay moves weights by about lr per step; decoupled decay would move them by
    // lr · wd · |θ|, four orders of magnitude less.
    assert!(largest > 1e-4, "{phase}: largest move {largest:.3e}");
}

#[test]
fn the_seed_notebooks_adam_matches_pytorch_step_for_step() {
    let device = Default::default();
    let (model, _) =
        import_clip(tiny_seed_config().init::<B>(&device), &seed_fixture("seed_lightning2.ckpt"))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let init = exported(&model, dir.path(), "init.safetensors");
    let expected = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adam_decay.safetensors"),
    )
    .unwrap();

    let spec = TrainSpec {
        optimizer: OptimizerKind::Adam,
        lr: 1e-4,
        weight_decay: 5e-4,
        weight_decay_1d: true,
        ..TrainSpec::default()
    };
    let mut optim = ClipOptimizer::<B>::new(&spec);
    let mut model = model;
    for _ in 0..3 {
        let g = constant_grads(&model, 0.0);
        model = optim.step(model.clone(), GroupGrads::split(&model, g), 1.0).0;
    }
    let ours = exported(&model, dir.path(), "zero3.safetensors");
    assert_same_moves("zero3", &init, &ours, &read_f32(&expected, "zero3."));

    let g = constant_grads(&model, 1e-3);
    model = optim.step(model.clone(), GroupGrads::split(&model, g), 1.0).0;
    let ours = exported(&model, dir.path(), "const4.safetensors");
    assert_same_moves("const4", &init, &ours, &read_f32(&expected, "const4."));
}
