//! Validation during training: the held-out split evaluated as `clip eval` evaluates it (loss,
//! recall, and with `[eval]` labels class-level recall and zero-shot accuracy), recorded in the
//! run's metrics. Which model is the best, and keeping it, is the trainer's business.

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clip_data::{CaptionTokenizer, ClipLoader, PairDataset};
use clip_infer::zeroshot::parse_templates;
use clip_infer::{EvalExtras, Evaluation, ImageLabels, ZeroShotClassifier};
use clip_model::{ClipModel, TextFeatureCache};

use crate::checkpoint::TrainState;
use crate::config::{BestBy, ExperimentConfig};
use crate::error::{Result, TrainError};
use crate::metrics::{improves, EpochMetrics, RunLogs};
use crate::observer::Observer;

/// When a validation happens: the epoch in progress (1-based), its training loss so far.
pub(crate) struct ValidationPoint {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: Option<f64>,
    pub mid_epoch: bool,
    pub elapsed_s: f64,
}

impl ValidationPoint {
    fn metrics(self, val: Evaluation) -> EpochMetrics {
        EpochMetrics {
            epoch: self.epoch,
            step: self.step,
            mid_epoch: self.mid_epoch,
            train_loss: self.train_loss,
            val,
            elapsed_s: self.elapsed_s,
        }
    }
}

/// Evaluates the model on the validation split and records the result.
pub(crate) struct Validator {
    loader: ClipLoader,
    labels: Option<EvalLabels>,
}

impl Validator {
    pub fn new(config: &ExperimentConfig, loader: ClipLoader) -> Result<Self> {
        let labels = EvalLabels::prepare(config, loader.dataset())?;
        Ok(Self { loader, labels })
    }

    /// Captions held out for validation (none: the run never validates).
    pub fn len(&self) -> usize {
        self.loader.dataset().len()
    }

    /// Images those captions show.
    pub fn images(&self) -> usize {
        self.loader.dataset().images().len()
    }

    pub fn is_empty(&self) -> bool {
        self.loader.dataset().is_empty()
    }

    /// Evaluates `model` at `point`, writes the metrics to `logs` and tells the observer.
    /// `text_cache` holds a frozen text tower's features (a fresh cache is used without one).
    pub fn run<B: AutodiffBackend>(
        &self,
        model: &ClipModel<B>,
        text_cache: Option<&mut TextFeatureCache>,
        device: &B::Device,
        point: ValidationPoint,
        logs: &mut RunLogs,
        observer: &mut dyn Observer,
    ) -> Result<EpochMetrics> {
        let what = if point.mid_epoch {
            format!("step {} (epoch {})", point.step, point.epoch)
        } else {
            format!("epoch {}", point.epoch)
        };
        observer.on_message(&format!("validating {what} on {} captions", self.len()));
        let eval_model = model.valid();
        let classifier = match &self.labels {
            Some(l) => l.classifier(&eval_model, device)?,
            None => None,
        };
        let extras = EvalExtras {
            image_labels: self.labels.as_ref().map(|l| l.indices.as_slice()),
            zero_shot: classifier.as_ref(),
        };
        let mut fresh = TextFeatureCache::new(usize::MAX);
        let cache = text_cache.unwrap_or(&mut fresh);
        clip_data::fault::reach("validate");
        let e = clip_infer::evaluate_with(&eval_model, &self.loader, device, cache, extras)?;
        let m = point.metrics(e);
        logs.validation(&m)?;
        observer.on_epoch(&m);
        Ok(m)
    }
}

/// Counts a validation's metrics against the best so far under `best_by`; true when they are
/// the new best (the caller keeps that model).
pub(crate) fn record_best(state: &mut TrainState, best_by: BestBy, m: &EpochMetrics) -> bool {
    let best_so_far =
        state.best_score.or(if best_by == BestBy::ValLoss { state.best_val_loss } else { None });
    match m.score(best_by).filter(|&s| improves(best_by, s, best_so_far)) {
        Some(score) => {
            state.best_score = Some(score);
            state.best_val_loss = Some(m.val.loss);
            state.best_step = Some(state.step);
            state.validations_since_best = 0;
            true
        }
        None => {
            state.validations_since_best += 1;
            false
        }
    }
}

/// `[eval]` prepared for the validation split: each image's class, and the prompts.
struct EvalLabels {
    indices: Vec<usize>,
    classes: Vec<String>,
    templates: Option<Vec<String>>,
    tokenizer: CaptionTokenizer,
}

impl EvalLabels {
    fn prepare(config: &ExperimentConfig, val: &PairDataset) -> Result<Option<Self>> {
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
    fn classifier<B: Backend>(
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
