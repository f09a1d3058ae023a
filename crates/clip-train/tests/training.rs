//! Training on Flex with a tiny model on generated shapes: the mixed-precision modes train with
//! f32 master weights, fp16 loss scaling skips overflowing steps, bad configs fail early.


use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Tensor};
use clip_train::checkpoint::load_model;
use clip_train::metrics::{read_jsonl, StepMetrics};
use clip_train::{train, ExperimentConfig, RunDir, Silent};

type B = Autodiff<Flex>;

/// A small experiment on `images` generated shapes of 32 px.
fn config(dir: &Path, images: usize, overrides: &[&str]) -> ExperimentConfig {
    let text = format!(
        r#"
name = "test"
runs_dir = "runs"
[data]
captions = "data/results.csv"
images = "data/images"
image_size = 32
text_max_length = 40
batch_size = 32
num_workers = 2
val_size = 0.2
[data.synthetic]
images = {images}
image_size = 32
[model]
image_encoder = "custom"
text_encoder = "custom"
projection_dim = 32
dropout = 0.0
normalize_embeddings = true
learnable_temperature = true
temperature = 0.07
[model.image]
block = "basic"
layers = [1, 1, 1, 1]
channels = [8, 16, 32, 64]
stem_channels = 8
zero_init_residual = false
[model.text]
vocab_size = 30522
hidden_size = 32
num_layers = 1
num_heads = 2
intermediate_size = 64
max_position_embeddings = 48
dropout = 0.1
attention_dropout = 0.0
[train]
epochs = 2
lr = 2e-3
weight_decay = 1e-4
schedule = "cosine"
warmup_steps = 5
backend = "cpu"
"#
    );
    let path = dir.join("exp.toml");
    std::fs::write(&path, text).unwrap();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    ExperimentConfig::load(&path, &overrides).unwrap()
}

fn steps(run: &RunDir) -> Vec<StepMetrics> {
    read_jsonl(&run.metrics().join("steps.jsonl"))
}

/// Collects the dtypes of all float parameters.
struct Dtypes(Vec<DType>);
impl ModuleVisitor<B> for Dtypes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().dtype());
    }
}

#[test]
fn mixed_precision_trains_with_f32_master_weights() {
    for precision in ["bf16-mixed", "fp16-mixed"] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 120, &[&format!("train.precision=\"{precision}\""), "train.epochs=3"]);
        let run = RunDir::new(dir.path().join("run"));
        let summary = train::<B>(&c, &run, false, &Default::default(), "cpu", &mut Silent).unwrap();
        assert!(summary.completed, "{precision}");
        let s = steps(&run);
        let first: f64 = s[..3].iter().map(|m| m.loss).sum::<f64>() / 3.0;
        let end: f64 = s[s.len() - 3..].iter().map(|m| m.loss).sum::<f64>() / 3.0;
        assert!(end < first * 0.85, "{precision}: loss {first} -> {end}");
        let model = load_model(c.clip_config().unwrap().init::<B>(&Default::default()), &run.latest().unwrap(), &Default::default()).unwrap();
        let mut dtypes = Dtypes(vec![]);
        model.visit(&mut dtypes);
        assert!(!dtypes.0.is_empty() && dtypes.0.iter().all(|d| *d == DType::F32), "{precision}: {:?}", dtypes.0);
        if precision == "fp16-mixed" {
            assert!(s.iter().all(|m| m.loss_scale.is_some()));
        }
    }
}

#[test]
fn fp16_overflowing_steps_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // A loss scale of 2^126 overflows f32 at once: the first steps' gradients are infinite.
    let c = config(dir.path(), 60, &["train.precision=\"fp16-mixed\"", "train.loss_scale=8.5e37", "train.max_steps=4"]);
    let run = RunDir::new(dir.path().join("run"));
    let before = c.clip_config().unwrap();
    let summary = train::<B>(&c, &run, false, &Default::default(), "cpu", &mut Silent).unwrap();
    let s = steps(&run);
    assert!(summary.skipped_steps >= 1, "{summary:?}");
    assert_eq!(s[0].skipped_steps, 1);
    assert!((s[0].loss_scale.unwrap() - 8.5e37 / 2.0).abs() < 1e30, "halved: {:?}", s[0].loss_scale);
    assert!(s.iter().all(|m| m.loss.is_finite()));
    let _ = before;
}

#[test]
fn bad_configs_fail_before_training_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 20, &[]);
    let path: PathBuf = dir.path().join("exp.toml");
    let err = ExperimentConfig::load(&path, &["train.optimizer=\"sgd\"".into()]).unwrap_err().to_string();
    assert!(err.contains("sgd") && err.contains("exp.toml"), "{err}");
    let err = ExperimentConfig::load(&path, &["model.image.layers=[1,1]".into()]).unwrap_err().to_string();
    assert!(err.contains("layers"), "{err}");
    // A missing dataset is named at the start, not after building a model.
    let mut missing = c.clone();
    missing.data.synthetic = None;
    missing.data.captions = dir.path().join("nowhere/results.csv");
    missing.data.images = dir.path().join("nowhere/images");
    let err = train::<B>(&missing, &RunDir::new(dir.path().join("r")), false, &Default::default(), "cpu", &mut Silent).unwrap_err();
    assert!(err.to_string().contains("nowhere/images"), "{err}");
    assert!(!dir.path().join("r/checkpoints").exists());
}
