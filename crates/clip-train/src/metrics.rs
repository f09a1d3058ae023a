//! What a run records: one JSON line per step and per epoch in `metrics/`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clip_infer::Evaluation;
use serde::{Deserialize, Serialize};

use crate::checkpoint::RunDir;
use crate::config::BestBy;
use crate::error::{Result, TrainError};
use crate::tensorboard::EventWriter;

/// The files in a run's `metrics/` folder: a line per step, and one per validation
/// ([`RunDir::step_metrics`], [`RunDir::epoch_metrics`]).
pub use clip_infer::run_dir::{EPOCH_METRICS, STEP_METRICS};

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based count of optimizer steps (skipped fp16 steps included).
    pub step: usize,
    pub epoch: usize,
    /// 0-based batch index within the epoch.
    pub batch: usize,
    pub batches_per_epoch: usize,
    pub total_steps: usize,
    pub loss: f64,
    /// In-batch top-1: image → its caption, and caption → its image.
    pub acc_i2t: f64,
    pub acc_t2i: f64,
    /// Learning rate of the heads group (the others scale with it).
    pub lr: f64,
    pub temperature: f64,
    pub samples_per_s: f64,
    pub grad_norm: Option<f64>,
    pub loss_scale: Option<f64>,
    pub skipped_steps: usize,
    pub elapsed_s: f64,
    pub eta_s: f64,
    /// Each replica's share of a data-parallel step, replica 0 first (empty on one device).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<crate::replicas::ReplicaStep>,
}

/// One validation pass: when it happened, and the evaluation of the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// The epoch validated (1-based); with `mid_epoch`, the epoch in progress.
    pub epoch: usize,
    pub step: usize,
    /// A validation inside an epoch (`train.val_every_steps`), not at its end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mid_epoch: bool,
    /// Mean training loss of the epoch, or of its steps so far (absent when no step of it ran in
    /// this process).
    pub train_loss: Option<f64>,
    /// The validation split evaluated as `clip eval` evaluates it. Its fields sit beside the
    /// others in the files, the loss and in-batch accuracies as `val_loss`, `val_acc_i2t`,
    /// `val_acc_t2i` (so they are not taken for training figures).
    #[serde(flatten, with = "val_prefixed")]
    pub val: Evaluation,
    pub elapsed_s: f64,
}

/// [`EpochMetrics::val`] in the metrics files: [`Evaluation`]'s own fields, these renamed.
mod val_prefixed {
    use clip_infer::Evaluation;
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::{Map, Value};

    /// (name in [`Evaluation`], name in the files).
    const RENAMED: [(&str, &str); 3] =
        [("loss", "val_loss"), ("acc_i2t", "val_acc_i2t"), ("acc_t2i", "val_acc_t2i")];

    fn rename(map: Map<String, Value>, to_file: bool) -> Map<String, Value> {
        map.into_iter()
            .map(|(key, value)| {
                let key = RENAMED
                    .iter()
                    .find(|(ours, file)| key == if to_file { *ours } else { *file })
                    .map_or(key, |(ours, file)| if to_file { *file } else { *ours }.to_string());
                (key, value)
            })
            .collect()
    }

    pub fn serialize<S: Serializer>(e: &Evaluation, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::to_value(e).map_err(S::Error::custom)? {
            Value::Object(map) => rename(map, true).serialize(serializer),
            _ => Err(S::Error::custom("an evaluation serializes as a JSON object")),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Evaluation, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        serde_json::from_value(Value::Object(rename(map, false))).map_err(D::Error::custom)
    }
}

impl StepMetrics {
    /// The step's scalars under TensorBoard tags.
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut s = vec![
            ("train/loss", self.loss),
            ("train/acc_i2t", self.acc_i2t),
            ("train/acc_t2i", self.acc_t2i),
            ("train/lr", self.lr),
            ("train/temperature", self.temperature),
            ("train/samples_per_s", self.samples_per_s),
        ];
        s.extend(self.grad_norm.map(|g| ("train/grad_norm", g)));
        s.extend(self.loss_scale.map(|l| ("train/loss_scale", l)));
        s
    }
}

impl EpochMetrics {
    /// The validation's scalars under TensorBoard tags.
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        let (v, r) = (&self.val, &self.val.retrieval);
        let mut s = vec![
            ("val/loss", v.loss),
            ("val/rsum", self.score(BestBy::Rsum).unwrap_or(f64::NAN)),
            ("val/t2i_r1", r.t2i_r1),
            ("val/t2i_r5", r.t2i_r5),
            ("val/t2i_r10", r.t2i_r10),
            ("val/i2t_r1", r.i2t_r1),
            ("val/i2t_r5", r.i2t_r5),
            ("val/i2t_r10", r.i2t_r10),
            ("val/acc_i2t", v.acc_i2t),
            ("val/acc_t2i", v.acc_t2i),
        ];
        s.extend(self.train_loss.map(|l| ("train/epoch_loss", l)));
        s.extend(v.zero_shot_top1.map(|z| ("val/zero_shot_top1", z)));
        if let Some(c) = &v.label_retrieval {
            s.extend([("val/class_t2i_r1", c.t2i_r1), ("val/class_i2t_r1", c.i2t_r1)]);
        }
        s
    }

    /// "epoch N", or "step S (epoch N)" inside an epoch.
    pub fn label(&self) -> String {
        if self.mid_epoch {
            format!("step {} (epoch {})", self.step, self.epoch)
        } else {
            format!("epoch {}", self.epoch)
        }
    }

    /// The value of `metric` for this validation (`None`: not measured, e.g. zero-shot without
    /// templates).
    pub fn score(&self, metric: BestBy) -> Option<f64> {
        let r = &self.val.retrieval;
        match metric {
            BestBy::ValLoss => Some(self.val.loss),
            BestBy::Rsum => {
                Some(100.0 * (r.t2i_r1 + r.t2i_r5 + r.t2i_r10 + r.i2t_r1 + r.i2t_r5 + r.i2t_r10))
            }
            BestBy::ZeroShot => self.val.zero_shot_top1,
        }
    }
}

/// Whether `score` beats the best so far under `metric` (anything beats nothing; NaN nothing).
pub fn improves(metric: BestBy, score: f64, best: Option<f64>) -> bool {
    match best {
        _ if score.is_nan() => false,
        None => true,
        Some(b) if metric.lower_is_better() => score < b,
        Some(b) => score > b,
    }
}

/// Appends JSON lines to a file, flushing each one.
pub struct JsonlWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlWriter {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        Ok(Self { path: path.into(), file })
    }

    pub fn write<T: Serialize>(&mut self, row: &T) -> Result<()> {
        let mut line = serde_json::to_vec(row).expect("metrics serialize");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Where a run's metrics go: JSON lines per step and per validation, TensorBoard events.
pub(crate) struct RunLogs {
    steps: JsonlWriter,
    validations: JsonlWriter,
    events: Option<EventWriter>,
}

impl RunLogs {
    /// Appends to the run's metrics files; TensorBoard events (`tensorboard`) start a new file
    /// at `step`.
    pub fn open(run: &RunDir, tensorboard: bool, step: usize) -> Result<Self> {
        Ok(Self {
            steps: JsonlWriter::open(&run.metrics().join(STEP_METRICS))?,
            validations: JsonlWriter::open(&run.metrics().join(EPOCH_METRICS))?,
            events: if tensorboard {
                Some(EventWriter::create(&run.tensorboard(), step)?)
            } else {
                None
            },
        })
    }

    pub fn step(&mut self, m: &StepMetrics) -> Result<()> {
        self.steps.write(m)?;
        self.events(m.step, &m.scalars())
    }

    pub fn validation(&mut self, m: &EpochMetrics) -> Result<()> {
        self.validations.write(m)?;
        self.events(m.step, &m.scalars())
    }

    fn events(&mut self, step: usize, scalars: &[(&'static str, f64)]) -> Result<()> {
        if let Some(events) = self.events.as_mut() {
            events.scalars(step, scalars)?;
            events.flush()?;
        }
        Ok(())
    }
}

/// Reads the rows of a JSONL file (a torn last line, from a crash, is ignored).
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Rewrites a metrics file keeping only rows at or before `step` (used when resuming, so the
/// curve continues where the checkpoint was taken, without the steps that are redone).
pub fn truncate_after(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    clip_data::fs::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clip_model::RetrievalMetrics;

    /// A line of `epochs.jsonl` as the quickstart wrote it before `EpochMetrics` held an
    /// `Evaluation` (commit 308d84b).
    const WRITTEN_BY_308D84B: &str = r#"{"epoch":1,"step":93,"train_loss":3.4457100411897064,"val_loss":2.3833114891052247,"val_acc_i2t":0.164,"val_acc_t2i":0.172,"retrieval":{"images":300,"captions":1500,"t2i_r1":0.07733333333333334,"t2i_r5":0.3933333333333333,"t2i_r10":0.6073333333333333,"i2t_r1":0.11,"i2t_r5":0.49333333333333335,"i2t_r10":0.6466666666666666,"t2i_mean_rank":12.354,"t2i_median_rank":7.0,"i2t_mean_rank":17.45,"i2t_median_rank":6.0},"elapsed_s":34.087383655}"#;

    #[test]
    fn validation_lines_keep_their_file_format() {
        let old: EpochMetrics = serde_json::from_str(WRITTEN_BY_308D84B).unwrap();
        assert_eq!((old.epoch, old.step, old.mid_epoch), (1, 93, false));
        assert_eq!(
            (old.val.loss, old.val.acc_i2t, old.val.acc_t2i),
            (2.3833114891052247, 0.164, 0.172)
        );
        assert_eq!(
            (old.val.retrieval.images, old.val.retrieval.t2i_r1),
            (300, 0.07733333333333334)
        );
        assert_eq!((old.val.label_retrieval, old.val.zero_shot_top1), (None, None));
        // Written again, the line has the same keys and values (key order aside).
        let again: serde_json::Value = serde_json::to_value(&old).unwrap();
        let want: serde_json::Value = serde_json::from_str(WRITTEN_BY_308D84B).unwrap();
        assert_eq!(again, want);
        // With the optional parts, and without `val_` names for anything that is not renamed.
        let m = test_metrics::epoch();
        let line = serde_json::to_value(&m).unwrap();
        assert_eq!(line["val_loss"], 3.2);
        assert_eq!(line["zero_shot_top1"], 0.875);
        assert!(line.get("loss").is_none() && line.get("val").is_none(), "{line}");
        assert_eq!(serde_json::from_value::<EpochMetrics>(line).unwrap(), m);
    }

    #[test]
    fn truncation_keeps_earlier_steps_and_drops_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m/steps.jsonl");
        let mut w = JsonlWriter::open(&p).unwrap();
        for step in 1..=5 {
            w.write(&serde_json::json!({ "step": step })).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"step\": 6, \"lo")
            .unwrap();
        truncate_after(&p, 3).unwrap();
        let rows: Vec<serde_json::Value> = read_jsonl(&p);
        assert_eq!(
            rows.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn the_best_model_is_picked_in_the_metric_s_direction() {
        assert!(improves(BestBy::ValLoss, 1.0, None));
        assert!(
            improves(BestBy::ValLoss, 0.9, Some(1.0)) && !improves(BestBy::ValLoss, 1.1, Some(1.0))
        );
        assert!(
            improves(BestBy::Rsum, 310.0, Some(300.0))
                && !improves(BestBy::Rsum, 290.0, Some(300.0))
        );
        assert!(!improves(BestBy::ZeroShot, f64::NAN, None), "NaN is never the best");
        let r = RetrievalMetrics {
            t2i_r1: 0.1,
            t2i_r5: 0.2,
            t2i_r10: 0.3,
            i2t_r1: 0.4,
            i2t_r5: 0.5,
            i2t_r10: 0.6,
            ..Default::default()
        };
        let m = EpochMetrics {
            epoch: 1,
            step: 1,
            mid_epoch: false,
            train_loss: None,
            val: Evaluation { loss: 2.0, retrieval: r, ..Default::default() },
            elapsed_s: 0.0,
        };
        assert!((m.score(BestBy::Rsum).unwrap() - 210.0).abs() < 1e-9);
        assert_eq!(m.score(BestBy::ValLoss), Some(2.0));
        assert_eq!(m.score(BestBy::ZeroShot), None);
    }
}

/// Metrics as a run of 40 steps (10 per epoch) would report them, for the observers' tests.
#[cfg(test)]
pub(crate) mod test_metrics {
    use super::*;
    use clip_model::RetrievalMetrics;

    pub fn step(step: usize, loss: f64) -> StepMetrics {
        StepMetrics {
            step,
            epoch: step / 10,
            batch: step % 10,
            batches_per_epoch: 10,
            total_steps: 40,
            loss,
            acc_i2t: 0.25,
            acc_t2i: 0.5,
            lr: 1e-3,
            temperature: 0.07,
            samples_per_s: 123.4,
            grad_norm: Some(1.5),
            loss_scale: None,
            skipped_steps: 0,
            elapsed_s: 65.0,
            eta_s: 130.0,
            replicas: Vec::new(),
        }
    }

    pub fn epoch() -> EpochMetrics {
        EpochMetrics {
            epoch: 1,
            step: 10,
            mid_epoch: false,
            train_loss: Some(3.5),
            val: Evaluation {
                loss: 3.2,
                acc_i2t: 0.3,
                acc_t2i: 0.3,
                retrieval: RetrievalMetrics { t2i_r1: 0.123, i2t_r1: 0.456, ..Default::default() },
                label_retrieval: None,
                zero_shot_top1: Some(0.875),
            },
            elapsed_s: 30.0,
        }
    }
}
