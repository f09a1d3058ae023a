//! Experiment configs: one TOML file with `[data]`, `[model]`, `[train]` and `[checkpoint]`,
//! command-line overrides (`--set train.lr=3e-4`), and the resolved config saved in each run.
//!
//! Unknown keys and bad values are errors naming the key and the file. Relative paths are
//! relative to the config file; the resolved config holds absolute ones.

use std::path::{Path, PathBuf};

use clip_data::config::join_clean;
use clip_data::DataConfig;
use clip_model::import::hf_text_config;
use clip_model::{
    ClipConfig, ContrastiveLoss, Pooling, Precision, ResNetConfig, TextTransformerConfig,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Run name: runs go to `<runs_dir>/<name>`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where runs are written (relative to the config file).
    #[serde(default = "default_runs_dir")]
    pub runs_dir: PathBuf,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub train: TrainSpec,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    #[serde(default)]
    pub eval: EvalSpec,
}

/// `[eval]`: label-based validation for datasets whose captions name a class (Fashion-MNIST):
/// class-level retrieval and zero-shot accuracy with prompts, at every validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSpec {
    /// CSV with an `image` column (file name) and `label_column`.
    pub labels: Option<PathBuf>,
    pub label_column: String,
    /// Class names in prompt order (default: the distinct labels, sorted).
    pub classes: Option<Vec<String>>,
    /// Zero-shot prompt templates, one per line with `{}` (zero-shot is skipped without them).
    pub templates: Option<PathBuf>,
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self { labels: None, label_column: "label".into(), classes: None, templates: None }
    }
}

fn default_name() -> String {
    "experiment".into()
}
fn default_runs_dir() -> PathBuf {
    "../runs".into()
}

/// `[model]`: the towers by name (or a custom shape), heads, temperature and initial weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// `resnet18`, `resnet34`, `resnet50`, `resnet101`, `resnet152`, or `custom` (then `[model.image]`).
    pub image_encoder: String,
    pub image: Option<ResNetConfig>,
    /// `distilbert-base-uncased`, `all-minilm-l6-v2`, a Hugging Face model directory (its
    /// `config.json`), or `custom` (then `[model.text]`).
    pub text_encoder: String,
    pub text: Option<TextTransformerConfig>,
    /// Pooling of the text tower (default: `cls` for DistilBERT/BERT, `mean` for MiniLM).
    pub pooling: Option<Pooling>,
    /// Width of the image features; checked against the encoder when given (the seed: 2048).
    pub image_embedding: Option<usize>,
    /// Width of the text features; checked against the encoder when given (the seed: 768).
    pub text_embedding: Option<usize>,
    pub projection_dim: usize,
    pub dropout: f64,
    pub temperature: f64,
    pub learnable_temperature: bool,
    pub max_logit_scale: f64,
    pub normalize_embeddings: bool,
    /// `infonce` (CLIP), `soft-targets` (the Simple-CLIP tutorial) or `sigmoid` (SigLIP).
    pub loss: ContrastiveLoss,
    /// Initial logit bias of the sigmoid loss (SigLIP: −10, with temperature = 0.1).
    pub logit_bias: f64,
    /// Start the towers from pretrained weights (`image_weights` / `text_weights`; nothing is
    /// downloaded).
    pub pretrained: bool,
    /// A timm/torchvision ResNet state dict.
    pub image_weights: Option<PathBuf>,
    /// An HF `model.safetensors` / `pytorch_model.bin`, or the directory holding one.
    pub text_weights: Option<PathBuf>,
    /// A whole CLIP checkpoint to start from (the seed notebook's `.ckpt`, or an exported model).
    pub checkpoint: Option<PathBuf>,
    /// Train both towers' trunks (the heads always train).
    pub trainable: bool,
    pub image_trainable: Option<bool>,
    pub text_trainable: Option<bool>,
    /// Train only the last N stages of the image trunk / last N layers of the text trunk.
    pub image_trainable_stages: Option<usize>,
    pub text_trainable_layers: Option<usize>,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            image_encoder: "resnet50".into(),
            image: None,
            text_encoder: "distilbert-base-uncased".into(),
            text: None,
            pooling: None,
            image_embedding: None,
            text_embedding: None,
            projection_dim: 256,
            dropout: 0.1,
            temperature: 1.0,
            learnable_temperature: false,
            max_logit_scale: 100.0,
            normalize_embeddings: false,
            loss: ContrastiveLoss::Infonce,
            logit_bias: -10.0,
            pretrained: false,
            image_weights: None,
            text_weights: None,
            checkpoint: None,
            trainable: true,
            image_trainable: None,
            text_trainable: None,
            image_trainable_stages: None,
            text_trainable_layers: None,
        }
    }
}

/// Optimizer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with L2 weight decay added to the gradient (PyTorch `Adam(weight_decay=...)`).
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
}

/// What a training step with an infinite or NaN loss or gradient does (`train.on_nonfinite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// End the run with an error naming the step; the weights of the step before are saved.
    Stop,
    /// Leave the weights as they were and go on with the next batch (a rare bad batch), up to
    /// `train.nonfinite_skip_limit` such steps in a row.
    Skip,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// `lr` throughout (after the optional warmup).
    Constant,
    /// Linear warmup, then cosine decay to `min_lr` at the last step.
    Cosine,
    /// Multiply the learning rates by `plateau_factor` when more than `plateau_patience`
    /// validations in a row have not improved `checkpoint.best_by` (PyTorch's
    /// `ReduceLROnPlateau`, the seed notebook's schedule), down to `min_lr`.
    Plateau,
}

/// Which backend trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The fastest backend this build has and this machine runs (see docs/gpu.md).
    #[default]
    Auto,
    /// burn's CUDA backend.
    Cuda,
    /// burn's Flex CPU backend.
    Cpu,
    /// burn's LibTorch backend (`tch` build feature): PyTorch's kernels, on a GPU when LibTorch
    /// has CUDA and one answers, otherwise on the CPU.
    Tch,
}

/// `[train]`: optimization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    pub epochs: usize,
    /// Stop after this many optimizer steps (smoke runs), even mid-epoch.
    pub max_steps: Option<usize>,
    pub lr: f64,
    /// Learning rates per parameter group; each defaults to `lr`.
    pub image_encoder_lr: Option<f64>,
    pub text_encoder_lr: Option<f64>,
    pub head_lr: Option<f64>,
    pub weight_decay: f64,
    /// Weight decay per parameter group; each defaults to `weight_decay` (the seed notebook
    /// decays only its heads).
    pub image_encoder_weight_decay: Option<f64>,
    pub text_encoder_weight_decay: Option<f64>,
    pub head_weight_decay: Option<f64>,
    /// Also decay 1-D parameters: biases, normalization gains, the temperature and the logit
    /// bias. Off by default, as in open_clip: decaying them pulls the learned temperature and
    /// the norms' scales toward zero.
    pub weight_decay_1d: bool,
    pub optimizer: OptimizerKind,
    pub betas: [f64; 2],
    pub eps: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    /// The floor of the cosine and plateau schedules, relative to `lr`: every group's rate stops
    /// at its own base rate × `min_lr / lr`.
    pub min_lr: f64,
    /// `schedule = "plateau"`: validations without improvement tolerated before a reduction,
    /// and the factor of each reduction (the seed notebook's: 1 and 0.8).
    pub plateau_patience: usize,
    pub plateau_factor: f64,
    /// Clip the global gradient norm to this value (off when absent).
    pub grad_clip_norm: Option<f64>,
    /// A step whose loss or gradient is infinite or NaN (fp32, bf16; fp16-mixed's loss scaler
    /// always skips those and lowers its scale) stops the run or is skipped. Either way no
    /// non-finite value ever reaches the weights or a checkpoint.
    pub on_nonfinite: NonFinitePolicy,
    /// `on_nonfinite = "skip"`: the run stops all the same after this many such steps in a row.
    pub nonfinite_skip_limit: usize,
    pub precision: Precision,
    /// fp16-mixed: initial loss scale, and good steps before it doubles.
    pub loss_scale: f64,
    pub loss_scale_growth_interval: usize,
    pub backend: BackendChoice,
    /// Seed of initialization and dropout (data order uses `data.seed`).
    pub seed: u64,
    /// Validate (loss, in-batch accuracy, retrieval recall) every this many epochs (0: not at
    /// epoch ends, only every `val_every_steps` and at the end of the run).
    pub val_every_epochs: usize,
    /// Also validate every this many steps, inside epochs (0: off). For long epochs: the best
    /// model, early stopping and the curves then see the run between epoch ends. Each such
    /// validation is followed by a checkpoint, so a resumed run knows what it found.
    pub val_every_steps: usize,
    /// Drop the last, smaller training batch of an epoch (a 1-sample batch has no negatives).
    pub drop_last: bool,
    /// With a frozen text tower, compute each distinct caption's features once and reuse them
    /// (LiT-style; the frozen tower then runs without dropout).
    pub cache_frozen_text: bool,
    /// With a frozen image tower and no augmentation, compute each image's features once and
    /// reuse them every epoch (LiT: a locked pretrained image tower).
    pub cache_frozen_image: bool,
    /// Split each batch into this many micro-batches for the forward and backward passes:
    /// gradient accumulation that keeps the whole batch's loss (every pair a negative for every
    /// other; features cached, as open_clip's `--accum-freq`), with one micro-batch's activation
    /// memory, for one extra forward pass.
    pub micro_batches: usize,
    /// Keep only the outputs of compute-bound operations (convolutions, matmuls) for the
    /// backward pass and recompute the memory-bound ones (activations, normalization
    /// arithmetic) from them: about half the training memory for a few percent more time
    /// (burn's balanced checkpointing; the `clip` binary picks the autodiff backend from it).
    pub recompute_activations: bool,
    /// Also write the step and validation metrics as TensorBoard event files (`tensorboard/`).
    pub tensorboard: bool,
    /// End the run (as finished, exporting the best model) after this many validations in a
    /// row without a better `checkpoint.best_by`.
    pub early_stop_patience: Option<usize>,
    /// Train data-parallel on these devices of the backend (indices; empty or one: a single
    /// device). One replica per entry, each with `data.batch_size / devices` pairs of every
    /// batch; the loss is the whole batch's. On the CPU backend every entry is the CPU (replicas
    /// share its cores: for testing what runs on GPUs).
    pub devices: Vec<usize>,
    /// With several devices, each replica scores only its own pairs against the gathered batch
    /// (open_clip's `--local-loss`): `[batch / devices, batch]` logits per replica instead of
    /// `[batch, batch]`, the same loss and gradients, one more exchange of the embeddings'
    /// gradient.
    pub local_loss: bool,
    /// Machines training together (each with `devices`); 1: this machine alone. Every node runs
    /// `clip train` with the same config and its own `node_rank`; node 0 writes the run.
    pub nodes: usize,
    /// This machine's place among `nodes` (`--node-rank`).
    pub node_rank: usize,
    /// `HOST:PORT` where node 0 listens for the other nodes: reachable from every node.
    pub coordinator: Option<String>,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            epochs: 4,
            max_steps: None,
            lr: 1e-3,
            image_encoder_lr: None,
            text_encoder_lr: None,
            head_lr: None,
            weight_decay: 1e-3,
            image_encoder_weight_decay: None,
            text_encoder_weight_decay: None,
            head_weight_decay: None,
            weight_decay_1d: false,
            optimizer: OptimizerKind::Adamw,
            betas: [0.9, 0.999],
            eps: 1e-8,
            schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            min_lr: 0.0,
            plateau_patience: 1,
            plateau_factor: 0.8,
            grad_clip_norm: None,
            on_nonfinite: NonFinitePolicy::Stop,
            nonfinite_skip_limit: 10,
            precision: Precision::Fp32,
            loss_scale: 65536.0,
            loss_scale_growth_interval: 2000,
            backend: BackendChoice::Auto,
            seed: 42,
            val_every_epochs: 1,
            val_every_steps: 0,
            drop_last: true,
            cache_frozen_text: true,
            cache_frozen_image: true,
            micro_batches: 1,
            recompute_activations: false,
            tensorboard: true,
            early_stop_patience: None,
            devices: Vec::new(),
            local_loss: false,
            nodes: 1,
            node_rank: 0,
            coordinator: None,
        }
    }
}

/// `[checkpoint]`: when to save and what to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSpec {
    /// Also save every this many steps (0: only at epoch ends).
    pub every_steps: usize,
    /// Step/epoch checkpoints kept (older ones are deleted); the best is always kept.
    pub keep_last: usize,
    /// What makes a validated model the best one (kept in `checkpoints/best`, exported at the end).
    pub best_by: BestBy,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self { every_steps: 0, keep_last: 2, best_by: BestBy::default() }
    }
}

/// The validation metric that picks the best model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestBy {
    /// The lowest validation loss.
    #[default]
    ValLoss,
    /// The highest sum of recall@1/5/10 in both directions, in percent (0–600): the usual
    /// model selection for retrieval.
    Rsum,
    /// The highest zero-shot top-1 accuracy (needs `[eval]` labels and templates).
    ZeroShot,
}

impl BestBy {
    /// Whether a lower value is better.
    pub fn lower_is_better(self) -> bool {
        self == BestBy::ValLoss
    }

    /// The metric's name as configs spell it (`val_loss`, `rsum`, `zero_shot`).
    pub fn name(self) -> String {
        config_name(self)
    }
}

/// A unit enum's name as configs spell it (its serde name).
pub fn config_name(value: impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

impl ExperimentConfig {
    /// Reads a config file, applies `key=value` overrides, resolves paths and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::parse(&text, path, overrides)
    }

    /// Like [`load`](Self::load) for config text said to live at `path` (an embedded config).
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self> {
        let bad = |message: String| TrainError::Config { path: path.into(), message };
        // Parse strictly first so that errors in the file carry its line numbers.
        let toml_err = |source| TrainError::Toml { path: path.into(), source };
        let mut config: ExperimentConfig = toml::from_str(text).map_err(toml_err)?;
        if !overrides.is_empty() {
            let mut table: toml::Table = toml::from_str(text).map_err(toml_err)?;
            for o in overrides {
                apply_override(&mut table, o).map_err(|m| bad(format!("--set {o}: {m}")))?;
            }
            config = ExperimentConfig::deserialize(toml::Value::Table(table))
                .map_err(|e| bad(format!("after --set {}: {e}", overrides.join(" "))))?;
        }
        // Absolute, so that the copy saved in a run directory still points at the same files.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        config.resolve_paths(&base);
        config.validate(path)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.data.resolve_paths(base);
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = join_clean(base, p);
            }
        };
        fix(&mut self.runs_dir);
        for p in [
            &mut self.model.image_weights,
            &mut self.model.text_weights,
            &mut self.model.checkpoint,
            &mut self.eval.labels,
            &mut self.eval.templates,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if looks_like_path(&self.model.text_encoder)
            && Path::new(&self.model.text_encoder).is_relative()
        {
            self.model.text_encoder =
                join_clean(base, Path::new(&self.model.text_encoder)).display().to_string();
        }
    }

    /// Checks every value; messages name the key and the file.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Err(TrainError::Config { path: path.into(), message });
        self.data.validate(path)?;
        let t = &self.train;
        if t.epochs == 0 && t.max_steps.is_none() {
            return bad("train.epochs must be at least 1".into());
        }
        for (key, v) in [
            ("train.lr", Some(t.lr)),
            ("train.image_encoder_lr", t.image_encoder_lr),
            ("train.text_encoder_lr", t.text_encoder_lr),
            ("train.head_lr", t.head_lr),
        ] {
            if let Some(v) = v {
                if !(v > 0.0 && v.is_finite()) {
                    return bad(format!("{key} must be a positive number, got {v}"));
                }
            }
        }
        let decays = [
            ("weight_decay", Some(t.weight_decay)),
            ("image_encoder_weight_decay", t.image_encoder_weight_decay),
            ("text_encoder_weight_decay", t.text_encoder_weight_decay),
            ("head_weight_decay", t.head_weight_decay),
        ];
        if let Some((key, Some(v))) =
            decays.into_iter().find(|(_, v)| v.is_some_and(|v| !(v >= 0.0 && v.is_finite())))
        {
            return bad(format!("train.{key} must be a finite number >= 0, got {v}"));
        }
        if !(t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            return bad(format!("train.min_lr must be in [0, train.lr], got {}", t.min_lr));
        }
        if !(t.plateau_factor > 0.0 && t.plateau_factor < 1.0) {
            return bad(format!(
                "train.plateau_factor must be in (0, 1), got {}",
                t.plateau_factor
            ));
        }
        if t.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(format!("train.betas must be in [0, 1), got {:?}", t.betas));
        }
        if let Some(c) = t.grad_clip_norm {
            if !(c > 0.0) {
                return bad(format!("train.grad_clip_norm must be positive, got {c}"));
            }
        }
        if !(t.loss_scale >= 1.0) || t.loss_scale_growth_interval == 0 {
            return bad(
                "train.loss_scale must be >= 1 and train.loss_scale_growth_interval >= 1".into()
            );
        }
        if self.eval.templates.is_some() && self.eval.labels.is_none() {
            return bad(
                "eval.templates needs eval.labels (the ground truth of the validation images)"
                    .into(),
            );
        }
        if t.micro_batches == 0 || t.micro_batches > self.data.batch_size {
            return bad(format!(
                "train.micro_batches must be between 1 and data.batch_size ({}), got {}",
                self.data.batch_size, t.micro_batches
            ));
        }
        let replicas = t.devices.len().max(1);
        if replicas > 1 && replicas * t.micro_batches > self.data.batch_size {
            return bad(format!(
                "train.devices: {replicas} replicas of {} micro-batch(es) each need data.batch_size >= {}, got {}",
                t.micro_batches,
                replicas * t.micro_batches,
                self.data.batch_size
            ));
        }
        if let Some(d) =
            t.devices.iter().enumerate().find_map(|(i, d)| t.devices[..i].contains(d).then_some(d))
        {
            return bad(format!("train.devices lists device {d} twice"));
        }
        if t.nodes == 0 || t.node_rank >= t.nodes {
            return bad(format!(
                "train.node_rank ({}) must be below train.nodes ({})",
                t.node_rank, t.nodes
            ));
        }
        if t.nodes > 1 {
            let world = t.nodes * replicas;
            if world * t.micro_batches > self.data.batch_size {
                return bad(format!(
                    "{} nodes × {replicas} device(s) × {} micro-batch(es) need data.batch_size >= {}, got {}",
                    t.nodes, t.micro_batches, world * t.micro_batches, self.data.batch_size
                ));
            }
            match &t.coordinator {
                None => return bad(
                    "train.nodes > 1 needs train.coordinator (node 0's HOST:PORT, --coordinator)"
                        .into(),
                ),
                Some(v) => {
                    let port = v.rsplit_once(':').and_then(|(h, p)| (!h.is_empty()).then_some(p));
                    if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                        return bad(format!("train.coordinator must be HOST:PORT, got \"{v}\""));
                    }
                }
            }
        }
        if t.early_stop_patience == Some(0) {
            return bad("train.early_stop_patience must be at least 1".into());
        }
        if t.nonfinite_skip_limit == 0 {
            return bad("train.nonfinite_skip_limit must be at least 1".into());
        }
        if self.checkpoint.best_by == BestBy::ZeroShot && self.eval.templates.is_none() {
            return bad(
                "checkpoint.best_by = \"zero_shot\" needs eval.labels and eval.templates".into()
            );
        }
        if self.checkpoint.keep_last == 0 {
            return bad("checkpoint.keep_last must be at least 1".into());
        }
        self.clip_config()
            .map(|_| ())
            .map_err(|m| TrainError::Config { path: path.into(), message: m })
    }

    /// The model architecture this config describes.
    pub fn clip_config(&self) -> std::result::Result<ClipConfig, String> {
        let m = &self.model;
        let image = match m.image_encoder.as_str() {
            "custom" => m
                .image
                .clone()
                .ok_or("model.image_encoder = \"custom\" needs a [model.image] table")?,
            name => {
                if m.image.is_some() {
                    return Err(format!("[model.image] is only read when model.image_encoder = \"custom\" (it is {name:?})"));
                }
                let depth = name.strip_prefix("resnet").and_then(|d| d.parse().ok());
                depth.and_then(ResNetConfig::depth).ok_or_else(|| {
                    format!("model.image_encoder {name:?} is unknown (resnet18, resnet34, resnet50, resnet101, resnet152 or custom)")
                })?
            }
        };
        let mut text = match m.text_encoder.as_str() {
            "custom" => m.text.clone().ok_or("model.text_encoder = \"custom\" needs a [model.text] table")?,
            "distilbert-base-uncased" | "distilbert" => TextTransformerConfig::distilbert_base(),
            "all-minilm-l6-v2" | "minilm-l6" => TextTransformerConfig::minilm_l6(),
            other if looks_like_path(other) => {
                let dir = Path::new(other);
                hf_text_config(&dir.join("config.json")).map_err(|e| format!("model.text_encoder: {e}"))?.0
            }
            other => {
                return Err(format!(
                    "model.text_encoder {other:?} is unknown (distilbert-base-uncased, all-minilm-l6-v2, a model directory, or custom)"
                ))
            }
        };
        if m.text.is_some() && m.text_encoder != "custom" {
            return Err("[model.text] is only read when model.text_encoder = \"custom\"".into());
        }
        if let Some(p) = m.pooling {
            text.pooling = p;
        }
        if let Some(w) = m.image_embedding {
            if w != image.out_features() {
                return Err(format!(
                    "model.image_embedding = {w} but {} gives {} features",
                    m.image_encoder,
                    image.out_features()
                ));
            }
        }
        if let Some(w) = m.text_embedding {
            if w != text.hidden_size {
                return Err(format!(
                    "model.text_embedding = {w} but {} gives {} features",
                    m.text_encoder, text.hidden_size
                ));
            }
        }
        if m.pretrained && m.image_weights.is_none() && m.text_weights.is_none() {
            return Err(
                "model.pretrained = true needs model.image_weights and/or model.text_weights (weights are never downloaded; \
                 see datasets/README.md)"
                    .into(),
            );
        }
        if !m.pretrained && (m.image_weights.is_some() || m.text_weights.is_some()) {
            return Err("model.image_weights / model.text_weights are only read when model.pretrained = true".into());
        }
        let config = ClipConfig {
            image,
            text,
            projection_dim: m.projection_dim,
            dropout: m.dropout,
            temperature: m.temperature,
            learnable_temperature: m.learnable_temperature,
            max_logit_scale: m.max_logit_scale,
            normalize_embeddings: m.normalize_embeddings,
            image_trainable: m.image_trainable.unwrap_or(m.trainable),
            text_trainable: m.text_trainable.unwrap_or(m.trainable),
            image_trainable_stages: m.image_trainable_stages,
            text_trainable_layers: m.text_trainable_layers,
            loss: m.loss,
            logit_bias: m.logit_bias,
        };
        config.validate()?;
        Ok(config)
    }

    /// The resolved config as TOML (what a run directory stores).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config serializes")
    }
}

fn looks_like_path(s: &str) -> bool {
    s.contains('/') || s.starts_with('.')
}

/// Sets `a.b.c = value` in a TOML table; the value is parsed as TOML, or taken as a string.
/// The bare word `none` removes the key instead (its default applies; an optional table such as
/// `data.synthetic` is then absent); the string "none" is `'"none"'`.
fn apply_override(table: &mut toml::Table, assignment: &str) -> std::result::Result<(), String> {
    let (key, raw) = assignment.split_once('=').ok_or("expected KEY=VALUE")?;
    let key = key.trim();
    let raw = raw.trim();
    if raw == "none" {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("bad key {key:?}"));
        }
        let mut t = table;
        for part in &parts[..parts.len() - 1] {
            match t.get_mut(*part) {
                Some(toml::Value::Table(inner)) => t = inner,
                Some(_) => return Err(format!("{part} is not a table")),
                None => return Ok(()),
            }
        }
        t.remove(parts[parts.len() - 1]);
        return Ok(());
    }
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("bad key {key:?}"));
    }
    let mut t = table;
    for part in &parts[..parts.len() - 1] {
        let entry =
            t.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| format!("{part} is not a table"))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exp.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    const MINIMAL: &str = "[data]\ncaptions = \"d/results.csv\"\nimages = \"d/images\"\n";

    #[test]
    fn defaults_are_the_seeds() {
        let (_d, p) = write(MINIMAL);
        let c = ExperimentConfig::load(&p, &[]).unwrap();
        let clip = c.clip_config().unwrap();
        assert_eq!(clip, ClipConfig::seed());
        assert_eq!((c.train.lr, c.train.weight_decay, c.train.epochs), (1e-3, 1e-3, 4));
    }

    #[test]
    fn overrides_apply_and_unknown_keys_are_named() {
        let (_d, p) = write(MINIMAL);
        let c = ExperimentConfig::load(
            &p,
            &["train.lr=3e-4".into(), "model.image_encoder=resnet18".into()],
        )
        .unwrap();
        assert_eq!(c.train.lr, 3e-4);
        assert_eq!(c.clip_config().unwrap().image.out_features(), 512);
        let err = ExperimentConfig::load(&p, &["train.lrr=1".into()]).unwrap_err().to_string();
        assert!(err.contains("exp.toml") && err.contains("lrr"), "{err}");
        let err = ExperimentConfig::load(&p, &["train.lr=-1".into()]).unwrap_err().to_string();
        assert!(err.contains("train.lr"), "{err}");
    }

    #[test]
    fn none_removes_a_key_such_as_the_synthetic_table() {
        let (_d, p) =
            write(&format!("{MINIMAL}[data.synthetic]\nimages = 10\n[train]\nlr = 3e-4\n"));
        assert!(ExperimentConfig::load(&p, &[]).unwrap().data.synthetic.is_some());
        let c = ExperimentConfig::load(
            &p,
            &["data.synthetic=none".into(), "train.lr=none".into(), "eval.labels=none".into()],
        )
        .unwrap();
        assert!(c.data.synthetic.is_none());
        assert_eq!(c.train.lr, 1e-3, "a removed key takes its default");
        assert!(ExperimentConfig::load(&p, &["data.captions.x=none".into()])
            .unwrap_err()
            .to_string()
            .contains("not a table"));
    }

    #[test]
    fn file_errors_name_key_line_and_file() {
        let (_d, p) = write(&format!("{MINIMAL}[train]\nepochz = 3\n"));
        let err = ExperimentConfig::load(&p, &[]).unwrap_err().to_string();
        assert!(
            err.contains("exp.toml") && err.contains("epochz") && err.contains("line 5"),
            "{err}"
        );
        let (_d, p) = write(&format!("{MINIMAL}[model]\nimage_encoder = \"resnet51\"\n"));
        let err = ExperimentConfig::load(&p, &[]).unwrap_err().to_string();
        assert!(err.contains("resnet51") && err.contains("model.image_encoder"), "{err}");
        let (_d, p) = write(&format!("{MINIMAL}[model]\ntext_embedding = 512\n"));
        let err = ExperimentConfig::load(&p, &[]).unwrap_err().to_string();
        assert!(err.contains("model.text_embedding"), "{err}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let (_d, p) = write(MINIMAL);
        let c = ExperimentConfig::load(&p, &["train.precision=\"bf16-mixed\"".into()]).unwrap();
        assert_eq!(c.train.precision, Precision::Bf16Mixed);
        let back: ExperimentConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn paths_resolve_to_absolute_ones_even_from_a_relative_config_path() {
        // A config named relatively (as `clip train --config configs/x.toml` does): the resolved
        // copy saved in a run must not depend on the working directory.
        let dir = tempfile::tempdir_in(".").unwrap();
        let p = dir.path().join("exp.toml");
        std::fs::write(&p, format!("{MINIMAL}[eval]\nlabels = \"d/labels.csv\"\n")).unwrap();
        let relative = p.strip_prefix(std::env::current_dir().unwrap()).unwrap_or(&p).to_path_buf();
        let c = ExperimentConfig::load(&relative, &[]).unwrap();
        for path in [&c.data.captions, &c.data.images, &c.runs_dir, c.eval.labels.as_ref().unwrap()]
        {
            assert!(path.is_absolute(), "{}", path.display());
        }
        assert_eq!(c.data.captions, std::path::absolute(dir.path().join("d/results.csv")).unwrap());
    }
}

#[cfg(test)]
mod shipped_configs {
    use super::*;

    /// Every experiment in `configs/` parses and validates.
    #[test]
    fn every_config_in_the_repository_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = ExperimentConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
                c.clip_config().unwrap();
                seen += 1;
            }
        }
        assert!(seen >= 2);
        // The seed notebook, exactly: Adam(lr=1e-4, weight_decay=5e-4) on every parameter, no
        // schedule, batch 64, val_size 0.1 drawn as NumPy does, fp16 AMP, everything trainable.
        let seed =
            ExperimentConfig::load(&dir.join("flickr30k-rn50-distilbert.toml"), &[]).unwrap();
        let mut want = ClipConfig::seed();
        want.image_trainable = true;
        assert_eq!(seed.clip_config().unwrap(), want);
        assert_eq!(
            (seed.data.batch_size, seed.data.image_size, seed.data.text_max_length),
            (64, 224, 200)
        );
        assert_eq!((seed.data.val_size, seed.data.seed), (0.1, 42));
        assert_eq!(serde_json::to_value(seed.data.split).unwrap(), "numpy-legacy");
        let t = &seed.train;
        assert_eq!(
            (t.optimizer, t.lr, t.weight_decay, t.weight_decay_1d),
            (OptimizerKind::Adam, 1e-4, 5e-4, true)
        );
        assert_eq!((t.image_encoder_lr, t.text_encoder_lr, t.head_lr), (None, None, None));
        assert_eq!(
            (t.image_encoder_weight_decay, t.text_encoder_weight_decay, t.head_weight_decay),
            (None, None, None)
        );
        assert_eq!(
            (t.schedule, t.warmup_steps, t.grad_clip_norm, t.epochs),
            (ScheduleKind::Constant, 0, None, 4)
        );
        assert_eq!(t.precision, Precision::Fp16Mixed);
        assert_eq!(seed.checkpoint.best_by, BestBy::ValLoss);

        // The Simple-CLIP tutorial: AdamW per group, the plateau schedule, batch 32, 80/20.
        let simple =
            ExperimentConfig::load(&dir.join("simple-clip-rn50-distilbert.toml"), &[]).unwrap();
        assert_eq!(simple.clip_config().unwrap(), want);
        assert_eq!((simple.data.batch_size, simple.data.val_size), (32, 0.2));
        let t = &simple.train;
        assert_eq!(
            (t.optimizer, t.lr, t.image_encoder_lr, t.text_encoder_lr),
            (OptimizerKind::Adamw, 1e-3, Some(1e-4), Some(1e-5))
        );
        // ReduceLROnPlateau(patience=1, factor=0.8) on the validation loss.
        assert_eq!(
            (t.schedule, t.plateau_patience, t.plateau_factor),
            (ScheduleKind::Plateau, 1, 0.8)
        );
    }
}
