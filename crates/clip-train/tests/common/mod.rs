//! The small experiment the training tests share: a tiny model on generated shapes of 32 px.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use clip_train::metrics::{read_jsonl, StepMetrics};
use clip_train::{train, ExperimentConfig, RunDir, Silent, TrainSummary};

pub type B = Autodiff<Flex>;

/// A small experiment on `images` generated shapes of 32 px.
pub fn config(dir: &Path, images: usize, overrides: &[&str]) -> ExperimentConfig {
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

/// Mean loss of the first three and of the last three steps.
#[allow(dead_code)]
pub fn first_and_last_losses(s: &[StepMetrics]) -> (f64, f64) {
    let mean = |m: &[StepMetrics]| m.iter().map(|m| m.loss).sum::<f64>() / m.len() as f64;
    (mean(&s[..3]), mean(&s[s.len() - 3..]))
}

pub fn steps(run: &RunDir) -> Vec<StepMetrics> {
    read_jsonl(&run.metrics().join("steps.jsonl"))
}

/// Serializes the tests of one test binary that train: the backend's random generator is
/// process-wide, so concurrent runs would draw each other's initial weights and dropout masks.
#[allow(dead_code)]
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Trains `c` from scratch into `run` on the CPU, silently.
#[allow(dead_code)]
pub fn train_new(c: &ExperimentConfig, run: &RunDir) -> clip_train::Result<TrainSummary> {
    train::<B>(c, run, false, &Default::default(), "cpu", &mut Silent)
}

/// Asks for a graceful stop after `.0` steps (`.1`: the steps seen).
#[allow(dead_code)]
pub struct StopAt(pub usize, pub usize);

impl clip_train::Observer for StopAt {
    fn on_step(&mut self, m: &StepMetrics) {
        self.1 = m.step;
    }
    fn should_stop(&mut self) -> bool {
        self.1 >= self.0
    }
}

/// A model of `c` with every parameter drawn (seed 3), and a random batch of `n` pairs of it
/// (32 px images, 9 tokens).
#[allow(dead_code)]
pub fn model_and_batch(
    c: &ExperimentConfig,
    n: usize,
) -> (clip_model::ClipModel<B>, clip_train::step::StepInputs<B>) {
    use burn::tensor::backend::Backend;
    use burn::tensor::{Distribution, Int, Tensor};
    let device = Default::default();
    let clip = c.clip_config().unwrap();
    B::seed(&device, 3);
    let model = clip.init::<B>(&device);
    clip_train::step::materialize(&model);
    let images = Tensor::<B, 4>::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let input_ids =
        Tensor::<B, 2, Int>::random([n, 9], Distribution::Uniform(1.0, 2000.0), &device);
    let attention_mask = Tensor::<B, 2, Int>::ones([n, 9], &device);
    (model, clip_train::step::StepInputs::tokens(images, input_ids, attention_mask))
}
