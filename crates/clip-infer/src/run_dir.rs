//! The run directory: the one place its layout is written down. Training writes it, `clip import`
//! assembles one from outside weights, and every inference command reads it; all of them name
//! its files through [`RunDir`] and [`CheckpointDir`].
//!
//! ```text
//! runs/<name>/
//!   config.toml             the resolved experiment config, absolute paths    train, import
//!   model.json              architecture + preprocessing, all inference needs  train, import
//!   split.json              the train/val(/test) split by image                train, import*
//!   import.json             where imported weights came from (marks the run as
//!                           imported, never trained)                           import
//!   metrics/steps.jsonl     one line per optimizer step                        train
//!   metrics/epochs.jsonl    one line per validation (loss, accuracy, recall@k) train
//!   tensorboard/            TensorBoard event files                            train
//!   checkpoints/step-000120/  a resumable checkpoint (every N steps, epoch ends;
//!                           the newest `keep_last` are kept)                   train
//!     model.mpk             the weights (burn's named MessagePack record)
//!     optim-image.mpk       the optimizer state of each parameter group:
//!     optim-text.mpk          image trunk, text trunk, heads + temperature
//!     optim-heads.mpk
//!     state.json            step, epoch, best so far, loss scaler, time: written
//!                           last, the mark of a complete checkpoint
//!   checkpoints/best/       the best model so far: model.mpk, state.json        train
//!   model.safetensors       the best model, upstream key names (PyTorch-loadable) train, import
//!   curves.png              training curves                                    train
//!   summary.json            how the run ended (absent: killed, or still running) train
//!   eval-<split>.json       `clip eval`'s report                               eval
//!   probe.json              `clip probe`'s report                              probe
//! ```
//! (* `clip import` writes `split.json` when the config's captions file is there.)
//!
//! A checkpoint folder is written into a temporary folder (`.step-000120.tmp-<pid>`) and renamed
//! into place, `state.json` last inside it: a crash never leaves a half-written one, and a folder
//! without `state.json` (an interrupted copy, say) is not a checkpoint — neither resume nor
//! inference takes it ([`CheckpointDir::is_complete`], the one completeness rule).
//!
//! Inference takes the weights in this order ([`RunDir::weights`]): `model.safetensors`, then
//! `checkpoints/best`, then the newest complete step checkpoint.

use std::path::{Path, PathBuf};

use crate::error::{InferError, Result};

/// `config.toml`.
pub const CONFIG: &str = "config.toml";
/// `model.json`: the [`ModelCard`](crate::ModelCard).
pub const MODEL_CARD: &str = "model.json";
/// `split.json`.
pub const SPLIT: &str = "split.json";
/// `import.json`.
pub const IMPORT_RECORD: &str = "import.json";
/// `metrics/`, and the two files in it.
pub const METRICS: &str = "metrics";
pub const STEP_METRICS: &str = "steps.jsonl";
pub const EPOCH_METRICS: &str = "epochs.jsonl";
/// `tensorboard/`.
pub const TENSORBOARD: &str = "tensorboard";
/// `checkpoints/`, its step checkpoints' name prefix, and the best model's folder.
pub const CHECKPOINTS: &str = "checkpoints";
pub const STEP_PREFIX: &str = "step-";
pub const BEST: &str = "best";
/// `model.safetensors`: the exported best model.
pub const EXPORTED_MODEL: &str = "model.safetensors";
/// `curves.png`.
pub const CURVES: &str = "curves.png";
/// `summary.json`.
pub const SUMMARY: &str = "summary.json";
/// `probe.json`.
pub const PROBE_REPORT: &str = "probe.json";

/// The weights file of a checkpoint, without and with the extension burn's recorder adds.
pub const CHECKPOINT_MODEL_STEM: &str = "model";
pub const CHECKPOINT_MODEL: &str = "model.mpk";
/// The optimizer state of the image trunk, the text trunk, and the heads + temperature.
pub const OPTIMIZER_FILES: [&str; 3] = ["optim-image.mpk", "optim-text.mpk", "optim-heads.mpk"];
/// A checkpoint's `state.json`, written last: the mark of a complete checkpoint.
pub const CHECKPOINT_STATE: &str = "state.json";

/// Where a run lives, and the paths of its files (see the [module docs](self) for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A fresh directory under `runs_dir` named `name`, or `name-2`, `name-3`... if taken.
    pub fn create_unique(runs_dir: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(runs_dir).map_err(|e| InferError::io(runs_dir, e))?;
        for n in 1.. {
            let candidate =
                if n == 1 { runs_dir.join(name) } else { runs_dir.join(format!("{name}-{n}")) };
            match std::fs::create_dir(&candidate) {
                Ok(()) => return Ok(Self::new(candidate)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(InferError::io(&candidate, e)),
            }
        }
        unreachable!()
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG)
    }
    pub fn model_json(&self) -> PathBuf {
        self.root.join(MODEL_CARD)
    }
    pub fn split(&self) -> PathBuf {
        self.root.join(SPLIT)
    }
    /// `import.json`: present only in runs made by `clip import`.
    pub fn import_record(&self) -> PathBuf {
        self.root.join(IMPORT_RECORD)
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS)
    }
    /// `metrics/steps.jsonl`.
    pub fn step_metrics(&self) -> PathBuf {
        self.metrics().join(STEP_METRICS)
    }
    /// `metrics/epochs.jsonl`.
    pub fn epoch_metrics(&self) -> PathBuf {
        self.metrics().join(EPOCH_METRICS)
    }
    /// TensorBoard event files (`tensorboard --logdir` on this or a parent directory).
    pub fn tensorboard(&self) -> PathBuf {
        self.root.join(TENSORBOARD)
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }
    /// `checkpoints/step-NNNNNN`, the step checkpoint taken after `step` optimizer steps.
    pub fn step_checkpoint(&self, step: usize) -> PathBuf {
        self.checkpoints().join(format!("{STEP_PREFIX}{step:06}"))
    }
    /// `checkpoints/best`.
    pub fn best(&self) -> PathBuf {
        self.checkpoints().join(BEST)
    }
    /// `model.safetensors`.
    pub fn exported_model(&self) -> PathBuf {
        self.root.join(EXPORTED_MODEL)
    }
    pub fn curves(&self) -> PathBuf {
        self.root.join(CURVES)
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join(SUMMARY)
    }
    /// `eval-<split>.json`, `clip eval`'s default report.
    pub fn eval_report(&self, split: &str) -> PathBuf {
        self.root.join(format!("eval-{split}.json"))
    }
    /// `probe.json`, `clip probe`'s default report.
    pub fn probe_report(&self) -> PathBuf {
        self.root.join(PROBE_REPORT)
    }

    /// Step checkpoints that are complete ([`CheckpointDir::is_complete`]), oldest first.
    pub fn step_checkpoints(&self) -> Vec<(usize, PathBuf)> {
        let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix(STEP_PREFIX)?.parse().ok()?;
                CheckpointDir::new(e.path()).is_complete().then(|| (step, e.path()))
            })
            .collect();
        v.sort();
        v
    }

    /// The newest complete step checkpoint.
    pub fn latest(&self) -> Option<PathBuf> {
        self.step_checkpoints().pop().map(|(_, p)| p)
    }

    /// `checkpoints/best`, when it is complete.
    pub fn best_checkpoint(&self) -> Option<PathBuf> {
        let best = self.best();
        CheckpointDir::new(&best).is_complete().then_some(best)
    }

    /// The weights inference takes, best first: the exported best model (`model.safetensors`),
    /// the best checkpoint's, the newest complete step checkpoint's.
    pub fn weights(&self) -> Option<PathBuf> {
        let exported = self.exported_model();
        if exported.is_file() {
            return Some(exported);
        }
        self.best_checkpoint().or_else(|| self.latest()).map(|dir| CheckpointDir::new(dir).model())
    }
}

/// The files of one checkpoint folder (`checkpoints/step-NNNNNN/` or `checkpoints/best/`, or
/// the temporary folder one is written into).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointDir {
    pub path: PathBuf,
}

impl CheckpointDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `model.mpk`.
    pub fn model(&self) -> PathBuf {
        self.path.join(CHECKPOINT_MODEL)
    }
    /// `model`: the path burn's file recorders take (they add `.mpk`).
    pub fn model_stem(&self) -> PathBuf {
        self.path.join(CHECKPOINT_MODEL_STEM)
    }
    /// The optimizer state files of the image trunk, the text trunk and the heads.
    pub fn optimizer(&self) -> [PathBuf; 3] {
        OPTIMIZER_FILES.map(|f| self.path.join(f))
    }
    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.path.join(CHECKPOINT_STATE)
    }
    /// Whether the checkpoint is complete: its `state.json`, written last, is there.
    pub fn is_complete(&self) -> bool {
        self.state().is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(run: &RunDir, name: &str, model: bool, state: bool) {
        let d = run.checkpoints().join(name);
        std::fs::create_dir_all(&d).unwrap();
        if model {
            std::fs::write(d.join("model.mpk"), b"w").unwrap();
        }
        if state {
            std::fs::write(d.join("state.json"), b"{}").unwrap();
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let run = RunDir::new("/r");
        let rel = |p: PathBuf| p.strip_prefix("/r").unwrap().to_string_lossy().into_owned();
        assert_eq!(
            [
                run.config(),
                run.model_json(),
                run.split(),
                run.import_record(),
                run.step_metrics(),
                run.epoch_metrics(),
                run.tensorboard(),
                run.step_checkpoint(120),
                run.best(),
                run.exported_model(),
                run.curves(),
                run.summary(),
                run.eval_report("val"),
                run.probe_report(),
            ]
            .map(rel),
            [
                "config.toml",
                "model.json",
                "split.json",
                "import.json",
                "metrics/steps.jsonl",
                "metrics/epochs.jsonl",
                "tensorboard",
                "checkpoints/step-000120",
                "checkpoints/best",
                "model.safetensors",
                "curves.png",
                "summary.json",
                "eval-val.json",
                "probe.json",
            ]
        );
        let c = CheckpointDir::new("/c");
        assert_eq!(c.model(), Path::new("/c/model.mpk"));
        assert_eq!(c.model_stem().with_extension("mpk"), c.model());
        assert_eq!(c.state(), Path::new("/c/state.json"));
        assert_eq!(c.optimizer()[2], Path::new("/c/optim-heads.mpk"));
    }

    #[test]
    fn only_complete_step_checkpoints_count_newest_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert_eq!(run.latest(), None);
        checkpoint(&run, "step-000010", true, true);
        checkpoint(&run, "step-000020", true, false); // weights but no state.json: incomplete
        checkpoint(&run, "step-000005", true, true);
        checkpoint(&run, "step-1000000", true, true); // past six digits: still the newest
        checkpoint(&run, "step-x", true, true);
        checkpoint(&run, "best", true, true);
        assert_eq!(
            run.step_checkpoints().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![5, 10, 1_000_000]
        );
        assert_eq!(run.latest().unwrap(), run.checkpoints().join("step-1000000"));
    }

    #[test]
    fn weights_come_from_the_export_then_best_then_the_latest_complete_step() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert_eq!(run.weights(), None);
        checkpoint(&run, "step-000020", true, false);
        assert_eq!(run.weights(), None, "an incomplete checkpoint is no weights");
        checkpoint(&run, "step-000010", true, true);
        assert_eq!(run.weights(), Some(run.step_checkpoint(10).join("model.mpk")));
        checkpoint(&run, "best", true, false);
        assert_eq!(run.best_checkpoint(), None);
        assert_eq!(run.weights(), Some(run.step_checkpoint(10).join("model.mpk")));
        checkpoint(&run, "best", true, true);
        assert_eq!(run.weights(), Some(run.best().join("model.mpk")));
        std::fs::write(run.exported_model(), b"w").unwrap();
        assert_eq!(run.weights(), Some(run.exported_model()));
    }

    #[test]
    fn create_unique_numbers_taken_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunDir::create_unique(dir.path(), "exp").unwrap();
        let b = RunDir::create_unique(dir.path(), "exp").unwrap();
        assert_eq!((a.root, b.root), (dir.path().join("exp"), dir.path().join("exp-2")));
    }
}
