//! Weight import and export with the upstream key names.
//!
//! | file | keys | loads into |
//! |---|---|---|
//! | HF distilbert `model.safetensors` / `pytorch_model.bin` | `[distilbert.]embeddings.*`, `transformer.layer.N.*` | [`TextTransformer`] |
//! | HF BERT / MiniLM | `[bert.]embeddings.*`, `encoder.layer.N.attention.self.query`, ... | [`TextTransformer`] |
//! | timm / torchvision resnet state dict | `conv1`, `bn1`, `layerN.M.*`, `downsample.0/1` | [`ResNet`] |
//! | the seed notebook's Lightning `.ckpt` (`state_dict`) or [`export_clip`]'s safetensors | `image_encoder.model.*`, `image_encoder.projection.*`, `text_encoder.model.*`, `text_encoder.projection.*` | [`ClipModel`] |
//!
//! Names differ from ours in a few places only; each difference is one rule below, used in both
//! directions. Linear weights are transposed and LayerNorm `weight/bias` renamed `gamma/beta` by
//! burn-store's PyTorch adapter. Tensors stored in f16/bf16 are converted to f32. Keys the model
//! lacks are reported as unused; parameters the file lacks are errors unless allowed; a shape
//! mismatch is always an error, so random weights are never silently kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use burn_store::{
    ApplyError, BurnToPyTorchAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    SafetensorsStore, TensorSnapshot,
};
use regex::Regex;

use crate::clip::ClipModel;
use crate::resnet::ResNet;
use crate::text::{Pooling, TextTransformer, TextTransformerConfig};

/// Why weights could not be imported or exported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: cannot read weights: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: unsupported weight file (expected .safetensors, .bin, .pt, .pth or .ckpt)")]
    Extension { path: PathBuf },
    #[error("{path}: shape mismatch for {}", .mismatches.join("; "))]
    Shape { path: PathBuf, mismatches: Vec<String> },
    #[error("{path}: {} parameter(s) of the model are not in the file: {}", .missing.len(), .missing.join(", "))]
    Missing { path: PathBuf, missing: Vec<String> },
    #[error("{path}: cannot write weights: {message}")]
    Write { path: PathBuf, message: String },
    /// The file could not be read or parsed (the reader's own error is the source).
    #[error("{path}: cannot read weights: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    #[error("{path}: cannot write weights: {source}")]
    Unwritable {
        path: PathBuf,
        #[source]
        source: Cause,
    },
}

/// An underlying library's error, kept as the source of ours.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Parameters loaded from the file (our names).
    pub applied: Vec<String>,
    /// Parameters of the model the file lacks (kept as initialized; only when allowed).
    pub missing: Vec<String>,
    /// Tensors in the file the model has no place for (upstream names), e.g. a classifier.
    pub unused: Vec<String>,
    /// Known non-weights skipped on purpose (BatchNorm `num_batches_tracked`, `position_ids`).
    pub ignored: Vec<String>,
    /// What the file holds besides weights and was left unread: a Lightning checkpoint's
    /// `hyper_parameters`, `optimizer_states`, `loops`..., and the classes it names but that were
    /// never built (one line each).
    pub skipped: Vec<String>,
}

/// The text checkpoint's naming scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextNaming {
    DistilBert,
    Bert,
}

/// A renaming between upstream and our key names. `{n}` matches a layer index; a leading `^`
/// anchors the rule at the start of the key (after any prefix it is applied under). A rule whose
/// `ours` is just `^` strips an optional upstream prefix and is used on import only.
struct Rule {
    upstream: &'static str,
    ours: &'static str,
}

const DISTILBERT_RULES: &[Rule] = &[
    Rule { upstream: "^distilbert.", ours: "^" },
    Rule { upstream: "^embeddings.LayerNorm.", ours: "^embeddings.layer_norm." },
];

const BERT_RULES: &[Rule] = &[
    Rule { upstream: "^bert.", ours: "^" },
    Rule { upstream: "^embeddings.LayerNorm.", ours: "^embeddings.layer_norm." },
    Rule {
        upstream: "^encoder.layer.{n}.attention.self.query.",
        ours: "^transformer.layer.{n}.attention.q_lin.",
    },
    Rule {
        upstream: "^encoder.layer.{n}.attention.self.key.",
        ours: "^transformer.layer.{n}.attention.k_lin.",
    },
    Rule {
        upstream: "^encoder.layer.{n}.attention.self.value.",
        ours: "^transformer.layer.{n}.attention.v_lin.",
    },
    Rule {
        upstream: "^encoder.layer.{n}.attention.output.dense.",
        ours: "^transformer.layer.{n}.attention.out_lin.",
    },
    Rule {
        upstream: "^encoder.layer.{n}.attention.output.LayerNorm.",
        ours: "^transformer.layer.{n}.sa_layer_norm.",
    },
    Rule {
        upstream: "^encoder.layer.{n}.intermediate.dense.",
        ours: "^transformer.layer.{n}.ffn.lin1.",
    },
    Rule { upstream: "^encoder.layer.{n}.output.dense.", ours: "^transformer.layer.{n}.ffn.lin2." },
    Rule {
        upstream: "^encoder.layer.{n}.output.LayerNorm.",
        ours: "^transformer.layer.{n}.output_layer_norm.",
    },
];

const RESNET_RULES: &[Rule] = &[
    Rule { upstream: ".downsample.0.", ours: ".downsample.conv." },
    Rule { upstream: ".downsample.1.", ours: ".downsample.bn." },
];

/// Tensors that are state, not weights, in upstream files.
fn is_ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked") || key.ends_with("embeddings.position_ids")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Import,
    Export,
}

/// Compiles rules, scoped under `prefix` (e.g. `text_encoder.model.`), for one direction.
fn compile(rules: &[Rule], prefix: &str, dir: Direction) -> Vec<(Regex, String)> {
    rules
        .iter()
        // Stripping an optional upstream prefix has no way back: export writes the bare names.
        .filter(|r| !(dir == Direction::Export && r.ours == "^"))
        .map(|r| {
            let (from, to) = match dir {
                Direction::Import => (r.upstream, r.ours),
                Direction::Export => (r.ours, r.upstream),
            };
            let anchor = |s: &str| -> (bool, String) {
                match s.strip_prefix('^') {
                    Some(rest) => (true, rest.to_string()),
                    None => (false, s.to_string()),
                }
            };
            let (anchored, from) = anchor(from);
            let (_, to) = anchor(to);
            let body = regex::escape(&from).replace(r"\{n\}", r"(\d+)");
            let pattern =
                if anchored { format!("^{}{}", regex::escape(prefix), body) } else { body };
            let replacement = if anchored {
                format!("{prefix}{}", to.replace("{n}", "${1}"))
            } else {
                to.replace("{n}", "${1}")
            };
            (Regex::new(&pattern).expect("rules are valid regexes"), replacement)
        })
        .collect()
}

fn rename(key: &str, rules: &[(Regex, String)]) -> String {
    let mut k = key.to_string();
    for (re, to) in rules {
        k = re.replace(&k, to.as_str()).into_owned();
    }
    k
}

fn text_rules(naming: TextNaming) -> &'static [Rule] {
    match naming {
        TextNaming::DistilBert => DISTILBERT_RULES,
        TextNaming::Bert => BERT_RULES,
    }
}

/// Every tensor of a weight file keyed by its upstream name, and what the file holds besides.
struct WeightFile {
    tensors: BTreeMap<String, TensorSnapshot>,
    skipped: Vec<String>,
}

/// Reads a weight file. Torch files, zip-format and legacy, are read by [`crate::torch_file`]
/// (nothing in them is executed, every claimed size is checked against the bytes present; a
/// Lightning checkpoint's `state_dict` is taken, its other entries reported as skipped).
fn read_snapshots(path: &Path) -> Result<WeightFile, ImportError> {
    let err = |message: String| ImportError::Read { path: path.into(), message };
    let unreadable = |e: Cause| ImportError::Unreadable { path: path.into(), source: e };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => {
            let mut store = SafetensorsStore::from_file(path);
            let tensors = store.get_all_snapshots().cloned().map_err(|e| unreadable(e.into()))?;
            Ok(WeightFile { tensors, skipped: Vec::new() })
        }
        "bin" | "pt" | "pth" | "ckpt" => {
            let file = crate::torch_file::read_torch_file(path, Some("state_dict")).map_err(
                |e| match e {
                    crate::torch_file::TorchFileError::Format { message, .. } => err(message),
                    crate::torch_file::TorchFileError::Io { source, .. } => {
                        unreadable(source.into())
                    }
                },
            )?;
            Ok(WeightFile { tensors: file.tensors, skipped: file.skipped })
        }
        _ => Err(ImportError::Extension { path: path.into() }),
    }
}

/// Every tensor of a weight file by its upstream name, read as an import reads it but without a
/// model to load into: for tools that inspect a file, and for fuzzing the readers.
pub fn read_weight_tensors(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>, ImportError> {
    read_snapshots(path).map(|file| file.tensors)
}

/// A snapshot under a new name, converted to f32 when stored in another float type.
fn renamed(snapshot: &TensorSnapshot, name: &str) -> TensorSnapshot {
    let data_fn = snapshot.clone_data_fn();
    let float_half = matches!(snapshot.dtype, DType::F16 | DType::BF16 | DType::F64);
    let data_fn: Rc<dyn Fn() -> _> = if float_half {
        Rc::new(move || data_fn().map(|d| d.convert_dtype(DType::F32)))
    } else {
        data_fn
    };
    let dtype = if float_half { DType::F32 } else { snapshot.dtype };
    TensorSnapshot::from_closure(
        data_fn,
        dtype,
        snapshot.shape.clone(),
        name.split('.').map(String::from).collect(),
        vec![],
        ParamId::new(),
    )
}

/// Renames a file's tensors with `rules`, keeping only those under `keep_prefix` (which is then
/// stripped), and applies them to `module`.
fn apply<B: Backend, M: Module<B> + ModuleSnapshot<B>>(
    module: &mut M,
    path: &Path,
    file: &WeightFile,
    rules: &[(Regex, String)],
    keep_prefix: &str,
    allow_missing: bool,
    optional: &[&str],
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport { skipped: file.skipped.clone(), ..ImportReport::default() };
    let mut ours = Vec::new();
    let mut origin = BTreeMap::new();
    for (key, snap) in &file.tensors {
        let Some(rest) = key.strip_prefix(keep_prefix) else {
            continue;
        };
        if is_ignorable(rest) {
            report.ignored.push(key.clone());
            continue;
        }
        let name = rename(rest, rules);
        origin.insert(name.clone(), key.clone());
        ours.push(renamed(snap, &name));
    }
    let result = module.apply(ours, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    let mismatches: Vec<String> = result
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch { path: p, expected, found } => format!(
                "{} (file {:?}, model {:?})",
                origin.get(p).cloned().unwrap_or_else(|| p.clone()),
                found.as_slice(),
                expected.as_slice()
            ),
            other => format!("{other:?}"),
        })
        .collect();
    if !mismatches.is_empty() {
        return Err(ImportError::Shape { path: path.into(), mismatches });
    }
    // burn-store finds LayerNorm `weight`/`bias` under their burn names `gamma`/`beta` but still
    // lists the file's names as unused: those were used.
    let applied: std::collections::HashSet<&String> = result.applied.iter().collect();
    let used_as_alias = |u: &str| {
        let alias = |from: &str, to: &str| u.strip_suffix(from).map(|stem| format!("{stem}{to}"));
        [alias(".weight", ".gamma"), alias(".bias", ".beta")]
            .into_iter()
            .flatten()
            .any(|a| applied.contains(&a))
    };
    report.unused = result
        .unused
        .iter()
        .filter(|u| !used_as_alias(u))
        .map(|u| origin.get(u).cloned().unwrap_or_else(|| u.clone()))
        .collect();
    report.applied = result.applied;
    report.missing = result
        .missing
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !optional.contains(&p.as_str()))
        .collect();
    if !report.missing.is_empty() && !allow_missing {
        return Err(ImportError::Missing { path: path.into(), missing: report.missing });
    }
    Ok(report)
}

/// Reads an HF `config.json` (DistilBERT or BERT family) into a tower config and its naming.
/// Pooling defaults to `[CLS]`; set `pooling` for sentence-embedding models such as MiniLM.
pub fn hf_text_config(path: &Path) -> Result<(TextTransformerConfig, TextNaming), ImportError> {
    let err = |message: String| ImportError::Read { path: path.into(), message };
    let unreadable = |e: Cause| ImportError::Unreadable { path: path.into(), source: e };
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.into()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| unreadable(e.into()))?;
    let num = |key: &str| v.get(key).and_then(|x| x.as_f64());
    let int = |key: &str| {
        num(key)
            .map(|x| x as usize)
            .ok_or_else(|| err(format!("missing or non-numeric key `{key}`")))
    };
    let model_type = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
    let act = v
        .get("hidden_act")
        .or_else(|| v.get("activation"))
        .and_then(|a| a.as_str())
        .unwrap_or("gelu");
    if act != "gelu" {
        return Err(err(format!("activation {act:?} is not supported (only exact \"gelu\")")));
    }
    let config = if model_type == "distilbert" {
        (
            TextTransformerConfig {
                vocab_size: int("vocab_size")?,
                hidden_size: int("dim")?,
                num_layers: int("n_layers")?,
                num_heads: int("n_heads")?,
                intermediate_size: int("hidden_dim")?,
                max_position_embeddings: int("max_position_embeddings")?,
                type_vocab_size: 0,
                layer_norm_eps: 1e-12,
                dropout: num("dropout").unwrap_or(0.1),
                attention_dropout: num("attention_dropout").unwrap_or(0.1),
                attention_output_dropout: false,
                pooling: Pooling::Cls,
            },
            TextNaming::DistilBert,
        )
    } else if ["bert", "roberta"].contains(&model_type) || v.get("num_hidden_layers").is_some() {
        (
            TextTransformerConfig {
                vocab_size: int("vocab_size")?,
                hidden_size: int("hidden_size")?,
                num_layers: int("num_hidden_layers")?,
                num_heads: int("num_attention_heads")?,
                intermediate_size: int("intermediate_size")?,
                max_position_embeddings: int("max_position_embeddings")?,
                type_vocab_size: num("type_vocab_size").map(|x| x as usize).unwrap_or(2),
                layer_norm_eps: num("layer_norm_eps").unwrap_or(1e-12),
                dropout: num("hidden_dropout_prob").unwrap_or(0.1),
                attention_dropout: num("attention_probs_dropout_prob").unwrap_or(0.1),
                attention_output_dropout: true,
                pooling: Pooling::Cls,
            },
            TextNaming::Bert,
        )
    } else {
        return Err(err(format!(
            "model_type {model_type:?} is neither DistilBERT nor BERT-family"
        )));
    };
    Ok(config)
}

/// Loads an HF DistilBERT or BERT/MiniLM checkpoint into a text tower.
pub fn import_text<B: Backend>(
    mut model: TextTransformer<B>,
    path: &Path,
    naming: TextNaming,
) -> Result<(TextTransformer<B>, ImportReport), ImportError> {
    let file = read_snapshots(path)?;
    let rules = compile(text_rules(naming), "", Direction::Import);
    let report = apply(&mut model, path, &file, &rules, "", false, &[])?;
    Ok((model, report))
}

/// Loads a timm or torchvision ResNet state dict into an image tower (a classifier is unused).
pub fn import_resnet<B: Backend>(
    mut model: ResNet<B>,
    path: &Path,
) -> Result<(ResNet<B>, ImportReport), ImportError> {
    let file = read_snapshots(path)?;
    let rules = compile(RESNET_RULES, "", Direction::Import);
    let report = apply(&mut model, path, &file, &rules, "", false, &[])?;
    Ok((model, report))
}

/// Key rules for a whole CLIP model in the seed's layout.
fn clip_rules(naming: TextNaming, dir: Direction) -> Vec<(Regex, String)> {
    let mut rules = compile(RESNET_RULES, "image_encoder.model.", dir);
    rules.extend(compile(text_rules(naming), "text_encoder.model.", dir));
    rules
}

/// The text naming a model's tower exports with: BERT when it has token types.
fn naming_of<B: Backend>(model: &ClipModel<B>) -> TextNaming {
    if model.text_encoder.model.embeddings.token_type_embeddings.is_some() {
        TextNaming::Bert
    } else {
        TextNaming::DistilBert
    }
}

/// Loads a whole CLIP model: the seed notebook's Lightning checkpoint, or a file written by
/// [`export_clip`]. A missing `logit_scale` (or `logit_bias`) keeps the configured value.
pub fn import_clip<B: Backend>(
    mut model: ClipModel<B>,
    path: &Path,
) -> Result<(ClipModel<B>, ImportReport), ImportError> {
    let mut file = read_snapshots(path)?;
    // A LightningModule that wraps the model as `self.model` adds one more level.
    if !file.tensors.is_empty() && file.tensors.keys().all(|k| k.starts_with("model.")) {
        file.tensors =
            file.tensors.into_iter().map(|(k, v)| (k["model.".len()..].to_string(), v)).collect();
    }
    let rules = clip_rules(naming_of(&model), Direction::Import);
    let report = apply(&mut model, path, &file, &rules, "", false, &["logit_scale", "logit_bias"])?;
    Ok((model, report))
}

/// Writes a CLIP model as safetensors with the seed's / upstream key names (timm ResNet,
/// HF DistilBERT or BERT, the seed's heads, plus `logit_scale` and the sigmoid loss's
/// `logit_bias`), so that PyTorch code can
/// `load_state_dict` it. Written atomically.
pub fn export_clip<B: Backend>(model: &ClipModel<B>, path: &Path) -> Result<(), ImportError> {
    let err = |message: String| ImportError::Write { path: path.into(), message };
    let rules = clip_rules(naming_of(model), Direction::Export);
    let snapshots = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true);
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for snap in &snapshots {
        let name = rename(&snap.full_path(), &rules);
        let data =
            snap.to_data().map_err(|e| err(format!("{name}: {e:?}")))?.convert_dtype(DType::F32);
        let shape = data.shape.to_vec();
        if name.ends_with(".running_var") {
            // PyTorch's BatchNorm2d also has this buffer; strict loading expects it.
            let counter = name.trim_end_matches("running_var").to_string() + "num_batches_tracked";
            tensors.push((counter, 0i64.to_le_bytes().to_vec(), vec![], safetensors::Dtype::I64));
        }
        tensors.push((name, data.into_bytes().to_vec(), shape, safetensors::Dtype::F32));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, bytes, shape, dt)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| err(format!("{n}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    // One entry only: safetensors writes its metadata map in hash order, so with two the same
    // weights would give different bytes from run to run (and a model's identity is a hash of
    // the file). `format = pt` is what PyTorch-side loaders look for.
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| ImportError::Unwritable { path: path.into(), source: e.into() })?;
    write_atomically(path, &bytes)
}

/// Writes a file as a whole or not at all: a temporary file beside it, renamed into place.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImportError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ImportError::Unwritable { path: path.into(), source: e.into() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_tensors_read_without_a_model() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let tensors = read_weight_tensors(&fixtures.join("resnet_basic.pth")).unwrap();
        let conv1 = &tensors["conv1.weight"];
        assert_eq!(conv1.to_data().unwrap().shape.len(), 4);
        let err = read_weight_tensors(&fixtures.join("missing.safetensors")).unwrap_err();
        assert!(err.to_string().contains("missing.safetensors"), "{err}");
    }

    #[test]
    fn bert_rules_round_trip() {
        let import = compile(BERT_RULES, "", Direction::Import);
        let export = compile(BERT_RULES, "", Direction::Export);
        for key in [
            "bert.encoder.layer.11.attention.self.query.weight",
            "encoder.layer.0.attention.output.LayerNorm.bias",
            "encoder.layer.3.output.dense.weight",
            "embeddings.LayerNorm.weight",
            "embeddings.word_embeddings.weight",
        ] {
            let ours = rename(key, &import);
            assert!(!ours.contains("encoder.") && !ours.contains("LayerNorm"), "{key} -> {ours}");
            assert_eq!(rename(&ours, &export), key.trim_start_matches("bert."));
        }
        assert_eq!(
            rename("encoder.layer.3.output.dense.weight", &import),
            "transformer.layer.3.ffn.lin2.weight"
        );
        assert_eq!(
            rename("encoder.layer.3.attention.output.dense.weight", &import),
            "transformer.layer.3.attention.out_lin.weight"
        );
    }

    #[test]
    fn scoped_rules_touch_only_their_prefix() {
        let rules = clip_rules(TextNaming::DistilBert, Direction::Import);
        assert_eq!(
            rename("image_encoder.model.layer2.0.downsample.1.running_var", &rules),
            "image_encoder.model.layer2.0.downsample.bn.running_var"
        );
        assert_eq!(
            rename("text_encoder.model.embeddings.LayerNorm.weight", &rules),
            "text_encoder.model.embeddings.layer_norm.weight"
        );
        assert_eq!(
            rename("image_encoder.projection.layer_norm.weight", &rules),
            "image_encoder.projection.layer_norm.weight"
        );
    }
}
