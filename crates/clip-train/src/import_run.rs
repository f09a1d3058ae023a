//! A run directory from weights made elsewhere — the seed notebook's Lightning checkpoint, a
//! model exported by another run, or pretrained towers — so that every inference command
//! (`embed`, `search`, `serve`, `eval`, `zero-shot`, `export`) takes them without a training run.
//!
//! The directory is assembled beside its destination and renamed into place: an import that
//! fails (weights that do not fit the architecture, a full disk) leaves nothing behind, and an
//! existing directory that is not empty is never written into.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use clip_data::{CaptionDataset, SplitDataset};
use clip_infer::ModelCard;
use serde::Serialize;

use crate::checkpoint::RunDir;
use crate::config::ExperimentConfig;
use crate::error::{Result, TrainError};
use crate::observer::Observer;
use crate::weights::{initial_weights, seeded_init};

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportedRun {
    pub run: RunDir,
    /// What was loaded from which file, and what the files held besides weights.
    pub messages: Vec<String>,
    /// Training and validation images of the saved split, when the config's dataset is there.
    pub split: Option<(usize, usize)>,
}

/// The file that records an import's origin (and marks the run as imported, not trained):
/// [`RunDir::import_record`].
pub use clip_infer::run_dir::IMPORT_RECORD;

/// `import.json`: where the weights came from (the run's record of its origin).
#[derive(Serialize)]
struct ImportRecord<'a> {
    checkpoint: Option<&'a Path>,
    image_weights: Option<&'a Path>,
    text_weights: Option<&'a Path>,
    messages: &'a [String],
}

struct Messages(Vec<String>);

impl Observer for Messages {
    fn on_message(&mut self, msg: &str) {
        self.0.push(msg.to_string());
    }
}

/// Writes a run directory at `out` holding `config`'s model with the weights it names
/// (`model.checkpoint`, or `model.image_weights` / `model.text_weights` with
/// `model.pretrained`): `config.toml`, `model.json`, `model.safetensors`, `import.json`, and
/// `split.json` when the config's captions file exists (the split it configures, so that
/// `clip embed --split val` embeds the images the original run validated on).
pub fn import_run<B: Backend>(
    config: &ExperimentConfig,
    out: &Path,
    device: &B::Device,
) -> Result<ImportedRun> {
    let m = &config.model;
    let bad = |message: String| TrainError::Config { path: out.into(), message };
    if m.checkpoint.is_none()
        && !(m.pretrained && (m.image_weights.is_some() || m.text_weights.is_some()))
    {
        return Err(bad(
            "nothing to import: give a whole checkpoint (model.checkpoint) or tower weights".into(),
        ));
    }
    // A run directory is only ever made new: even an earlier import is not written over.
    clip_data::fs::claim_dir(
        out,
        "an imported run",
        |_| false,
        "Give --out a new or empty folder.",
    )?;
    let clip_config = config.clip_config().map_err(bad)?;
    // Weights first: a file that does not fit the architecture fails before anything is written.
    let mut log = Messages(Vec::new());
    let fresh = seeded_init::<B>(&clip_config, config.train.seed, device);
    let model = initial_weights(fresh, config, &clip_config, &mut log)?;
    if m.checkpoint.is_none() {
        log.0.push("the projection heads are newly initialized (only towers were given): train before relying on the embeddings".into());
    }

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("run");
    let staging = RunDir::new(parent.join(format!(".{name}.import-{}", std::process::id())));
    std::fs::create_dir(&staging.root).map_err(|e| TrainError::io(&staging.root, e))?;
    let result = (|| -> Result<Option<(usize, usize)>> {
        clip_data::fs::write_atomic(&staging.config(), config.to_toml().as_bytes())?;
        let card = ModelCard { clip: clip_config.clone(), data: config.data.clone() };
        clip_data::fs::write_atomic(
            &staging.model_json(),
            &serde_json::to_vec_pretty(&card).expect("card serializes"),
        )?;
        clip_model::import::export_clip(&model, &staging.exported_model())?;
        let split = if config.data.captions.exists() {
            config.data.ensure_synthetic()?;
            let dataset = CaptionDataset::load(&config.data.dataset_config()?)?;
            let split = SplitDataset::new(&dataset, &config.data.split_config())?.split;
            split.save(&staging.split())?;
            Some((split.train.len(), split.val.len()))
        } else {
            None
        };
        let record = ImportRecord {
            checkpoint: m.checkpoint.as_deref(),
            image_weights: m.image_weights.as_deref().filter(|_| m.pretrained),
            text_weights: m.text_weights.as_deref().filter(|_| m.pretrained),
            messages: &log.0,
        };
        let json = serde_json::to_vec_pretty(&record).expect("record serializes");
        clip_data::fs::write_atomic(&staging.import_record(), &json)?;
        Ok(split)
    })();
    let split = match result {
        Ok(split) => split,
        Err(e) => {
            // The staging directory is this call's own (created above, named by this process).
            let _ = std::fs::remove_dir_all(&staging.root);
            return Err(e);
        }
    };
    // An empty directory is replaced by the rename; anything else appeared meanwhile and stays.
    if out.is_dir() {
        let _ = std::fs::remove_dir(out);
    }
    if let Err(e) = std::fs::rename(&staging.root, out) {
        let _ = std::fs::remove_dir_all(&staging.root);
        return Err(TrainError::io(out, e));
    }
    if split.is_none() {
        log.0.push(format!(
            "no split.json: the config's captions file {} is not here (embed folders with --images)",
            config.data.captions.display()
        ));
    }
    Ok(ImportedRun { run: RunDir::new(PathBuf::from(out)), messages: log.0, split })
}
