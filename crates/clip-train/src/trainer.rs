//! The training loop. burn-train's `Learner` checkpoints only per epoch, cannot restore the data
//! order, clips gradient norms per tensor and has no loss scaling or CLIP retrieval metrics, so
//! the loop is written here over burn's autodiff, optimizers and records:
//! data order is a function of (seed, epoch), dropout is reseeded from (seed, step), and a resumed
//! run continues the very same loss curve.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use clip_data::{CaptionDataset, ClipLoader, HostBatch, Split, SplitDataset};
use clip_infer::ModelCard;
use clip_model::{ClipConfig, ClipModel};

use crate::checkpoint::{
    load_model, read_state, recover_interrupted_writes, save_best, save_checkpoint, RunDir,
    RunLock, TrainState,
};
use crate::collective::Cluster;
use crate::config::{config_name, ExperimentConfig, NonFinitePolicy, ScheduleKind};
use crate::error::{Result, TrainError};
use crate::metrics::{
    read_jsonl, truncate_after, EpochMetrics, RunLogs, StepMetrics, EPOCH_METRICS, STEP_METRICS,
};
use crate::observer::{CheckpointKind, Observer, RunInfo, TrainSummary};
use crate::optim::{ClipOptimizer, StepReport};
use crate::replicas::{ReplicaPlan, ReplicaStep, Replicas, StepOrder};
use crate::schedule::lr_factor;
use crate::step::{forward_backward, FrozenFeatures};
use crate::validate::{record_best, ValidationPoint, Validator};
use crate::weights::{initial_weights, seeded_init};

/// Starts a new run in `run` (an empty directory) or resumes the one there.
pub fn train<B: AutodiffBackend>(
    config: &ExperimentConfig,
    run: &RunDir,
    resume: bool,
    device: &B::Device,
    backend_name: &str,
    observer: &mut dyn Observer,
) -> Result<TrainSummary> {
    Trainer::<B>::new(config, run, resume, device, backend_name, observer)?.run()
}

/// A run being trained: its data, model, optimizer and state, and where it reports.
pub struct Trainer<'a, B: AutodiffBackend> {
    config: &'a ExperimentConfig,
    run: &'a RunDir,
    device: B::Device,
    observer: &'a mut dyn Observer,
    clip_config: ClipConfig,
    /// Out only while the optimizer steps it.
    model: Option<ClipModel<B>>,
    optim: ClipOptimizer<B>,
    state: TrainState,
    loader: ClipLoader,
    validator: Validator,
    frozen: FrozenFeatures,
    logs: RunLogs,
    total_steps: usize,
    clock: Clock,
    last_validation: Option<EpochMetrics>,
    skipped_images: usize,
    ending: Option<Ending>,
    /// The other devices' replicas of a data-parallel run.
    replicas: Option<Replicas<B>>,
    /// Held while training: no other process writes this run.
    _lock: RunLock,
    /// Steps skipped in a row for a non-finite loss or gradient.
    nonfinite_in_row: usize,
}

/// Why a run ended before its last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// A graceful stop was asked for (the dashboard's `q`, a signal).
    Stopped,
    /// `train.early_stop_patience` validations without a better model.
    EarlyStopped,
}

impl<B: AutodiffBackend> Trainer<'_, B> {
    /// Trains until the last step, early stopping or a stop request, checkpointing on the way.
    pub fn run(mut self) -> Result<TrainSummary> {
        let config = self.config;
        let t = &config.train;
        'epochs: while self.state.step < self.total_steps {
            let epoch = self.state.epoch;
            // Throughput counts training, not the validation and checkpoint before this point.
            self.clock.lap();
            let mut batches = self.loader.epoch_from(epoch, self.state.batch);
            while self.state.step < self.total_steps {
                let Some(batch) = batches.next() else { break };
                self.step(epoch, batch?, batches.position())?;
                // Inside an epoch (its end validates below): validation every `val_every_steps`.
                let mid_epoch = self.state.step < self.total_steps
                    && self.state.batch < self.loader.num_batches();
                let validated =
                    mid_epoch && self.due(t.val_every_steps) && !self.validator.is_empty();
                if validated {
                    self.validate(epoch, self.state.epoch_mean_loss(), true)?;
                }
                let patience_spent = validated && self.patience_spent();
                let stop = !patience_spent && self.observer.should_stop();
                let periodic = mid_epoch && self.due(config.checkpoint.every_steps);
                if stop || validated || periodic {
                    self.checkpoint(match () {
                        _ if stop => CheckpointKind::Stop,
                        _ if patience_spent => CheckpointKind::Final,
                        _ if validated => CheckpointKind::Validation,
                        _ => CheckpointKind::Periodic,
                    })?;
                }
                if patience_spent {
                    self.end(Ending::EarlyStopped);
                    break 'epochs;
                }
                if stop {
                    self.end(Ending::Stopped);
                    break 'epochs;
                }
                if validated {
                    self.clock.lap();
                }
            }
            drop(batches);
            if self.end_epoch(epoch)?.is_break() {
                break;
            }
        }
        self.finish()
    }

    /// After an epoch's last batch (or the run's last step, or an epoch cut short by a stop):
    /// the epoch counted, validation when due, a checkpoint; `Break` ends the run.
    fn end_epoch(&mut self, epoch: usize) -> Result<ControlFlow<()>> {
        let config = self.config;
        let t = &config.train;
        let epoch_done = self.state.batch >= self.loader.num_batches();
        let run_done = self.state.step >= self.total_steps;
        let train_loss = self.state.epoch_mean_loss();
        if epoch_done {
            self.state.next_epoch();
        }
        let on_epoch_schedule =
            t.val_every_epochs > 0 && self.state.epoch.is_multiple_of(t.val_every_epochs);
        let due = run_done || (epoch_done && (on_epoch_schedule || self.due(t.val_every_steps)));
        if due && !self.validator.is_empty() {
            self.validate(epoch, train_loss, !epoch_done)?;
        }
        let patience_spent = self.patience_spent();
        let last = run_done || patience_spent;
        self.checkpoint(if last { CheckpointKind::Final } else { CheckpointKind::Epoch })?;
        if run_done {
            return Ok(ControlFlow::Break(()));
        }
        if patience_spent {
            self.end(Ending::EarlyStopped);
            return Ok(ControlFlow::Break(()));
        }
        if self.observer.should_stop() {
            self.end(Ending::Stopped);
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    }

    /// One optimizer step on `batch` of `epoch`; `position` is the epoch's next batch.
    fn step(&mut self, epoch: usize, batch: HostBatch, position: usize) -> Result<()> {
        let config = self.config;
        let t = &config.train;
        for (path, reason) in &batch.skipped {
            self.skipped_images += 1;
            self.observer.on_message(&format!(
                "skipped an unreadable image ({} so far): {}: {reason}",
                self.skipped_images,
                path.display()
            ));
        }
        let n = batch.len();
        let model = self.model.as_ref().expect("the model is back after every optimizer step");
        let step = self.state.step;
        let mut factor = lr_factor(t, step, self.total_steps, &self.state.plateau);
        let mut loss_factor = self.optim.scaler.factor();
        // Fault injection (`clip_data::fault`): a non-finite loss, or gradient, at this step.
        let poisoned_loss = clip_data::fault::reach("train.loss").map(|f| f.value() as f64);
        if let Some(v) =
            poisoned_loss.or(clip_data::fault::reach("train.grad").map(|f| f.value() as f64))
        {
            loss_factor = v;
        }
        let (mut out, own_rows) = match self.replicas.as_mut() {
            None => {
                let inputs = self.frozen.inputs(model, t.precision, batch, &self.device);
                // Dropout draws from the backend's generator: reseed it per step (and
                // micro-batch) so a resumed run draws what the uninterrupted one would have.
                let device = &self.device;
                let mut reseed = |micro: usize| B::seed(device, dropout_seed(t.seed, step, micro));
                let out =
                    forward_backward(model, &inputs, t.micro_batches, loss_factor, &mut reseed);
                (out, n)
            }
            Some(replicas) => {
                if replicas.clustered() {
                    // Every node takes the step node 0 takes, at node 0's learning rate.
                    let order =
                        StepOrder { epoch, batch: self.state.batch, lr_factor: factor, step };
                    let agreed = replicas.exchange_order(Some(order))?;
                    factor = agreed.map_or(factor, |o| o.lr_factor);
                }
                let place = replicas.send(&batch, step, factor)?;
                let own = batch.rows(place.rows.clone());
                drop(batch);
                let out = replicas.forward_backward(
                    model,
                    &mut self.frozen,
                    own,
                    &place,
                    loss_factor,
                    step,
                    &self.device,
                )?;
                (out, place.rows.len())
            }
        };
        if let Some(v) = poisoned_loss {
            out.loss = v;
        }
        let scaled = self.optim.scaler.enabled;
        let (report, temperature) = if !out.loss.is_finite() && !scaled {
            // Nothing to apply: the gradients of a non-finite loss are not finite either.
            drop(out.grads);
            (StepReport { applied: false, grad_norm: None }, self.model().temperature())
        } else {
            let model = self.model.take().expect("the model is back after every optimizer step");
            let (model, report) = self.optim.step(model, out.grads, factor);
            let temperature = model.temperature();
            self.model = Some(model);
            (report, temperature)
        };
        let replicas = self.collect_replicas(own_rows)?;
        if report.applied {
            self.nonfinite_in_row = 0;
        } else if !scaled {
            self.non_finite(match report.grad_norm {
                None => format!("the loss is {}", out.loss),
                Some(norm) => format!("the gradient norm is {norm} (the loss {})", out.loss),
            })?;
        }

        let state = &mut self.state;
        state.step += 1;
        state.batch = position;
        state.scaler = self.optim.scaler.clone();
        if report.applied && out.loss.is_finite() {
            state.epoch_loss_sum += out.loss * n as f64;
            state.epoch_loss_count += n;
        }
        state.elapsed_s = self.clock.elapsed_s();
        let m = StepMetrics {
            step: state.step,
            epoch,
            batch: state.batch.saturating_sub(1),
            batches_per_epoch: self.loader.num_batches(),
            total_steps: self.total_steps,
            loss: out.loss,
            acc_i2t: out.acc_i2t,
            acc_t2i: out.acc_t2i,
            lr: self.optim.base_lrs()[2] * factor,
            temperature,
            samples_per_s: n as f64 / self.clock.lap().max(1e-9),
            grad_norm: report.grad_norm,
            loss_scale: self.optim.scaler.enabled.then_some(self.optim.scaler.scale),
            skipped_steps: self.optim.scaler.skipped_steps,
            elapsed_s: state.elapsed_s,
            eta_s: self.clock.eta_s(state.step, self.total_steps),
            replicas,
        };
        self.logs.step(&m)?;
        self.observer.on_step(&m);
        Ok(())
    }

    /// The other replicas' figures for this step (none without replicas).
    fn collect_replicas(&mut self, own_rows: usize) -> Result<Vec<ReplicaStep>> {
        match self.replicas.as_mut() {
            Some(r) => r.collect(own_rows),
            None => Ok(Vec::new()),
        }
    }

    /// A step (not applied) had a non-finite loss or gradient: counted as skipped under
    /// `train.on_nonfinite = "skip"` (until `nonfinite_skip_limit` in a row), otherwise the run
    /// ends with an error naming the step, after saving the weights from before it.
    fn non_finite(&mut self, what: String) -> Result<()> {
        let t = &self.config.train;
        let step = self.state.step + 1;
        self.nonfinite_in_row += 1;
        if t.on_nonfinite == NonFinitePolicy::Skip
            && self.nonfinite_in_row <= t.nonfinite_skip_limit
        {
            self.observer.on_message(&format!(
                "step {step} skipped: {what} ({} in a row; train.on_nonfinite = \"skip\")",
                self.nonfinite_in_row
            ));
            self.optim.scaler.skipped_steps += 1;
            return Ok(());
        }
        let what = if self.nonfinite_in_row > 1 {
            format!("{what} ({} non-finite steps in a row)", self.nonfinite_in_row)
        } else {
            what
        };
        let saved = self.save_checkpoint().ok();
        if let Some(path) = &saved {
            self.observer.on_checkpoint(path, CheckpointKind::BeforeFailing);
        }
        Err(TrainError::Diverged { step, what, saved })
    }

    /// Validates at this step (of `epoch`, 0-based), keeps the model when it is the best so far
    /// and counts the validation for the plateau schedule. A failure (an unreadable validation
    /// image, say) saves the training done so far, then reports where to resume from.
    fn validate(&mut self, epoch: usize, train_loss: Option<f64>, mid_epoch: bool) -> Result<()> {
        let point = ValidationPoint {
            epoch: epoch + 1,
            step: self.state.step,
            train_loss,
            mid_epoch,
            elapsed_s: self.clock.elapsed_s(),
        };
        match self.validate_at(point) {
            Ok(m) => {
                self.last_validation = Some(m);
                Ok(())
            }
            Err(error) => match self.save_checkpoint() {
                Ok(path) => {
                    self.observer.on_checkpoint(&path, CheckpointKind::BeforeFailing);
                    Err(TrainError::Validation {
                        step: self.state.step,
                        checkpoint: path,
                        source: Box::new(error),
                    })
                }
                Err(_) => Err(error),
            },
        }
    }

    fn validate_at(&mut self, point: ValidationPoint) -> Result<EpochMetrics> {
        let model = self.model.as_ref().expect("the model is back after every optimizer step");
        let text_cache = self.frozen.text.as_mut();
        let m = self.validator.run(
            model,
            text_cache,
            &self.device,
            point,
            &mut self.logs,
            &mut *self.observer,
        )?;
        let best_by = self.config.checkpoint.best_by;
        if record_best(&mut self.state, best_by, &m) {
            let path = save_best(self.run, model, &self.state)?;
            self.observer.on_checkpoint(&path, CheckpointKind::Best);
        }
        let config = self.config;
        let t = &config.train;
        let score = m.score(best_by).unwrap_or(f64::NAN);
        if let Some(factor) =
            self.state.plateau.after_validation(t, score, best_by.lower_is_better())
        {
            self.observer.on_message(&format!(
                "{} has not improved for {} validations: learning rates reduced to {factor:.3e} × their base (train.schedule = \"plateau\")",
                best_by.name(),
                t.plateau_patience + 1,
            ));
        }
        Ok(m)
    }

    /// Whether `every` (steps, 0: never) divides the steps taken.
    fn due(&self, every: usize) -> bool {
        every > 0 && self.state.step.is_multiple_of(every)
    }

    /// Whether early stopping's patience is used up.
    fn patience_spent(&self) -> bool {
        let patience = self.config.train.early_stop_patience;
        patience.is_some_and(|p| self.state.validations_since_best >= p)
    }

    fn checkpoint(&mut self, kind: CheckpointKind) -> Result<()> {
        let path = self.save_checkpoint()?;
        self.observer.on_checkpoint(&path, kind);
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<PathBuf> {
        let keep_last = self.config.checkpoint.keep_last;
        save_checkpoint(self.run, self.model(), &self.optim, &self.state, keep_last)
    }

    fn end(&mut self, ending: Ending) {
        if ending == Ending::EarlyStopped {
            self.observer.on_message(&format!(
                "early stop: no better {} in {} validations",
                self.config.checkpoint.best_by.name(),
                self.state.validations_since_best
            ));
        }
        self.ending = Some(ending);
    }

    fn model(&self) -> &ClipModel<B> {
        self.model.as_ref().expect("the model is back after every optimizer step")
    }

    /// Exports the best (or last) model of a completed run, writes `summary.json` and the
    /// curves.
    fn finish(mut self) -> Result<TrainSummary> {
        let early_stopped = self.ending == Some(Ending::EarlyStopped);
        let stopped = (self.ending == Some(Ending::Stopped)).then(|| "stopped on request".into());
        let completed = stopped.is_none() && (self.state.step >= self.total_steps || early_stopped);
        if completed {
            let run = self.run;
            let best = if run.best_checkpoint().is_some() {
                load_model(self.clip_config.init::<B>(&self.device), &run.best(), &self.device)?
            } else {
                self.model.take().expect("the model is back after every optimizer step")
            };
            clip_model::import::export_clip(&best.valid(), &run.exported_model())?;
            self.observer.on_checkpoint(&run.exported_model(), CheckpointKind::Export);
        }
        let s = &self.state;
        let summary = TrainSummary {
            run_dir: self.run.root.display().to_string(),
            steps: s.step,
            completed,
            stopped,
            early_stopped,
            best_val_loss: s.best_val_loss,
            best_step: s.best_step,
            best_by: self.config.checkpoint.best_by,
            best_score: s.best_score,
            last_epoch: self.last_validation.take(),
            skipped_steps: self.optim.scaler.skipped_steps,
            skipped_images: self.skipped_images,
            elapsed_s: self.clock.elapsed_s(),
        };
        clip_data::fs::write_atomic(
            &self.run.summary(),
            &serde_json::to_vec_pretty(&summary).expect("serializes"),
        )?;
        crate::plots::write_curves(self.run)?;
        self.observer.on_finish(&summary);
        Ok(summary)
    }
}

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    /// Sets a run up: the split (saved with a new run, reused on resume), loaders, the model and
    /// optimizer (fresh with the configured initial weights, or from the latest checkpoint),
    /// frozen towers' caches and the metrics files; tells the observer.
    pub fn new(
        config: &'a ExperimentConfig,
        run: &'a RunDir,
        resume: bool,
        device: &B::Device,
        backend_name: &str,
        observer: &'a mut dyn Observer,
    ) -> Result<Self> {
        let t = &config.train;
        // Replica 0 trains on the first of several devices.
        let devices = replica_devices::<B>(t, device);
        let device = &devices[0];
        let lock = RunLock::acquire(run)?;
        for done in recover_interrupted_writes(run, &lock) {
            observer.on_message(&done);
        }
        let (loader, val_loader) = loaders(config, run, resume, true)?;

        let clip_config = config
            .clip_config()
            .map_err(|m| TrainError::Config { path: run.config(), message: m })?;
        let mut model = seeded_init::<B>(&clip_config, t.seed, device);
        let mut optim = ClipOptimizer::<B>::new(t);
        let mut state = TrainState::new(optim.scaler.clone());
        let mut resumed_from = None;
        // A run stopped before its first checkpoint starts over: initialization is seeded, so
        // it takes the same steps it would have.
        let restart = resume && run.latest().is_none();
        if restart {
            observer.on_message("no complete checkpoint yet: the run starts over from step 0");
            truncate_after(&run.metrics().join(STEP_METRICS), 0)?;
            truncate_after(&run.metrics().join(EPOCH_METRICS), 0)?;
        }
        if resume && !restart {
            let dir;
            (model, optim, state, dir) = load_latest(run, model, optim, device)?;
            truncate_after(&run.metrics().join(STEP_METRICS), state.step)?;
            truncate_after(&run.metrics().join(EPOCH_METRICS), state.step)?;
            observer.on_message(&format!("resumed from {} (step {})", dir.display(), state.step));
            resumed_from = Some(dir);
        } else {
            clip_data::fs::write_atomic(&run.config(), config.to_toml().as_bytes())?;
            let card = ModelCard { clip: clip_config.clone(), data: config.data.clone() };
            clip_data::fs::write_atomic(
                &run.model_json(),
                &serde_json::to_vec_pretty(&card).expect("card serializes"),
            )?;
            model = initial_weights(model, config, &clip_config, observer)?;
        }
        let model = model.with_precision(t.precision);
        let (frozen_text, frozen_image, augmented) = cached_towers(config, &clip_config);
        let frozen = FrozenFeatures::new(frozen_text, frozen_image, augmented);
        if frozen_image && augmented {
            observer.on_message(
                "image features not cached: augmentation changes the frozen tower's input every epoch",
            );
        }

        let cluster = Cluster::from_spec(t);
        let replicas = if devices.len() > 1 || cluster.is_some() {
            let plan = ReplicaPlan {
                spec: t.clone(),
                frozen_text,
                frozen_image,
                augmented,
                resume_from: resumed_from,
                scaler: optim.scaler.clone(),
                cluster,
            };
            Some(Replicas::start(&model, &devices, plan)?)
        } else {
            None
        };
        let batches_per_epoch = loader.num_batches();
        let mut total_steps = t.epochs * batches_per_epoch;
        if let Some(max) = t.max_steps {
            total_steps = total_steps.min(max).max(if t.epochs == 0 { max } else { 0 });
        }
        let logs = RunLogs::open(run, t.tensorboard, state.step)?;
        let validator = Validator::new(config, val_loader)?;
        let history_epochs: Vec<EpochMetrics> = read_jsonl(&run.metrics().join(EPOCH_METRICS));
        observer.on_start(&RunInfo {
            run_dir: run.root.display().to_string(),
            backend: backend_name.to_string(),
            train_pairs: loader.dataset().len(),
            val_pairs: validator.len(),
            val_images: validator.images(),
            batch_size: config.data.batch_size,
            micro_batches: t.micro_batches,
            replicas: devices.len() * t.nodes.max(1),
            batches_per_epoch,
            epochs: if batches_per_epoch == 0 {
                0
            } else {
                total_steps.div_ceil(batches_per_epoch)
            },
            total_steps,
            start_step: state.step,
            parameters: model.num_params(),
            precision: config_name(t.precision),
            history_steps: read_jsonl(&run.metrics().join(STEP_METRICS)),
            history_epochs: history_epochs.clone(),
        });
        announce(config, validator.is_empty(), observer);
        Ok(Self {
            config,
            run,
            device: device.clone(),
            observer,
            clip_config,
            model: Some(model),
            optim,
            clock: Clock::new(state.elapsed_s, state.step),
            state,
            loader,
            validator,
            frozen,
            logs,
            total_steps,
            last_validation: history_epochs.last().cloned(),
            skipped_images: 0,
            ending: None,
            replicas,
            _lock: lock,
            nonfinite_in_row: 0,
        })
    }
}

/// Trains as a node other than node 0 of a multi-machine run (`train.nodes`, `train.node_rank`):
/// the same data, model and optimizer as node 0, taking the steps node 0 announces with this
/// node's share of each batch, until node 0 says the run is over. Writes nothing; `run` (with
/// `resume`) is node 0's run directory, read for its split and latest checkpoint (a shared
/// folder, or a copy). Returns the steps taken.
pub fn follow<B: AutodiffBackend>(
    config: &ExperimentConfig,
    run: &RunDir,
    resume: bool,
    device: &B::Device,
    observer: &mut dyn Observer,
) -> Result<usize> {
    let t = &config.train;
    let cluster =
        Cluster::from_spec(t).filter(|c| c.node_rank > 0).ok_or_else(|| TrainError::Config {
            path: run.config(),
            message: "following needs train.nodes > 1, train.node_rank > 0 and train.coordinator"
                .into(),
        })?;
    let devices = replica_devices::<B>(t, device);
    let device = &devices[0];
    let (loader, _) = loaders(config, run, resume, false)?;
    let clip_config =
        config.clip_config().map_err(|m| TrainError::Config { path: run.config(), message: m })?;
    let mut model = seeded_init::<B>(&clip_config, t.seed, device);
    let mut optim = ClipOptimizer::<B>::new(t);
    let mut resumed_from = None;
    if resume {
        let dir;
        (model, optim, _, dir) = load_latest(run, model, optim, device)?;
        resumed_from = Some(dir);
    } else {
        model = initial_weights(model, config, &clip_config, observer)?;
    }
    let model = model.with_precision(t.precision);
    let (frozen_text, frozen_image, augmented) = cached_towers(config, &clip_config);
    let mut frozen = FrozenFeatures::new(frozen_text, frozen_image, augmented);
    let plan = ReplicaPlan {
        spec: t.clone(),
        frozen_text,
        frozen_image,
        augmented,
        resume_from: resumed_from,
        scaler: optim.scaler.clone(),
        cluster: Some(cluster.clone()),
    };
    let mut replicas = Replicas::start(&model, &devices, plan)?;
    observer.on_message(&format!(
        "node {} of {}: {} replica(s) registered with the coordinator at {}",
        cluster.node_rank,
        cluster.nodes,
        devices.len(),
        cluster.coordinator
    ));
    let mut model = Some(model);
    let mut batches: Option<(usize, clip_data::EpochBatches)> = None;
    let mut steps = 0;
    while let Some(order) = replicas.exchange_order(None)? {
        // The batch node 0 takes: the next one of the epoch being read, else read from there.
        let current =
            batches.as_ref().is_some_and(|(e, b)| *e == order.epoch && b.position() == order.batch);
        if !current {
            batches = Some((order.epoch, loader.epoch_from(order.epoch, order.batch)));
        }
        let (_, epoch_batches) = batches.as_mut().expect("set above");
        let batch = epoch_batches.next().ok_or_else(|| {
            TrainError::Other(format!(
                "node 0 asked for batch {} of epoch {}, which this node does not have (are the data and config the same on every node?)",
                order.batch, order.epoch
            ))
        })??;
        let place = replicas.send(&batch, order.step, order.lr_factor)?;
        let own = batch.rows(place.rows.clone());
        drop(batch);
        let current_model = model.as_ref().expect("the model is back after every optimizer step");
        let out = replicas.forward_backward(
            current_model,
            &mut frozen,
            own,
            &place,
            optim.scaler.factor(),
            order.step,
            device,
        )?;
        let stepped = model.take().expect("the model is back after every optimizer step");
        let (stepped, _) = optim.step(stepped, out.grads, order.lr_factor);
        model = Some(stepped);
        replicas.collect(place.rows.len())?;
        steps += 1;
    }
    Ok(steps)
}

/// The model, optimizer (its loss scaler included) and state of a run's latest checkpoint, and
/// that checkpoint's folder.
fn load_latest<B: AutodiffBackend>(
    run: &RunDir,
    model: ClipModel<B>,
    optim: ClipOptimizer<B>,
    device: &B::Device,
) -> Result<(ClipModel<B>, ClipOptimizer<B>, TrainState, PathBuf)> {
    let dir = run.latest().ok_or_else(|| TrainError::Checkpoint {
        path: run.checkpoints(),
        message: "no complete checkpoint to resume from".into(),
    })?;
    let model = load_model(model, &dir, device)?;
    let mut optim = optim.load(&dir, device)?;
    let state = read_state(&dir)?;
    optim.scaler = state.scaler.clone();
    Ok((model, optim, state, dir))
}

/// Which towers' features are computed once and reused, and whether augmentation is on: a
/// frozen tower gives a caption (an image: unless augmentation changes it) the same features all
/// run long. `(text, image, augmented)`.
fn cached_towers(config: &ExperimentConfig, clip: &ClipConfig) -> (bool, bool, bool) {
    let t = &config.train;
    (
        t.cache_frozen_text && !clip.text_trainable,
        t.cache_frozen_image && !clip.image_trainable,
        !config.data.augment.is_identity(),
    )
}

/// The training and validation loaders over the run's split (saved with a new run, reused on
/// resume).
fn loaders(
    config: &ExperimentConfig,
    run: &RunDir,
    resume: bool,
    save_split: bool,
) -> Result<(ClipLoader, ClipLoader)> {
    let data = &config.data;
    data.ensure_synthetic()?;
    let dataset = CaptionDataset::load(&data.dataset_config()?)?;
    let split = if resume {
        Split::load(&run.split())?
    } else {
        let s = SplitDataset::new(&dataset, &data.split_config())?.split;
        if save_split {
            s.save(&run.split())?;
        }
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
    let mut train_cfg = data.loader(true);
    train_cfg.drop_last = config.train.drop_last && split.train.len() > data.batch_size;
    let train_pairs = split.train.clone().with_sampling(data.caption_sampling, data.seed);
    // Every replica needs a pair per micro-batch: a shorter last batch is dropped.
    let t = &config.train;
    let least = t.devices.len().max(1) * t.nodes.max(1) * t.micro_batches;
    if least > t.micro_batches {
        let pairs = train_pairs.len();
        if pairs < least {
            return Err(TrainError::Config {
                path: run.config(),
                message: format!("the training split has {pairs} pair(s); train.devices and train.micro_batches need at least {least}"),
            });
        }
        let rest = pairs % data.batch_size;
        if pairs > data.batch_size && rest != 0 && rest < least {
            train_cfg.drop_last = true;
        }
    }
    let train = ClipLoader::new(train_pairs, data.train_pipeline()?, train_cfg);
    let val = ClipLoader::new(split.val.clone(), data.eval_pipeline()?, data.loader(false));
    Ok((train, val))
}

/// What a user should know about the run's settings before it starts.
fn announce(config: &ExperimentConfig, no_validation: bool, observer: &mut dyn Observer) {
    let t = &config.train;
    if no_validation {
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
}

/// Training time across resumptions, this session's pace, and the throughput window.
struct Clock {
    started: Instant,
    before_s: f64,
    start_step: usize,
    window: Instant,
}

impl Clock {
    fn new(before_s: f64, start_step: usize) -> Self {
        let now = Instant::now();
        Self { started: now, before_s, start_step, window: now }
    }

    /// Seconds of training in this run, earlier sessions included.
    fn elapsed_s(&self) -> f64 {
        self.before_s + self.started.elapsed().as_secs_f64()
    }

    /// Seconds since the last lap (the window's start), and a new lap started.
    fn lap(&mut self) -> f64 {
        let dt = self.window.elapsed().as_secs_f64();
        self.window = Instant::now();
        dt
    }

    /// Seconds left at this session's pace, at `step` of `total`.
    fn eta_s(&self, step: usize, total: usize) -> f64 {
        let session_s = self.started.elapsed().as_secs_f64();
        session_s / (step - self.start_step) as f64 * (total - step) as f64
    }
}

/// The devices of this node's replicas: `train.devices`, or `device` alone.
fn replica_devices<B: AutodiffBackend>(
    t: &crate::config::TrainSpec,
    device: &B::Device,
) -> Vec<B::Device> {
    if t.devices.is_empty() {
        return vec![device.clone()];
    }
    t.devices.iter().map(|&i| device_number::<B>(device, i)).collect()
}

/// Device number `index` of the backend `device` belongs to (the CPU backend has one device:
/// every number is it).
fn device_number<B: AutodiffBackend>(device: &B::Device, index: usize) -> B::Device {
    use burn::tensor::backend::DeviceOps;
    let mut id = device.id();
    id.index_id = index as u16;
    <B::Device as burn::tensor::backend::Device>::from_id(id)
}

/// The dropout generator's seed for micro-batch `micro` of `step` (micro-batch 0's is the seed of
/// a step taken whole, so runs without micro-batches draw what they always drew).
pub(crate) fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let per_step = seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    per_step ^ (micro as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}
