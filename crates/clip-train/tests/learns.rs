//! A short training run on Flex learns: validation recall far above chance. In a test binary of
//! its own so that no parallel test draws from the backend's global generator during its run,
//! which keeps the result the same on every machine.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use clip_train::metrics::{read_jsonl, EpochMetrics, StepMetrics};
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

#[test]
fn training_learns_far_above_chance() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 400, &["train.epochs=8", "model.text.dropout=0.0"]);
    let run = RunDir::new(dir.path().join("run"));
    let summary = train::<B>(&c, &run, false, &Default::default(), "cpu", &mut Silent).unwrap();
    assert!(summary.completed);
    let epochs: Vec<EpochMetrics> = read_jsonl(&run.metrics().join("epochs.jsonl"));
    assert_eq!(epochs.len(), 8);
    let last = epochs.last().unwrap();
    let chance = 1.0 / last.retrieval.images as f64;
    eprintln!("val images {}, t2i R@1 {:.3}, i2t R@1 {:.3}, chance {chance:.3}", last.retrieval.images, last.retrieval.t2i_r1, last.retrieval.i2t_r1);
    assert!(last.retrieval.t2i_r1 > 8.0 * chance, "text→image R@1 {} vs chance {chance}", last.retrieval.t2i_r1);
    assert!(last.retrieval.i2t_r1 > 8.0 * chance, "image→text R@1 {} vs chance {chance}", last.retrieval.i2t_r1);
    let s = steps(&run);
    let first: f64 = s[..5].iter().map(|m| m.loss).sum::<f64>() / 5.0;
    let end: f64 = s[s.len() - 5..].iter().map(|m| m.loss).sum::<f64>() / 5.0;
    assert!(end < first * 0.6, "loss {first} -> {end}");
    // The run directory holds everything inference and resumption need.
    for f in ["config.toml", "model.json", "split.json", "model.safetensors", "curves.png", "summary.json"] {
        assert!(run.root.join(f).is_file(), "missing {f}");
    }
    assert!(run.best().join("model.mpk").is_file());
    assert!(run.step_checkpoints().len() <= 2, "keep_last = 2");
}

