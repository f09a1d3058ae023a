//! The training loop. burn-train's `Learner` checkpoints only per epoch, cannot restore the data
//! order, clips gradient norms per tensor and has no loss scaling or CLIP retrieval metrics, so
//! the loop is written here over burn's autodiff, optimizers and records:
//! data order is a function of (seed, epoch), dropout is reseeded from (seed, step), and a resumed
//! run continues the very same loss curve.

use std::path::Path;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use clip_data::{CaptionDataset, ClipLoader, ExamplePipeline, Split, SplitDataset};
use clip_infer::zeroshot::parse_templates;
use clip_infer::{EvalExtras, ImageLabels, ModelCard, ZeroShotClassifier};
use clip_model::import::{import_clip, import_resnet, import_text, TextNaming};
use clip_model::{ClipConfig, ClipModel, ImageFeatureCache, TextFeatureCache};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_model, read_state, save_best, save_checkpoint, RunDir, TrainState};
use crate::config::{BestBy, ExperimentConfig, ScheduleKind};
use crate::error::{Result, TrainError};
use crate::metrics::{
    improves, read_jsonl, truncate_after, EpochMetrics, JsonlWriter, StepMetrics,
};
use crate::optim::ClipOptimizer;
use crate::schedule::lr_factor;
use crate::step::{forward_backward, materialize, ImageInput, StepInputs, TextInput};
use crate::tensorboard::EventWriter;

/// Images a frozen image tower's cache keeps (a ResNet-50 row is 8 KB: ~1.6 GB at most).
const IMAGE_CACHE_ROWS: usize = 200_000;

/// Distinct captions a frozen text tower's cache keeps (a 768-wide row is 3 KB: ~1.5 GB at most).
const TEXT_CACHE_ROWS: usize = 500_000;

/// What a run shows while it trains: the dashboard, plain progress lines, or nothing.
pub trait Observer {
    fn on_start(&mut self, _info: &RunInfo) {}
    fn on_step(&mut self, _m: &StepMetrics) {}
    fn on_epoch(&mut self, _m: &EpochMetrics) {}
    fn on_checkpoint(&mut self, _path: &Path, _kind: &str) {}
    fn on_message(&mut self, _msg: &str) {}
    /// Polled after every step: true asks for a graceful stop (checkpoint, then exit).
    fn should_stop(&mut self) -> bool {
        false
    }
    fn on_finish(&mut self, _summary: &TrainSummary) {}
}

/// An observer that shows nothing.
pub struct Silent;
impl Observer for Silent {}

/// Facts about a run, given to the observer at the start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_dir: String,
    pub backend: String,
    pub train_pairs: usize,
    pub val_pairs: usize,
    pub val_images: usize,
    pub batch_size: usize,
    /// Parts each batch's forward and backward passes are split into (1: whole).
    #[serde(default = "one")]
    pub micro_batches: usize,
    pub batches_per_epoch: usize,
    pub epochs: usize,
    pub total_steps: usize,
    pub start_step: usize,
    pub parameters: usize,
    pub precision: String,
    /// Past steps and epochs when resuming, so curves can continue.
    pub history_steps: Vec<StepMetrics>,
    pub history_epochs: Vec<EpochMetrics>,
}

fn one() -> usize {
    1
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub run_dir: String,
    pub steps: usize,
    pub completed: bool,
    /// Why it stopped early, if it did.
    pub stopped: Option<String>,
    /// Ended (completed) by `train.early_stop_patience` before its last step.
    #[serde(default)]
    pub early_stopped: bool,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// The metric that picked the best model, and its value there.
    #[serde(default)]
    pub best_by: BestBy,
    #[serde(default)]
    pub best_score: Option<f64>,
    /// The last validation's metrics.
    pub last_epoch: Option<EpochMetrics>,
    pub skipped_steps: usize,
    /// Training images left out of their batches because they could not be read (this session).
    #[serde(default)]
    pub skipped_images: usize,
    pub elapsed_s: f64,
}

/// Starts a new run in `run` (an empty directory) or resumes the one there.
pub fn train<B: AutodiffBackend>(
    config: &ExperimentConfig,
    run: &RunDir,
    resume: bool,
    device: &B::Device,
    backend_name: &str,
    observer: &mut dyn Observer,
) -> Result<TrainSummary> {
    let t = &config.train;
    std::fs::create_dir_all(&run.root).map_err(|e| TrainError::io(&run.root, e))?;

    // Data: the split is saved with the run (and reused on resume).
    let dataset = CaptionDataset::load(&config.data)?;
    let split = if resume {
        Split::load(&run.split())?
    } else {
        let s = SplitDataset::new(&dataset, &config.data)?.split;
        s.save(&run.split())?;
        s
    };
    let split = SplitDataset::from_split(&dataset, split, &run.split())?;
    if split.train.len() < 2 {
        return Err(TrainError::Config {
            path: run.config(),
            message: format!(
                "the training split has {} caption(s); contrastive training needs at least 2",
                split.train.len()
            ),
        });
    }
    let mut train_cfg = config.data.loader(true);
    train_cfg.drop_last = t.drop_last && split.train.len() > config.data.batch_size;
    let train_pairs =
        split.train.clone().with_sampling(config.data.caption_sampling, config.data.seed);
    let train_loader =
        ClipLoader::new(train_pairs, ExamplePipeline::train(&config.data)?, train_cfg);
    let val_loader = ClipLoader::new(
        split.val.clone(),
        ExamplePipeline::eval(&config.data)?,
        config.data.loader(false),
    );

    // Model and optimizer, fresh or from the latest checkpoint.
    let clip_config =
        config.clip_config().map_err(|m| TrainError::Config { path: run.config(), message: m })?;
    B::seed(device, t.seed);
    // Every parameter drawn now, while the generator holds the init seed.
    let mut model = clip_config.init::<B>(device);
    materialize(&model);
    let mut optim = ClipOptimizer::<B>::new(t);
    let mut state = TrainState::new(optim.scaler.clone());
    if resume {
        let dir = run.latest().ok_or_else(|| TrainError::Checkpoint {
            path: run.checkpoints(),
            message: "no complete checkpoint to resume from".into(),
        })?;
        model = load_model(model, &dir, device)?;
        optim = optim.load(&dir, device)?;
        state = read_state(&dir)?;
        optim.scaler = state.scaler.clone();
        truncate_after(&run.metrics().join("steps.jsonl"), state.step)?;
        truncate_after(&run.metrics().join("epochs.jsonl"), state.step)?;
        observer.on_message(&format!("resumed from {} (step {})", dir.display(), state.step));
    } else {
        std::fs::write(run.config(), config.to_toml())
            .map_err(|e| TrainError::io(run.config(), e))?;
        let card = ModelCard { clip: clip_config.clone(), data: config.data.clone() };
        clip_data::fs::write_atomic(
            &run.model_json(),
            &serde_json::to_vec_pretty(&card).expect("card serializes"),
        )?;
        model = initial_weights(model, config, &clip_config, observer)?;
    }
    let model_precision = t.precision;
    let mut model = model.with_precision(model_precision);
    // A frozen text tower gives each caption the same features all run long: compute them once.
    let mut text_cache = (t.cache_frozen_text && !clip_config.text_trainable)
        .then(|| TextFeatureCache::new(TEXT_CACHE_ROWS));
    // A frozen image tower gives an image the same features every epoch unless augmentation
    // changes the image.
    let frozen_image = t.cache_frozen_image && !clip_config.image_trainable;
    let mut image_cache = (frozen_image && config.data.augment.is_identity())
        .then(|| ImageFeatureCache::new(IMAGE_CACHE_ROWS));
    if frozen_image && image_cache.is_none() {
        observer.on_message(
            "image features not cached: augmentation changes the frozen tower's input every epoch",
        );
    }

    let batches_per_epoch = train_loader.num_batches();
    let mut total_steps = config.train.epochs * batches_per_epoch;
    if let Some(max) = t.max_steps {
        total_steps = total_steps.min(max).max(if config.train.epochs == 0 { max } else { 0 });
    }
    let epochs = if batches_per_epoch == 0 { 0 } else { total_steps.div_ceil(batches_per_epoch) };
    let mut logs = RunLogs {
        steps: JsonlWriter::open(&run.metrics().join("steps.jsonl"))?,
        validations: JsonlWriter::open(&run.metrics().join("epochs.jsonl"))?,
        events: if t.tensorboard {
            Some(EventWriter::create(&run.tensorboard(), state.step)?)
        } else {
            None
        },
    };
    let validator = Validator {
        labels: EvalLabels::prepare(config, &split.val)?,
        loader: &val_loader,
        run,
        config,
    };
    observer.on_start(&RunInfo {
        run_dir: run.root.display().to_string(),
        backend: backend_name.to_string(),
        train_pairs: train_loader.dataset().len(),
        val_pairs: split.val.len(),
        val_images: split.val.images().len(),
        batch_size: config.data.batch_size,
        micro_batches: t.micro_batches,
        batches_per_epoch,
        epochs,
        total_steps,
        start_step: state.step,
        parameters: model.num_params(),
        precision: config_name(model_precision),
        history_steps: read_jsonl(&run.metrics().join("steps.jsonl")),
        history_epochs: read_jsonl(&run.metrics().join("epochs.jsonl")),
    });

    if split.val.is_empty() {
        observer.on_message(
            "no validation images: no validation metrics, best model or early stopping in this run",
        );
        if t.schedule == ScheduleKind::Plateau {
            observer.on_message("train.schedule = \"plateau\" keeps the learning rates constant: it reduces them on validations");
        }
    }
    if t.schedule == ScheduleKind::Plateau && t.val_every_epochs == 0 && t.val_every_steps == 0 {
        observer.on_message("train.schedule = \"plateau\" will not reduce: the run validates only at its end (set val_every_epochs or val_every_steps)");
    }
    if t.recompute_activations {
        observer.on_message(
            "activations are recomputed in the backward pass (train.recompute_activations)",
        );
    }
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let session_start_step = state.step;
    let mut last_epoch: Option<EpochMetrics> =
        read_jsonl::<EpochMetrics>(&run.metrics().join("epochs.jsonl")).pop();
    let mut stopped = None;
    let mut early_stopped = false;
    let mut skipped_images = 0usize;
    let mut window: Instant;

    'epochs: while state.step < total_steps {
        let epoch = state.epoch;
        // Throughput counts training, not the validation and checkpoint before this point.
        window = Instant::now();
        let mut batches = train_loader.epoch_from(epoch, state.batch);
        while state.step < total_steps {
            let Some(batch) = batches.next() else { break };
            let batch = batch?;
            for (path, reason) in &batch.skipped {
                skipped_images += 1;
                observer.on_message(&format!(
                    "skipped an unreadable image ({skipped_images} so far): {}: {reason}",
                    path.display()
                ));
            }
            let n = batch.len();
            let text = match text_cache.as_mut() {
                Some(cache) => {
                    let features = cache.features(
                        || model.text_encoder.model.valid(),
                        model_precision,
                        device,
                        &batch.input_ids,
                        &batch.attention_mask,
                        batch.seq_len,
                    );
                    TextInput::Features(Tensor::<B, 2>::from_data(
                        TensorData::new(features, [n, cache.dim()]),
                        device,
                    ))
                }
                None => {
                    let [ids, mask] = [&batch.input_ids, &batch.attention_mask].map(|v| {
                        Tensor::<B, 2, Int>::from_data(
                            TensorData::new(v.clone(), [n, batch.seq_len]),
                            device,
                        )
                    });
                    TextInput::Tokens { input_ids: ids, attention_mask: mask }
                }
            };
            let size = batch.image_size;
            let image = match image_cache.as_mut() {
                Some(cache) => {
                    let features = cache.features(
                        || model.image_encoder.model.valid(),
                        model_precision,
                        device,
                        &batch.image_indices,
                        &batch.images,
                        size,
                    );
                    ImageInput::Features(Tensor::<B, 2>::from_data(
                        TensorData::new(features, [n, cache.dim()]),
                        device,
                    ))
                }
                None => ImageInput::Pixels(Tensor::<B, 4>::from_data(
                    TensorData::new(batch.images, [n, 3, size, size]),
                    device,
                )),
            };
            let inputs = StepInputs { image, text };
            // Dropout draws from the backend's generator: reseed it per step (and micro-batch) so
            // a resumed run draws what the uninterrupted one would have.
            let step = state.step;
            let mut reseed = |micro: usize| B::seed(device, dropout_seed(t.seed, step, micro));
            let out = forward_backward(
                &model,
                &inputs,
                t.micro_batches,
                optim.scaler.factor(),
                &mut reseed,
            );
            drop(inputs);
            let loss_value = out.loss;
            if !loss_value.is_finite() && !optim.scaler.enabled {
                return Err(TrainError::Diverged { step: state.step + 1, loss: loss_value });
            }
            let (acc_i2t, acc_t2i) = (out.acc_i2t, out.acc_t2i);
            let factor = lr_factor(t, state.step, total_steps, &state.plateau);
            let (next, report) = optim.step(model, out.grads, factor, false);
            model = next;
            state.step += 1;
            state.batch = batches.position();
            state.scaler = optim.scaler.clone();
            if report.applied && loss_value.is_finite() {
                state.epoch_loss_sum += loss_value * n as f64;
                state.epoch_loss_count += n;
            }

            let elapsed = elapsed_before + started.elapsed().as_secs_f64();
            state.elapsed_s = elapsed;
            let dt = window.elapsed().as_secs_f64();
            window = Instant::now();
            let session_steps = state.step - session_start_step;
            let session_s = started.elapsed().as_secs_f64();
            let m = StepMetrics {
                step: state.step,
                epoch,
                batch: state.batch.saturating_sub(1),
                batches_per_epoch,
                total_steps,
                loss: loss_value,
                acc_i2t,
                acc_t2i,
                lr: optim.base_lrs()[2] * factor,
                temperature: model.temperature(),
                samples_per_s: n as f64 / dt.max(1e-9),
                grad_norm: report.grad_norm,
                loss_scale: optim.scaler.enabled.then_some(optim.scaler.scale),
                skipped_steps: optim.scaler.skipped_steps,
                elapsed_s: elapsed,
                eta_s: session_s / session_steps as f64 * (total_steps - state.step) as f64,
            };
            logs.steps.write(&m)?;
            if let Some(events) = logs.events.as_mut() {
                events.scalars(m.step, &m.scalars())?;
                events.flush()?;
            }
            observer.on_step(&m);

            // Inside an epoch (its end validates below): validation every `val_every_steps`.
            let mid_epoch = state.step < total_steps && state.batch < batches_per_epoch;
            let validated = mid_epoch
                && t.val_every_steps > 0
                && state.step % t.val_every_steps == 0
                && !split.val.is_empty();
            if validated {
                let train_loss = (state.epoch_loss_count > 0)
                    .then(|| state.epoch_loss_sum / state.epoch_loss_count as f64);
                let elapsed = elapsed_before + started.elapsed().as_secs_f64();
                let point = ValidationPoint {
                    epoch: epoch + 1,
                    train_loss,
                    mid_epoch: true,
                    elapsed_s: elapsed,
                };
                match validator.run(
                    &model,
                    text_cache.as_mut(),
                    device,
                    &mut state,
                    &mut logs,
                    observer,
                    point,
                ) {
                    Ok(m) => last_epoch = Some(m),
                    Err(e) => {
                        return Err(keep_work_then_fail(
                            run,
                            &model,
                            &optim,
                            &state,
                            config.checkpoint.keep_last,
                            observer,
                            e,
                        ))
                    }
                }
            }
            let patience_spent = validated
                && t.early_stop_patience.is_some_and(|p| state.validations_since_best >= p);
            let stop = !patience_spent && observer.should_stop();
            let periodic = config.checkpoint.every_steps > 0
                && state.step % config.checkpoint.every_steps == 0;
            if stop || validated || (periodic && mid_epoch) {
                let path =
                    save_checkpoint(run, &model, &optim, &state, config.checkpoint.keep_last)?;
                let kind = if stop {
                    "stop"
                } else if patience_spent {
                    "final"
                } else if validated {
                    "validation"
                } else {
                    "periodic"
                };
                observer.on_checkpoint(&path, kind);
            }
            if patience_spent {
                early_stopped = true;
                observer.on_message(&early_stop_message(config, &state));
                break 'epochs;
            }
            if stop {
                stopped = Some("stopped on request".to_string());
                break 'epochs;
            }
            if validated {
                window = Instant::now();
            }
        }
        drop(batches);
        let epoch_done = state.batch >= batches_per_epoch;
        let run_done = state.step >= total_steps;
        let finished_epoch_loss = (state.epoch_loss_sum, state.epoch_loss_count);
        if epoch_done {
            state.epoch += 1;
            state.batch = 0;
            state.epoch_loss_sum = 0.0;
            state.epoch_loss_count = 0;
        }

        // Epoch end (or the end of a run cut short by max_steps): validate, keep the best.
        let on_step_schedule = t.val_every_steps > 0 && state.step % t.val_every_steps == 0;
        let on_epoch_schedule = t.val_every_epochs > 0 && state.epoch % t.val_every_epochs == 0;
        let validate = run_done || (epoch_done && (on_epoch_schedule || on_step_schedule));
        if validate && !split.val.is_empty() {
            let train_loss = (finished_epoch_loss.1 > 0)
                .then(|| finished_epoch_loss.0 / finished_epoch_loss.1 as f64);
            let elapsed = elapsed_before + started.elapsed().as_secs_f64();
            let point = ValidationPoint {
                epoch: epoch + 1,
                train_loss,
                mid_epoch: !epoch_done,
                elapsed_s: elapsed,
            };
            match validator.run(
                &model,
                text_cache.as_mut(),
                device,
                &mut state,
                &mut logs,
                observer,
                point,
            ) {
                Ok(m) => last_epoch = Some(m),
                Err(e) => {
                    return Err(keep_work_then_fail(
                        run,
                        &model,
                        &optim,
                        &state,
                        config.checkpoint.keep_last,
                        observer,
                        e,
                    ))
                }
            }
        }
        let patience_spent =
            t.early_stop_patience.is_some_and(|p| state.validations_since_best >= p);
        let path = save_checkpoint(run, &model, &optim, &state, config.checkpoint.keep_last)?;
        observer.on_checkpoint(&path, if run_done || patience_spent { "final" } else { "epoch" });
        if run_done {
            break;
        }
        if patience_spent {
            early_stopped = true;
            observer.on_message(&early_stop_message(config, &state));
            break;
        }
        if observer.should_stop() {
            stopped = Some("stopped on request".to_string());
            break;
        }
    }

    let completed = stopped.is_none() && (state.step >= total_steps || early_stopped);
    if completed {
        finish_run(run, &clip_config, device, model, observer)?;
    }
    let summary = TrainSummary {
        run_dir: run.root.display().to_string(),
        steps: state.step,
        completed,
        stopped,
        early_stopped,
        best_val_loss: state.best_val_loss,
        best_step: state.best_step,
        best_by: config.checkpoint.best_by,
        best_score: state.best_score,
        last_epoch,
        skipped_steps: optim.scaler.skipped_steps,
        skipped_images,
        elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
    };
    clip_data::fs::write_atomic(
        &run.root.join("summary.json"),
        &serde_json::to_vec_pretty(&summary).expect("serializes"),
    )?;
    crate::plots::write_curves(run)?;
    observer.on_finish(&summary);
    Ok(summary)
}

/// `[eval]` prepared for the validation split: each image's class, and the prompts.
struct EvalLabels {
    indices: Vec<usize>,
    classes: Vec<String>,
    templates: Option<Vec<String>>,
    tokenizer: clip_data::CaptionTokenizer,
}

impl EvalLabels {
    fn prepare(config: &ExperimentConfig, val: &clip_data::PairDataset) -> Result<Option<Self>> {
        let e = &config.eval;
        let Some(path) = &e.labels else { return Ok(None) };
        let labels = ImageLabels::read(path, &e.label_column)?;
        let classes = e.classes.clone().unwrap_or_else(|| labels.classes());
        let indices =
            labels.indices(val.images().iter().map(|i| i.name.as_str()), &classes, path)?;
        let templates = match &e.templates {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|err| TrainError::io(p, err))?;
                Some(parse_templates(&text, &p.display().to_string())?)
            }
            None => None,
        };
        Ok(Some(Self { indices, classes, templates, tokenizer: config.data.tokenizer()? }))
    }

    /// The zero-shot classifier of the model as it is now (None without templates).
    fn classifier<B: burn::tensor::backend::Backend>(
        &self,
        model: &ClipModel<B>,
        device: &B::Device,
    ) -> Result<Option<ZeroShotClassifier>> {
        let Some(templates) = &self.templates else { return Ok(None) };
        Ok(Some(ZeroShotClassifier::from_model(
            model,
            &self.tokenizer,
            &self.classes,
            templates,
            device,
        )?))
    }
}

/// Where a run's metrics go: JSON lines per step and per validation, TensorBoard events.
struct RunLogs {
    steps: JsonlWriter,
    validations: JsonlWriter,
    events: Option<EventWriter>,
}

/// When a validation happens: the epoch in progress (1-based), its training loss so far.
struct ValidationPoint {
    epoch: usize,
    train_loss: Option<f64>,
    mid_epoch: bool,
    elapsed_s: f64,
}

/// Validates the model on the held-out split and keeps it when it is the best so far; the same
/// at epoch ends and every `val_every_steps`.
struct Validator<'a> {
    labels: Option<EvalLabels>,
    loader: &'a ClipLoader,
    run: &'a RunDir,
    config: &'a ExperimentConfig,
}

impl Validator<'_> {
    #[allow(clippy::too_many_arguments)]
    fn run<B: AutodiffBackend>(
        &self,
        model: &ClipModel<B>,
        text_cache: Option<&mut TextFeatureCache>,
        device: &B::Device,
        state: &mut TrainState,
        logs: &mut RunLogs,
        observer: &mut dyn Observer,
        point: ValidationPoint,
    ) -> Result<EpochMetrics> {
        let what = if point.mid_epoch {
            format!("step {} (epoch {})", state.step, point.epoch)
        } else {
            format!("epoch {}", point.epoch)
        };
        observer
            .on_message(&format!("validating {what} on {} captions", self.loader.dataset().len()));
        let eval_model = model.valid();
        let classifier = match &self.labels {
            Some(l) => l.classifier(&eval_model, device)?,
            None => None,
        };
        let extras = EvalExtras {
            image_labels: self.labels.as_ref().map(|l| l.indices.as_slice()),
            zero_shot: classifier.as_ref(),
        };
        let e = match text_cache {
            Some(cache) => {
                clip_infer::evaluate_with(&eval_model, self.loader, device, cache, extras)?
            }
            None => clip_infer::evaluate_with(
                &eval_model,
                self.loader,
                device,
                &mut TextFeatureCache::new(usize::MAX),
                extras,
            )?,
        };
        let m = EpochMetrics {
            epoch: point.epoch,
            step: state.step,
            mid_epoch: point.mid_epoch,
            train_loss: point.train_loss,
            val_loss: e.loss,
            val_acc_i2t: e.acc_i2t,
            val_acc_t2i: e.acc_t2i,
            retrieval: e.retrieval,
            label_retrieval: e.label_retrieval,
            zero_shot_top1: e.zero_shot_top1,
            elapsed_s: point.elapsed_s,
        };
        logs.validations.write(&m)?;
        if let Some(events) = logs.events.as_mut() {
            events.scalars(m.step, &m.scalars())?;
            events.flush()?;
        }
        observer.on_epoch(&m);
        let best_by = self.config.checkpoint.best_by;
        let best_so_far = state.best_score.or(if best_by == BestBy::ValLoss {
            state.best_val_loss
        } else {
            None
        });
        if let Some(score) = m.score(best_by).filter(|&s| improves(best_by, s, best_so_far)) {
            state.best_score = Some(score);
            state.best_val_loss = Some(m.val_loss);
            state.best_step = Some(state.step);
            state.validations_since_best = 0;
            let path = save_best(self.run, model, state)?;
            observer.on_checkpoint(&path, "best");
        } else {
            state.validations_since_best += 1;
        }
        let t = &self.config.train;
        if t.schedule == ScheduleKind::Plateau {
            let score = m.score(best_by).unwrap_or(f64::NAN);
            let factor_at =
                |reductions: usize| t.plateau_factor.powi(reductions as i32).max(t.min_lr / t.lr);
            let before = factor_at(state.plateau.reductions);
            if state.plateau.observe(score, best_by.lower_is_better(), t.plateau_patience)
                && factor_at(state.plateau.reductions) < before
            {
                let factor = factor_at(state.plateau.reductions);
                observer.on_message(&format!(
                    "{} has not improved for {} validations: learning rates reduced to {factor:.3e} × their base (train.schedule = \"plateau\")",
                    best_by_name(best_by),
                    t.plateau_patience + 1,
                ));
            }
        }
        Ok(m)
    }
}

/// A validation failed (an unreadable validation image, say): save the training done so far,
/// then report the failure with where to resume from.
fn keep_work_then_fail<B: AutodiffBackend>(
    run: &RunDir,
    model: &ClipModel<B>,
    optim: &ClipOptimizer<B>,
    state: &TrainState,
    keep_last: usize,
    observer: &mut dyn Observer,
    error: TrainError,
) -> TrainError {
    match save_checkpoint(run, model, optim, state, keep_last) {
        Ok(path) => {
            observer.on_checkpoint(&path, "before failing");
            TrainError::Validation {
                step: state.step,
                checkpoint: path,
                message: error.to_string(),
            }
        }
        Err(_) => error,
    }
}

fn early_stop_message(config: &ExperimentConfig, state: &TrainState) -> String {
    format!(
        "early stop: no better {} in {} validations",
        best_by_name(config.checkpoint.best_by),
        state.validations_since_best
    )
}

/// The metric's name as configs spell it.
pub fn best_by_name(metric: BestBy) -> String {
    config_name(metric)
}

/// A unit enum's name as configs spell it (its serde name).
fn config_name(value: impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// The dropout generator's seed for micro-batch `micro` of `step` (micro-batch 0's is the seed of
/// a step taken whole, so runs without micro-batches draw what they always drew).
fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let per_step = seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    per_step ^ (micro as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// Loads the configured initial weights into a fresh model.
pub(crate) fn initial_weights<B: burn::tensor::backend::Backend>(
    mut model: ClipModel<B>,
    config: &ExperimentConfig,
    clip_config: &ClipConfig,
    observer: &mut dyn Observer,
) -> Result<ClipModel<B>> {
    let m = &config.model;
    if let Some(path) = &m.checkpoint {
        let (loaded, report) = import_clip(model, path)?;
        observer.on_message(&format!(
            "{}: {} tensors loaded",
            path.display(),
            report.applied.len()
        ));
        for line in &report.skipped {
            observer.on_message(&format!("{}: skipped {line}", path.display()));
        }
        model = loaded;
    }
    if m.pretrained {
        if let Some(path) = &m.image_weights {
            let (tower, report) = import_resnet(model.image_encoder.model, path)?;
            observer.on_message(&format!(
                "{}: {} tensors loaded, unused: {:?}",
                path.display(),
                report.applied.len(),
                report.unused
            ));
            model.image_encoder.model = tower;
        }
        if let Some(path) = &m.text_weights {
            let file = if path.is_dir() {
                ["model.safetensors", "pytorch_model.bin"]
                    .iter()
                    .map(|f| path.join(f))
                    .find(|p| p.is_file())
                    .ok_or_else(|| TrainError::Config {
                        path: path.clone(),
                        message:
                            "model.text_weights: no model.safetensors or pytorch_model.bin here"
                                .into(),
                    })?
            } else {
                path.clone()
            };
            let naming = if model.text_encoder.model.embeddings.token_type_embeddings.is_some() {
                TextNaming::Bert
            } else {
                TextNaming::DistilBert
            };
            let (tower, report) = import_text(model.text_encoder.model, &file, naming)?;
            observer.on_message(&format!(
                "{}: {} tensors loaded, unused: {:?}",
                file.display(),
                report.applied.len(),
                report.unused
            ));
            model.text_encoder.model = tower;
        }
    }
    // Freezing applies to imported weights too.
    let (image, text) = clip_config.freeze(model.image_encoder.model, model.text_encoder.model);
    model.image_encoder.model = image;
    model.text_encoder.model = text;
    Ok(model)
}

/// Exports the best (or last) model with upstream key names.
fn finish_run<B: AutodiffBackend>(
    run: &RunDir,
    clip_config: &ClipConfig,
    device: &B::Device,
    last: ClipModel<B>,
    observer: &mut dyn Observer,
) -> Result<()> {
    let best = if run.best().join("model.mpk").is_file() {
        load_model(clip_config.init::<B>(device), &run.best(), device)?
    } else {
        last
    };
    clip_model::import::export_clip(&best.valid(), &run.exported_model())?;
    observer.on_checkpoint(&run.exported_model(), "export");
    Ok(())
}
