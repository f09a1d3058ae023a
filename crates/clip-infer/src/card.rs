//! A trained model as inference sees it: `model.json` (architecture and preprocessing) and the
//! weights of a run directory ([`RunDir::weights`]), with an identity that indexes record.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use clip_data::{CaptionTokenizer, DataConfig, ImageTransform};
use clip_model::{ClipConfig, ClipModel};
use serde::{Deserialize, Serialize};

use crate::error::{InferError, Result};
use crate::run_dir::{RunDir, CHECKPOINTS, EXPORTED_MODEL, MODEL_CARD};

/// Everything needed to rebuild a model and its preprocessing; written by training as `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub clip: ClipConfig,
    pub data: DataConfig,
}

/// A model loaded from a run directory, with what it needs to embed images and captions.
pub struct LoadedModel<B: Backend> {
    pub model: ClipModel<B>,
    pub card: ModelCard,
    pub transform: ImageTransform,
    pub tokenizer: CaptionTokenizer,
    /// Identifies architecture + weights: indexes built by another model are refused.
    pub id: String,
    /// The identity indexes made before `id` hashed the files as written.
    pub legacy_id: Option<String>,
    pub run_dir: PathBuf,
    pub weights: PathBuf,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// `model.json` with its `clip` object kept as written.
#[derive(Deserialize)]
struct RawCard<'a> {
    #[serde(borrow)]
    clip: &'a serde_json::value::RawValue,
}

/// JSON text without the whitespace between tokens (strings kept as they are).
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// 64-bit FNV-1a, stable across platforms and Rust versions.
pub(crate) fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl<B: Backend> LoadedModel<B> {
    /// Whether embeddings recorded under `model_id` (an index's) were made by this model.
    pub fn made(&self, model_id: &str) -> bool {
        self.id == model_id || self.legacy_id.as_deref() == Some(model_id)
    }

    /// Loads the model of a run directory (`model.json` + its best weights).
    pub fn from_run(run: &Path, device: &B::Device) -> Result<Self> {
        let run_dir = RunDir::new(run);
        let card_path = run_dir.model_json();
        let bytes = std::fs::read(&card_path).map_err(|e| {
            InferError::unreadable(run, format!("not a run directory: cannot read {MODEL_CARD}"), e)
        })?;
        let card: ModelCard = serde_json::from_slice(&bytes)
            .map_err(|e| InferError::unreadable(&card_path, "not a model card", e))?;
        let weights = run_dir.weights().ok_or_else(|| InferError::Run {
            path: run.into(),
            message: format!("no weights ({EXPORTED_MODEL} or {CHECKPOINTS}/) in this run"),
        })?;
        let fresh = card.clip.init::<B>(device);
        let model = if weights.extension().is_some_and(|e| e == "safetensors") {
            clip_model::import::import_clip(fresh, &weights)?.0
        } else {
            let settings = fresh.settings;
            let mut m = fresh
                .load_file(
                    weights.with_extension(""),
                    &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
                    device,
                )
                .map_err(|e| InferError::unreadable(&weights, "cannot load the weights", e))?;
            m.settings = settings;
            m
        };
        let weight_bytes = std::fs::read(&weights).map_err(|e| InferError::io(&weights, e))?;
        // The files as written, not the card as this version re-serializes it: a newer `clip`
        // (a config field added) must not disown the indexes made with an older one.
        let id = format!("{:016x}", fnv1a(&weight_bytes, fnv1a(&bytes, FNV_OFFSET)));
        // Indexes made before that hashed the card's `clip` object, compact, as the version that
        // wrote `model.json` serialized it: that is the file's own object without whitespace.
        let legacy_id = serde_json::from_slice::<RawCard>(&bytes).ok().map(|raw| {
            format!(
                "{:016x}",
                fnv1a(&weight_bytes, fnv1a(minify(raw.clip.get()).as_bytes(), FNV_OFFSET))
            )
        });
        let tokenizer = card.data.tokenizer()?;
        Ok(Self {
            transform: card.data.image_transform(),
            model,
            card,
            tokenizer,
            id,
            legacy_id,
            run_dir: run.into(),
            weights,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minify_drops_whitespace_between_tokens_only() {
        let pretty = "{\n  \"a\": [1, 2],\n  \"b\": \"x y \\\" z\"\n}";
        assert_eq!(minify(pretty), "{\"a\":[1,2],\"b\":\"x y \\\" z\"}");
        let value =
            serde_json::json!({"clip": {"image": {"layers": [3, 4]}, "name": "a b"}, "data": 1});
        let card = serde_json::to_string_pretty(&value).unwrap();
        let raw: RawCard = serde_json::from_str(&card).unwrap();
        assert_eq!(minify(raw.clip.get()), serde_json::to_string(&value["clip"]).unwrap());
    }
}
