//! Checkpoints of a run: what training saves and resumes from. The run directory's layout, the
//! checkpoint folders' files and what makes a checkpoint complete are
//! [`clip_infer::run_dir`]'s, which inference reads by too.
//!
//! Every checkpoint is written into a temporary directory and renamed into place, so a crash never
//! leaves a half-written one; `state.json` is written last inside it.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{
    FullPrecisionSettings, NamedMpkBytesRecorder, NamedMpkFileRecorder, Record, Recorder,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use clip_model::ClipModel;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::{ClipOptimizer, LossScaler};
use crate::schedule::Plateau;

/// Where a run lives (the one owner of the layout is `clip_infer`).
pub use clip_infer::run_dir::{CheckpointDir, RunDir};

/// Everything besides weights and optimizer moments that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch the next batch belongs to, and its index within that epoch.
    pub epoch: usize,
    pub batch: usize,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// The best model's value of `checkpoint.best_by` (absent in runs from before it existed,
    /// whose best was always the lowest validation loss).
    #[serde(default)]
    pub best_score: Option<f64>,
    /// Validations since the best one (early stopping's patience).
    #[serde(default)]
    pub validations_since_best: usize,
    /// The plateau schedule's progress (absent in runs from before it existed).
    #[serde(default)]
    pub plateau: Plateau,
    /// Running sum and count of the current epoch's training loss (for its mean).
    pub epoch_loss_sum: f64,
    pub epoch_loss_count: usize,
    pub scaler: LossScaler,
    /// Training time so far (seconds), across resumptions.
    pub elapsed_s: f64,
}

impl TrainState {
    pub fn new(scaler: LossScaler) -> Self {
        Self {
            step: 0,
            epoch: 0,
            batch: 0,
            best_val_loss: None,
            best_step: None,
            best_score: None,
            validations_since_best: 0,
            plateau: Plateau::default(),
            epoch_loss_sum: 0.0,
            epoch_loss_count: 0,
            scaler,
            elapsed_s: 0.0,
        }
    }

    /// The mean training loss of the epoch's steps so far (none when no step of it ran here).
    pub fn epoch_mean_loss(&self) -> Option<f64> {
        (self.epoch_loss_count > 0).then(|| self.epoch_loss_sum / self.epoch_loss_count as f64)
    }

    /// Moves on to the next epoch's first batch.
    pub fn next_epoch(&mut self) {
        self.epoch += 1;
        self.batch = 0;
        self.epoch_loss_sum = 0.0;
        self.epoch_loss_count = 0;
    }
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

fn write_dir_atomically(final_dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = final_dir.parent().expect("checkpoint dirs have a parent");
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let name = final_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    clip_data::fault::reach("checkpoint.fill");
    // Replace an existing directory of the same name: move it aside first.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = final_dir.exists();
    if had_old {
        std::fs::rename(final_dir, &old).map_err(|e| TrainError::io(final_dir, e))?;
        clip_data::fault::reach("checkpoint.swap");
    }
    std::fs::rename(&tmp, final_dir).map_err(|e| TrainError::io(final_dir, e))?;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A training process's hold on its run directory: an advisory lock on `RUN/.lock` that the OS
/// drops when the process ends however it ends (SIGKILL included), so two `clip train` processes
/// never write one run, and debris found under the lock is known to be a dead process's.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock, or says which run is busy.
    pub fn acquire(run: &RunDir) -> Result<Self> {
        std::fs::create_dir_all(&run.root).map_err(|e| TrainError::io(&run.root, e))?;
        let path = run.root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::Checkpoint {
                path: run.root.clone(),
                message: "another process is training this run (its .lock is held); wait for it to end or stop it".into(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path, e)),
        }
    }
}

/// Clears what a killed process left mid-write, under the run's [`RunLock`]: a checkpoint whose
/// replacement was cut between its two renames gets its previous copy back (`.best.old-PID` →
/// `best`), and temporary files and folders (`.NAME.tmp-PID`, `.NAME.old-PID`) go. Only names of
/// that pattern, which this crate alone makes, are touched. Returns what was done, for the log.
pub fn recover_interrupted_writes(run: &RunDir, _lock: &RunLock) -> Vec<String> {
    let mut done = Vec::new();
    for dir in [run.root.clone(), run.checkpoints(), run.metrics()] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut names: Vec<String> =
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for name in names {
            let Some((target, kind, _)) = clip_data::fs::interrupted_write(&name) else { continue };
            let path = dir.join(&name);
            let target_path = dir.join(target);
            if kind == "old"
                && !target_path.exists()
                && std::fs::rename(&path, &target_path).is_ok()
            {
                done.push(format!(
                    "restored {} (its replacement was interrupted)",
                    target_path.display()
                ));
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if removed.is_ok() {
                done.push(format!("removed {} (left by an interrupted write)", path.display()));
            }
        }
    }
    done
}

/// Saves model, optimizer and state as `checkpoints/step-NNNNNN`, then keeps only the newest
/// `keep_last` step checkpoints.
pub fn save_checkpoint<B: AutodiffBackend>(
    run: &RunDir,
    model: &ClipModel<B>,
    optim: &ClipOptimizer<B>,
    state: &TrainState,
    keep_last: usize,
) -> Result<PathBuf> {
    let dir = run.step_checkpoint(state.step);
    write_dir_atomically(&dir, |tmp| {
        save_model(model, &CheckpointDir::new(tmp).model_stem())?;
        optim.save(tmp)?;
        write_state(tmp, state)
    })?;
    let all = run.step_checkpoints();
    for (_, old) in all.iter().take(all.len().saturating_sub(keep_last)) {
        // Hidden first (one rename), then deleted: a kill midway leaves debris the next run
        // clears, never a half-deleted checkpoint under its own name.
        let name = old.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let doomed = old.with_file_name(format!(".{name}.del-{}", std::process::id()));
        if std::fs::rename(old, &doomed).is_ok() {
            let _ = std::fs::remove_dir_all(&doomed);
        }
    }
    Ok(dir)
}

/// Saves the model as the best so far (`checkpoints/best`).
pub fn save_best<B: AutodiffBackend>(
    run: &RunDir,
    model: &ClipModel<B>,
    state: &TrainState,
) -> Result<PathBuf> {
    let dir = run.best();
    write_dir_atomically(&dir, |tmp| {
        save_model(model, &CheckpointDir::new(tmp).model_stem())?;
        write_state(tmp, state)
    })?;
    Ok(dir)
}

fn save_model<B: AutodiffBackend>(model: &ClipModel<B>, path: &Path) -> Result<()> {
    if let Some(name) = first_non_finite_parameter(model) {
        return Err(TrainError::Checkpoint {
            path: path.into(),
            message: format!("not saved: parameter {name} holds infinite or NaN values (the previous checkpoints are kept)"),
        });
    }
    let bytes = record_bytes::<B, _>(model.clone().into_record()).map_err(|source| {
        TrainError::Record { path: path.into(), what: "cannot save the weights", source }
    })?;
    write_record_file(&bytes, path)
}

/// A record as burn's named MessagePack bytes (what `NamedMpkFileRecorder` reads back).
pub(crate) fn record_bytes<B: Backend, R: Record<B>>(
    record: R,
) -> std::result::Result<Vec<u8>, burn::record::RecorderError> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::new().record(record, ())
}

/// Writes recorded bytes as `stem.mpk` with our own write, so that a full disk or a read-only
/// folder is reported as such (burn's file recorder reports them as a MessagePack error).
pub(crate) fn write_record_file(bytes: &[u8], stem: &Path) -> Result<()> {
    let path = stem.with_extension("mpk");
    std::fs::write(&path, bytes).map_err(|e| TrainError::io(&path, e))
}

fn write_state(dir: &Path, state: &TrainState) -> Result<()> {
    let path = CheckpointDir::new(dir).state();
    let json = serde_json::to_vec_pretty(state).expect("state serializes");
    clip_data::fs::write_atomic(&path, &json)?;
    Ok(())
}

/// The path of the first parameter holding an infinite or NaN value, if any: a checkpoint is
/// never written from such weights. One reduction per parameter, one read back.
pub fn first_non_finite_parameter<B: Backend, M: Module<B>>(model: &M) -> Option<String> {
    struct Visitor<B: Backend> {
        path: Vec<String>,
        names: Vec<String>,
        /// Per parameter, `Σ (x − x)`: 0 when every value is finite, NaN otherwise.
        checks: Vec<Tensor<B, 1>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Visitor<B> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let x = param.val();
            self.checks.push((x.clone() - x).sum());
            self.names.push(self.path.join("."));
        }
    }
    let mut v = Visitor::<B> { path: Vec::new(), names: Vec::new(), checks: Vec::new() };
    model.visit(&mut v);
    if v.checks.is_empty() {
        return None;
    }
    let sums = Tensor::cat(v.checks, 0).into_data().convert::<f32>();
    let sums = sums.as_slice::<f32>().ok()?;
    sums.iter().position(|s| !s.is_finite()).map(|i| v.names[i].clone())
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = CheckpointDir::new(dir).state();
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| TrainError::Json { path, source })
}

/// Loads the weights of a checkpoint directory into `model` (parameter ids included, so the
/// optimizer state matches them).
pub fn load_model<B: AutodiffBackend>(
    model: ClipModel<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<ClipModel<B>> {
    let files = CheckpointDir::new(dir);
    let path = files.model();
    let settings = model.settings;
    model
        .load_file(files.model_stem(), &recorder(), device)
        .map(|mut m| {
            m.settings = settings;
            m
        })
        .map_err(|source| TrainError::Record { path, what: "cannot load the weights", source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_weights_are_found_by_their_path() {
        use burn::backend::Flex;
        use burn::nn::{Linear, LinearConfig};
        #[derive(Module, Debug)]
        struct Net<B: Backend> {
            first: Linear<B>,
            second: Linear<B>,
        }
        let device = Default::default();
        let net = Net::<Flex> {
            first: LinearConfig::new(3, 4).init(&device),
            second: LinearConfig::new(4, 2).init(&device),
        };
        assert_eq!(first_non_finite_parameter(&net), None);
        for (bad, name) in [(f32::NAN, "second.weight"), (f32::INFINITY, "second.weight")] {
            let mut net = net.clone();
            let w = net.second.weight.val();
            let poisoned =
                w.clone().slice_assign([1..2, 0..1], Tensor::from_floats([[bad]], &device));
            net.second.weight = Param::from_tensor(poisoned);
            assert_eq!(first_non_finite_parameter(&net).as_deref(), Some(name));
        }
    }

    #[test]
    fn interrupted_writes_are_recovered_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let lock = RunLock::acquire(&run).unwrap();
        assert!(RunLock::acquire(&run).is_err(), "a second holder is refused");
        let ck = run.checkpoints();
        std::fs::create_dir_all(ck.join(".best.old-41")).unwrap();
        std::fs::write(ck.join(".best.old-41/state.json"), b"old best").unwrap();
        std::fs::create_dir_all(ck.join(".step-000004.tmp-41")).unwrap();
        std::fs::create_dir_all(ck.join("step-000002")).unwrap();
        std::fs::create_dir_all(ck.join(".step-000002.old-7")).unwrap();
        std::fs::create_dir_all(ck.join(".step-000000.del-7")).unwrap();
        std::fs::write(dir.path().join(".config.toml.tmp-41"), b"half").unwrap();
        for keep in [".notes.tmp-x", "mine.tmp-3", ".hidden"] {
            std::fs::write(dir.path().join(keep), b"user's").unwrap();
        }
        let done = recover_interrupted_writes(&run, &lock);
        assert_eq!(done.len(), 5, "{done:?}");
        assert_eq!(std::fs::read(ck.join("best/state.json")).unwrap(), b"old best");
        let mut left: Vec<String> = std::fs::read_dir(&ck)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["best", "step-000002"]);
        for keep in [".notes.tmp-x", "mine.tmp-3", ".hidden", ".lock"] {
            assert!(dir.path().join(keep).exists(), "{keep} is not ours to remove");
        }
        drop(lock);
        RunLock::acquire(&run).expect("the lock is free once dropped");
    }

    #[test]
    fn a_failed_write_leaves_the_old_directory_and_no_debris() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("checkpoints/best");
        write_dir_atomically(&target, |tmp| {
            std::fs::write(tmp.join("state.json"), b"1").map_err(|e| TrainError::io(tmp, e))
        })
        .unwrap();
        let failed = write_dir_atomically(&target, |tmp| {
            std::fs::write(tmp.join("state.json"), b"2").map_err(|e| TrainError::io(tmp, e))?;
            Err(TrainError::Other("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(target.join("state.json")).unwrap(), b"1");
        write_dir_atomically(&target, |tmp| {
            std::fs::write(tmp.join("state.json"), b"3").map_err(|e| TrainError::io(tmp, e))
        })
        .unwrap();
        assert_eq!(std::fs::read(target.join("state.json")).unwrap(), b"3");
        let names: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["best".to_string()]);
    }

    #[test]
    fn only_complete_step_checkpoints_count() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        for (name, complete) in
            [("step-000010", true), ("step-000020", false), ("step-000005", true), ("best", true)]
        {
            let d = run.checkpoints().join(name);
            std::fs::create_dir_all(&d).unwrap();
            if complete {
                std::fs::write(d.join("state.json"), b"{}").unwrap();
            }
        }
        assert_eq!(run.step_checkpoints().iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![5, 10]);
        assert_eq!(run.latest().unwrap(), run.checkpoints().join("step-000010"));
    }
}
