//! A run's model as an ONNX bundle, for serving without Rust or Burn: the image and the text
//! encoder (`clip_model::onnx`), the tokenizer as a Hugging Face `tokenizer.json`, and the model
//! card. Both ONNX files carry the preprocessing a server must reproduce in their
//! `metadata_props` ([`OnnxMetadata`]).
//!
//! ```text
//! <out>/
//!   image_encoder.onnx   pixel_values [batch, 3, size, size] float32 → image_embeds [batch, dim]
//!   text_encoder.onnx    input_ids, attention_mask [batch, sequence] int64 → text_embeds
//!   tokenizer.json       the tokenizer (tokenizers / transformers.js)
//!   model.json           the run's model card, as the run wrote it
//! ```

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use clip_data::fs::write_atomic;
use clip_data::DataConfig;
use clip_model::onnx::{image_encoder_onnx, text_encoder_onnx, write_onnx};
use serde::Serialize;

use crate::card::LoadedModel;
use crate::error::{InferError, Result};
use crate::run_dir::{RunDir, MODEL_CARD};

/// The preprocessing and model facts stored in both ONNX files' `metadata_props`, each under its
/// field's name, as text: numbers as written, `mean` and `std` as JSON arrays, `resize` and
/// `resize_filter` by their config names (`squash`, `bilinear`...), `model_card` the run's
/// `model.json` as written.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxMetadata {
    /// The square side images are resized to.
    pub image_size: u32,
    /// Per-channel mean and standard deviation, subtracted from and divided into RGB in [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// How a picture of any aspect ratio becomes a square, and the resampling filter.
    pub resize: String,
    pub resize_filter: String,
    /// The most tokens a caption keeps.
    pub text_max_length: usize,
    /// Whether the encoders' outputs are L2-normalized.
    pub normalized_embeddings: bool,
    /// The model card (`model.json`) as the run wrote it.
    pub model_card: String,
}

/// The keys of [`OnnxMetadata`], in the order the files list them.
pub const METADATA_KEYS: [&str; 8] = [
    "image_size",
    "mean",
    "std",
    "resize",
    "resize_filter",
    "text_max_length",
    "normalized_embeddings",
    "model_card",
];

/// A unit enum's config name (`squash`), as serde writes it.
fn config_name<T: Serialize>(value: T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

impl OnnxMetadata {
    /// The metadata of a model with preprocessing `data`, whose card reads `model_card`.
    pub fn new(data: &DataConfig, normalized_embeddings: bool, model_card: String) -> Self {
        Self {
            image_size: data.image_size,
            mean: data.mean,
            std: data.std,
            resize: config_name(data.resize),
            resize_filter: config_name(data.resize_filter),
            text_max_length: data.text_max_length,
            normalized_embeddings,
            model_card,
        }
    }

    /// The `metadata_props` entries, in [`METADATA_KEYS`] order.
    pub fn to_props(&self) -> Vec<(String, String)> {
        let array = |v: &[f32; 3]| serde_json::to_string(v).expect("floats serialize");
        let values = [
            self.image_size.to_string(),
            array(&self.mean),
            array(&self.std),
            self.resize.clone(),
            self.resize_filter.clone(),
            self.text_max_length.to_string(),
            self.normalized_embeddings.to_string(),
            self.model_card.clone(),
        ];
        METADATA_KEYS.iter().map(|k| k.to_string()).zip(values).collect()
    }

    /// Reads the entries [`to_props`](Self::to_props) writes (others are ignored); a missing or
    /// malformed one is an error naming it.
    pub fn from_props(props: &[(String, String)]) -> Result<Self> {
        let get = |key: &str| -> Result<&str> {
            props
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| InferError::Input(format!("ONNX metadata: no `{key}`")))
        };
        fn parse<T: serde::de::DeserializeOwned>(key: &str, text: &str) -> Result<T> {
            serde_json::from_str(text)
                .map_err(|e| InferError::Input(format!("ONNX metadata: `{key}` = {text:?}: {e}")))
        }
        Ok(Self {
            image_size: parse("image_size", get("image_size")?)?,
            mean: parse("mean", get("mean")?)?,
            std: parse("std", get("std")?)?,
            resize: get("resize")?.to_string(),
            resize_filter: get("resize_filter")?.to_string(),
            text_max_length: parse("text_max_length", get("text_max_length")?)?,
            normalized_embeddings: parse("normalized_embeddings", get("normalized_embeddings")?)?,
            model_card: get("model_card")?.to_string(),
        })
    }
}

/// The files of an export folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportDir {
    pub root: PathBuf,
}

impl ExportDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn image_encoder(&self) -> PathBuf {
        self.root.join("image_encoder.onnx")
    }
    pub fn text_encoder(&self) -> PathBuf {
        self.root.join("text_encoder.onnx")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }
    pub fn model_json(&self) -> PathBuf {
        self.root.join(MODEL_CARD)
    }

    /// Whether `dir` holds an earlier export: its `image_encoder.onnx` names clip as its
    /// producer (the ModelProto's field 2, `producer_name`, which the encoder writes within its
    /// first bytes).
    pub fn is_export_dir(dir: &Path) -> bool {
        const PRODUCER: &[u8] = b"\x12\x09clip-burn";
        let head = clip_data::fs::read_head(&Self::new(dir).image_encoder(), 64);
        head.windows(PRODUCER.len()).any(|w| w == PRODUCER)
    }

    /// Whether an export may be written into `dir`: missing, empty, or an earlier export (its
    /// files are then replaced atomically); any other folder is an error naming it.
    pub fn claim(dir: &Path) -> Result<()> {
        clip_data::fs::claim_dir(
            dir,
            "an ONNX export",
            Self::is_export_dir,
            "Give --out a new or empty folder (or the folder of an earlier `clip export`, to replace it).",
        )?;
        Ok(())
    }
}

/// What [`export_onnx`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxExport {
    pub dir: ExportDir,
    pub metadata: OnnxMetadata,
}

/// Writes `model`'s ONNX bundle into `out` (created if needed; see [`ExportDir::claim`] for
/// which folders may be written into), each file atomically.
pub fn export_onnx<B: Backend>(model: &LoadedModel<B>, out: &Path) -> Result<OnnxExport> {
    std::fs::create_dir_all(out).map_err(|e| InferError::io(out, e))?;
    // The card as the run wrote it (its bytes are part of the model's identity).
    let card_path = RunDir::new(&model.run_dir).model_json();
    let card = std::fs::read_to_string(&card_path).map_err(|e| InferError::io(&card_path, e))?;
    // The preprocessing a server must reproduce, next to the weights that expect it.
    let metadata =
        OnnxMetadata::new(&model.card.data, model.card.clip.normalize_embeddings, card.clone());
    let props = metadata.to_props();
    let dir = ExportDir::new(out);
    write_onnx(&image_encoder_onnx(&model.model, &props), &dir.image_encoder())?;
    write_onnx(&text_encoder_onnx(&model.model, &model.card.clip, &props), &dir.text_encoder())?;
    write_atomic(&dir.tokenizer(), model.tokenizer.to_json()?.as_bytes())?;
    write_atomic(&dir.model_json(), card.as_bytes())?;
    Ok(OnnxExport { dir, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use clip_model::onnx_proto::ModelProto;
    use clip_model::{ClipConfig, ResNetConfig, TextTransformerConfig};
    use prost::Message;

    fn data() -> DataConfig {
        serde_json::from_value(serde_json::json!({
            "captions": "c.csv", "images": "img", "image_size": 32, "resize": "squash",
            "mean": [0.485, 0.456, 0.406], "std": [0.25, 0.5, 0.125], "text_max_length": 20,
        }))
        .unwrap()
    }

    #[test]
    fn metadata_round_trips_through_the_props() {
        let m = OnnxMetadata::new(&data(), true, "{\"clip\": {}}".into());
        assert_eq!((m.resize.as_str(), m.image_size), ("squash", 32));
        let props = m.to_props();
        let keys: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, METADATA_KEYS);
        assert_eq!(props[1].1, "[0.485,0.456,0.406]");
        assert_eq!(props[6].1, "true");
        assert_eq!(OnnxMetadata::from_props(&props).unwrap(), m);
        let err = OnnxMetadata::from_props(&props[..3]).unwrap_err().to_string();
        assert!(err.contains("resize"), "{err}");
        let mut bad = props.clone();
        bad[0].1 = "big".into();
        assert!(OnnxMetadata::from_props(&bad).unwrap_err().to_string().contains("image_size"));
    }

    #[test]
    fn the_bundle_holds_both_encoders_with_the_metadata_the_tokenizer_and_the_card() {
        let image = ResNetConfig::tiny(4);
        let text =
            TextTransformerConfig { max_position_embeddings: 24, ..TextTransformerConfig::tiny() };
        let clip = ClipConfig { projection_dim: 4, ..ClipConfig::new(image, text) };
        let root = tempfile::tempdir().unwrap();
        let run = RunDir::new(root.path().join("run"));
        std::fs::create_dir_all(&run.root).unwrap();
        let card = crate::ModelCard { clip: clip.clone(), data: data() };
        let card_text = serde_json::to_string_pretty(&card).unwrap();
        std::fs::write(run.model_json(), &card_text).unwrap();
        let device = Default::default();
        clip_model::import::export_clip(&clip.init::<Flex>(&device), &run.exported_model())
            .unwrap();
        let loaded = LoadedModel::<Flex>::from_run(&run.root, &device).unwrap();

        let out = root.path().join("export");
        ExportDir::claim(&out).unwrap();
        let export = export_onnx(&loaded, &out).unwrap();
        assert_eq!(export.metadata.model_card, card_text);
        let dir = &export.dir;
        for path in [dir.image_encoder(), dir.text_encoder()] {
            let model = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
            let props: Vec<(String, String)> =
                model.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
            assert_eq!(OnnxMetadata::from_props(&props).unwrap(), export.metadata);
        }
        assert_eq!(std::fs::read_to_string(dir.model_json()).unwrap(), card_text);
        assert!(std::fs::read_to_string(dir.tokenizer()).unwrap().contains("WordPiece"));
        // An earlier export may be replaced; a folder of something else may not.
        assert!(ExportDir::is_export_dir(&out));
        ExportDir::claim(&out).unwrap();
        assert!(ExportDir::claim(&run.root).unwrap_err().to_string().contains("new or empty"));
    }
}
