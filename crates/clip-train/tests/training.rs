//! Training on Flex with a tiny model on generated shapes: the mixed-precision modes train with
//! f32 master weights, fp16 loss scaling skips overflowing steps, bad configs fail early.

use std::path::PathBuf;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Int, Tensor};
use clip_train::checkpoint::load_model;
use clip_train::optim::GroupGrads;
use clip_train::step::{forward_backward, micro_batch_ranges, StepInputs};
use clip_train::{train, ExperimentConfig, RunDir, Silent};

mod common;

use common::{config, steps, B};

/// Collects the dtypes of all float parameters.
struct Dtypes(Vec<DType>);
impl ModuleVisitor<B> for Dtypes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().dtype());
    }
}

#[test]
fn mixed_precision_trains_with_f32_master_weights() {
    let _serial = common::serial();
    for precision in ["bf16-mixed", "fp16-mixed"] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            dir.path(),
            120,
            &[&format!("train.precision=\"{precision}\""), "train.epochs=3"],
        );
        let run = RunDir::new(dir.path().join("run"));
        let summary = common::train_new(&c, &run).unwrap();
        assert!(summary.completed, "{precision}");
        let s = steps(&run);
        let (first, end) = common::first_and_last_losses(&s);
        assert!(end < first * 0.85, "{precision}: loss {first} -> {end}");
        let model = load_model(
            c.clip_config().unwrap().init::<B>(&Default::default()),
            &run.latest().unwrap(),
            &Default::default(),
        )
        .unwrap();
        let mut dtypes = Dtypes(vec![]);
        model.visit(&mut dtypes);
        assert!(
            !dtypes.0.is_empty() && dtypes.0.iter().all(|d| *d == DType::F32),
            "{precision}: {:?}",
            dtypes.0
        );
        if precision == "fp16-mixed" {
            assert!(s.iter().all(|m| m.loss_scale.is_some()));
        }
    }
}

#[test]
fn fp16_overflowing_steps_are_skipped_and_counted() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    // A loss scale of 2^126 overflows f32 at once: the first steps' gradients are infinite.
    let c = config(
        dir.path(),
        60,
        &["train.precision=\"fp16-mixed\"", "train.loss_scale=8.5e37", "train.max_steps=4"],
    );
    let run = RunDir::new(dir.path().join("run"));
    let before = c.clip_config().unwrap();
    let summary = common::train_new(&c, &run).unwrap();
    let s = steps(&run);
    assert!(summary.skipped_steps >= 1, "{summary:?}");
    assert_eq!(s[0].skipped_steps, 1);
    assert!(
        (s[0].loss_scale.unwrap() - 8.5e37 / 2.0).abs() < 1e30,
        "halved: {:?}",
        s[0].loss_scale
    );
    assert!(s.iter().all(|m| m.loss.is_finite()));
    let _ = before;
}

#[test]
fn bad_configs_fail_before_training_with_the_key_named() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 20, &[]);
    let path: PathBuf = dir.path().join("exp.toml");
    let err =
        ExperimentConfig::load(&path, &["train.optimizer=\"sgd\"".into()]).unwrap_err().to_string();
    assert!(err.contains("sgd") && err.contains("exp.toml"), "{err}");
    let err = ExperimentConfig::load(&path, &["model.image.layers=[1,1]".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("layers"), "{err}");
    let err = ExperimentConfig::load(&path, &["eval.templates=\"prompts.txt\"".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("eval.templates needs eval.labels"), "{err}");
    let err = ExperimentConfig::load(&path, &["checkpoint.best_by=\"zero_shot\"".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkpoint.best_by") && err.contains("eval.templates"), "{err}");
    for k in ["0", "33"] {
        let err = ExperimentConfig::load(&path, &[format!("train.micro_batches={k}")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.micro_batches") && err.contains("exp.toml"), "{err}");
    }
    // A missing dataset is named at the start, not after building a model.
    let mut missing = c.clone();
    missing.data.synthetic = None;
    missing.data.captions = dir.path().join("nowhere/results.csv");
    missing.data.images = dir.path().join("nowhere/images");
    let err = common::train_new(&missing, &RunDir::new(dir.path().join("r"))).unwrap_err();
    assert!(err.to_string().contains("nowhere/images"), "{err}");
    assert!(!dir.path().join("r/checkpoints").exists());
}

/// Float parameters of a module, flattened in visiting order.
struct Values(Vec<f32>);
impl ModuleVisitor<B> for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.extend(param.val().into_data().convert::<f32>().to_vec::<f32>().unwrap());
    }
}

#[test]
fn a_frozen_text_tower_is_cached_and_stays_put_while_the_rest_learns() {
    let _serial = common::serial();
    // Text dropout off, so the cached (eval-mode) features equal the uncached ones.
    let common = [
        "model.text_trainable=false",
        "model.text.dropout=0.0",
        "data.caption_sampling=\"one-per-image\"",
        "train.epochs=3",
        "checkpoint.keep_last=3",
    ];
    let run_with = |cache: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut o: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        o.push(format!("train.cache_frozen_text={cache}"));
        let o: Vec<&str> = o.iter().map(|s| s.as_str()).collect();
        let c = config(dir.path(), 120, &o);
        let run = RunDir::new(dir.path().join("run"));
        let summary = common::train_new(&c, &run).unwrap();
        (dir, c, run, summary)
    };
    let (_d1, c, run, summary) = run_with(true);
    // One caption per image: 96 training images in batches of 32 → 3 steps per epoch.
    assert_eq!(summary.steps, 9);
    let s = steps(&run);
    assert!(s[s.len() - 1].loss < s[0].loss, "{} -> {}", s[0].loss, s[s.len() - 1].loss);

    // The text tower is identical in every checkpoint; the image tower is not.
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run.checkpoints())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.join("model.mpk").is_file()
                && p.file_name().unwrap().to_string_lossy().starts_with("step-")
        })
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 2, "{dirs:?}");
    let load = |d: &PathBuf| {
        load_model(c.clip_config().unwrap().init::<B>(&Default::default()), d, &Default::default())
            .unwrap()
    };
    let (a, b) = (load(&dirs[0]), load(&dirs[dirs.len() - 1]));
    let values = |m: &dyn Fn(&mut Values)| {
        let mut v = Values(vec![]);
        m(&mut v);
        v.0
    };
    assert!(
        values(&|v| a.text_encoder.model.visit(v)) == values(&|v| b.text_encoder.model.visit(v)),
        "text tower changed"
    );
    assert!(
        values(&|v| a.image_encoder.model.visit(v)) != values(&|v| b.image_encoder.model.visit(v)),
        "image tower did not train"
    );

    // Without the cache, the same run gives the same losses.
    let (_d2, _, run2, _) = run_with(false);
    for (x, y) in s.iter().zip(steps(&run2)) {
        assert!(
            (x.loss - y.loss).abs() < 1e-3 * x.loss.abs().max(1.0),
            "step {}: {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
    }
}

#[test]
fn labelled_validation_reports_zero_shot_accuracy_and_class_recall() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prompts.txt"), "a picture of a {}\n# a comment\na {} shape\n")
        .unwrap();
    let c = config(
        dir.path(),
        100,
        &[
            "train.epochs=3",
            "eval.labels=\"data/labels.csv\"",
            "eval.label_column=\"shape\"",
            "eval.templates=\"prompts.txt\"",
            "checkpoint.best_by=\"zero_shot\"",
        ],
    );
    let run = RunDir::new(dir.path().join("run"));
    let summary = common::train_new(&c, &run).unwrap();
    let epochs: Vec<clip_train::metrics::EpochMetrics> =
        clip_train::metrics::read_jsonl(&run.metrics().join("epochs.jsonl"));
    assert_eq!(epochs.len(), 3);
    // The best model is the first epoch with the highest zero-shot accuracy.
    let top = epochs.iter().map(|m| m.val.zero_shot_top1.unwrap()).fold(f64::MIN, f64::max);
    let best = epochs.iter().find(|m| m.val.zero_shot_top1 == Some(top)).unwrap();
    assert_eq!((summary.best_step, summary.best_score), (Some(best.step), Some(top)), "{epochs:?}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.best().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"].as_u64(), Some(best.step as u64));
    for m in &epochs {
        let z = m.val.zero_shot_top1.expect("zero-shot accuracy each epoch");
        assert!((0.0..=1.0).contains(&z), "{z}");
        let class = m.val.label_retrieval.expect("class-level recall");
        // Any same-shape image counts, so class-level recall is at least the instance-level one.
        assert!(
            class.t2i_r1 >= m.val.retrieval.t2i_r1 && class.i2t_r5 >= m.val.retrieval.i2t_r5,
            "{class:?} vs {:?}",
            m.val.retrieval
        );
    }
    // A missing labels file, or a label column missing from it, is named before training.
    let bad = config(dir.path(), 100, &["eval.labels=\"data/no-labels.csv\""]);
    let err =
        common::train_new(&bad, &RunDir::new(dir.path().join("bad0"))).unwrap_err().to_string();
    assert!(err.contains("no-labels.csv"), "{err}");
    assert!(!dir.path().join("bad0/checkpoints").exists());
    let bad = config(
        dir.path(),
        100,
        &["eval.labels=\"data/labels.csv\"", "eval.label_column=\"flavour\""],
    );
    let err =
        common::train_new(&bad, &RunDir::new(dir.path().join("bad"))).unwrap_err().to_string();
    assert!(err.contains("flavour") && err.contains("labels.csv"), "{err}");
}

/// Compares each float parameter's gradient in two gradient sets.
struct SameGrads<'a> {
    a: &'a GroupGrads,
    b: &'a GroupGrads,
    compared: usize,
    largest: f32,
}
impl ModuleVisitor<B> for SameGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let (a, b) = (self.a.get::<B, D>(param.id), self.b.get::<B, D>(param.id));
        assert_eq!(a.is_some(), b.is_some(), "a gradient only one side has: {:?}", param.id);
        if let (Some(a), Some(b)) = (a, b) {
            let (a, b) =
                (a.into_data().to_vec::<f32>().unwrap(), b.into_data().to_vec::<f32>().unwrap());
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 2e-4 * scale,
                    "{:?}: {x} vs {y} (largest {scale})",
                    param.id
                );
            }
            self.largest = self.largest.max(scale);
            self.compared += 1;
        }
    }
}

#[test]
fn micro_batches_give_the_whole_batch_gradient_and_count_each_batch_once_in_batch_norm() {
    let _serial = common::serial();
    // Dropout on in the heads and the text tower: both passes must draw the same masks.
    micro_batch_gradients_match(&["model.dropout=0.2"]);
    // The sigmoid loss: its learned bias, like the temperature, gets its gradient once.
    micro_batch_gradients_match(&[
        "model.dropout=0.2",
        "model.loss=\"sigmoid\"",
        "model.temperature=0.1",
    ]);
}

fn micro_batch_gradients_match(overrides: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 20, overrides);
    let device = Default::default();
    let clip = c.clip_config().unwrap();
    B::seed(&device, 3);
    let reference = clip.init::<B>(&device);
    clip_train::step::materialize(&reference);
    let model = clip.init::<B>(&device).load_record(reference.clone().into_record());

    let n = 7;
    let images = Tensor::<B, 4>::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let input_ids =
        Tensor::<B, 2, Int>::random([n, 9], Distribution::Uniform(1.0, 2000.0), &device);
    let attention_mask = Tensor::<B, 2, Int>::ones([n, 9], &device);
    let seed = |j: usize| B::seed(&Default::default(), 1000 + j as u64);

    // The reference: one graph over the micro-batches' embeddings, one backward pass.
    let ranges = micro_batch_ranges(n, 3);
    let (mut im, mut tx) = (vec![], vec![]);
    for (j, r) in ranges.iter().enumerate() {
        seed(j);
        im.push(reference.encode_image(images.clone().slice(r.clone())));
        tx.push(reference.encode_text(
            input_ids.clone().slice(r.clone()),
            attention_mask.clone().slice(r.clone()),
        ));
    }
    let out = reference.contrast(Tensor::cat(im, 0), Tensor::cat(tx, 0));
    let want_loss: f64 = out.loss.clone().into_scalar().into();
    let want = GroupGrads::split(&reference, out.loss.backward());

    let inputs = StepInputs::tokens(images, input_ids, attention_mask);
    let got = forward_backward(&model, &inputs, 3, 1.0, &mut |j| seed(j));
    assert!((got.loss - want_loss).abs() < 1e-5 * want_loss.abs(), "{} vs {want_loss}", got.loss);
    let mut same = SameGrads { a: &want, b: &got.grads, compared: 0, largest: 0.0 };
    reference.visit(&mut same);
    assert!(
        same.compared > 20 && same.largest > 1e-3,
        "{} gradients compared, largest {}",
        same.compared,
        same.largest
    );
    if let Some(bias) = &reference.logit_bias {
        let (a, b) = (want.get::<B, 1>(bias.id).unwrap(), got.grads.get::<B, 1>(bias.id).unwrap());
        let (a, b): (f32, f32) = (a.into_scalar(), b.into_scalar());
        assert!(
            a.abs() > 1e-4 && (a - b).abs() <= 1e-4 * a.abs(),
            "logit bias gradient {a} vs {b}"
        );
    }

    // Batch-norm running statistics (visited with the parameters) moved once per micro-batch, as
    // in the reference, not twice.
    let (mut a, mut b) = (Values(vec![]), Values(vec![]));
    reference.visit(&mut a);
    model.visit(&mut b);
    for (x, y) in a.0.iter().zip(&b.0) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn training_in_micro_batches_learns() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 120, &["train.micro_batches=4", "train.epochs=3"]);
    let run = RunDir::new(dir.path().join("run"));
    let summary = common::train_new(&c, &run).unwrap();
    assert!(summary.completed);
    let s = steps(&run);
    let (first, end) = common::first_and_last_losses(&s);
    assert!(end < first * 0.85, "loss {first} -> {end}");

    // With a frozen, cached text tower (features instead of tokens) and fp16 loss scaling.
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        60,
        &[
            "train.micro_batches=3",
            "model.text_trainable=false",
            "train.precision=\"fp16-mixed\"",
            "train.max_steps=3",
        ],
    );
    let run = RunDir::new(dir.path().join("run"));
    let summary = common::train_new(&c, &run).unwrap();
    assert!(summary.completed && summary.steps == 3, "{summary:?}");
    assert!(steps(&run).iter().all(|m| m.loss.is_finite() && m.loss_scale.is_some()));
}

#[test]
fn the_sigmoid_loss_learns_its_bias_and_the_task() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        120,
        &[
            "model.loss=\"siglip\"",
            "model.temperature=0.1",
            "model.logit_bias=-5.0",
            "train.epochs=8",
        ],
    );
    let run = RunDir::new(dir.path().join("run"));
    let summary = common::train_new(&c, &run).unwrap();
    assert!(summary.completed);
    let s = steps(&run);
    let (first, end) = common::first_and_last_losses(&s);
    assert!(end < first * 0.8, "loss {first} -> {end}");
    // 24 validation images: text→image recall@10 by chance is 10/24, the mean rank 12.5.
    let r = &summary.last_epoch.as_ref().unwrap().val.retrieval;
    assert!(r.t2i_r10 > 0.6 && r.t2i_mean_rank < 9.5, "{r:?}");
    // The bias moved from its start, and the exported model carries it.
    let model = load_model(
        c.clip_config().unwrap().init::<B>(&Default::default()),
        &run.best(),
        &Default::default(),
    )
    .unwrap();
    let bias: f32 = model.bias().unwrap().into_scalar();
    assert!((bias + 5.0).abs() > 1e-3, "bias {bias}");
    let (imported, report) = clip_model::import::import_clip(
        c.clip_config().unwrap().init::<B>(&Default::default()),
        &run.exported_model(),
    )
    .unwrap();
    assert!(report.applied.iter().any(|k| k.contains("logit_bias")), "{:?}", report.applied);
    assert_eq!(imported.bias().unwrap().into_scalar(), bias);
}

#[test]
fn training_only_the_last_stage_leaves_the_earlier_ones_as_they_were() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        60,
        &[
            "model.image_trainable_stages=1",
            "train.max_steps=2",
            "checkpoint.every_steps=1",
            "checkpoint.keep_last=3",
        ],
    );
    let run = RunDir::new(dir.path().join("run"));
    common::train_new(&c, &run).unwrap();
    let load = |step: &str| {
        load_model(
            c.clip_config().unwrap().init::<B>(&Default::default()),
            &run.checkpoints().join(step),
            &Default::default(),
        )
        .unwrap()
    };
    let (a, b) = (load("step-000001"), load("step-000002"));
    let values = |m: &dyn Fn(&mut Values)| {
        let mut v = Values(vec![]);
        m(&mut v);
        v.0
    };
    let (ra, rb) = (&a.image_encoder.model, &b.image_encoder.model);
    assert!(
        values(&|v| ra.layer1.visit(v)) == values(&|v| rb.layer1.visit(v)),
        "a frozen stage changed"
    );
    assert!(
        values(&|v| ra.conv1.visit(v)) == values(&|v| rb.conv1.visit(v)),
        "the frozen stem changed"
    );
    assert!(
        values(&|v| ra.layer4.visit(v)) != values(&|v| rb.layer4.visit(v)),
        "the last stage did not train"
    );
}

#[test]
fn early_stopping_ends_the_run_after_its_patience_and_exports_the_best() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    // Frozen towers and a learning rate far below any weight's rounding: the validation loss
    // never improves after the first validation.
    let c = config(
        dir.path(),
        60,
        &[
            "model.trainable=false",
            "train.lr=1e-30",
            "train.epochs=8",
            "train.early_stop_patience=2",
        ],
    );
    let run = RunDir::new(dir.path().join("run"));
    let summary = common::train_new(&c, &run).unwrap();
    let epochs: Vec<clip_train::metrics::EpochMetrics> =
        clip_train::metrics::read_jsonl(&run.metrics().join("epochs.jsonl"));
    assert_eq!(epochs.len(), 3, "{epochs:?}");
    assert!(epochs.iter().all(|m| m.val.loss == epochs[0].val.loss), "{epochs:?}");
    assert!(summary.completed && summary.early_stopped && summary.stopped.is_none(), "{summary:?}");
    assert_eq!(summary.best_step, Some(epochs[0].step));
    assert!(run.exported_model().is_file());
    let err = ExperimentConfig::load(
        &dir.path().join("exp.toml"),
        &["train.early_stop_patience=0".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("train.early_stop_patience"), "{err}");
}

#[test]
fn validation_every_n_steps_runs_inside_epochs_checkpoints_and_can_stop_early() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        60,
        &["train.val_every_steps=3", "train.val_every_epochs=0", "checkpoint.keep_last=100"],
    );
    let run = RunDir::new(dir.path().join("run"));
    let summary = common::train_new(&c, &run).unwrap();
    let per_epoch = common::steps(&run)[0].batches_per_epoch;
    assert!(per_epoch > 3, "the test needs epochs longer than the interval ({per_epoch})");
    let validated: Vec<(usize, bool)> = clip_train::metrics::read_jsonl::<
        clip_train::metrics::EpochMetrics,
    >(&run.metrics().join("epochs.jsonl"))
    .iter()
    .map(|m| (m.step, m.mid_epoch))
    .collect();
    // Every third step, plus the run's last; none at the first epoch's end (val_every_epochs = 0)
    // unless it falls on the interval.
    let mut want: Vec<(usize, bool)> =
        (1..=summary.steps).filter(|s| s % 3 == 0).map(|s| (s, s % per_epoch != 0)).collect();
    if !summary.steps.is_multiple_of(3) {
        want.push((summary.steps, false));
    }
    assert_eq!(validated, want);
    // Each validation inside an epoch left a checkpoint of its step (a resumed run knows its best).
    for (step, _) in want.iter().filter(|(_, mid)| *mid) {
        let dir = run.checkpoints().join(format!("step-{step:06}"));
        assert!(dir.is_dir(), "no checkpoint at validated step {step}");
    }

    // Early stopping counts these validations too: it can end the run inside its first epoch.
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        60,
        &[
            "model.trainable=false",
            "train.lr=1e-30",
            "train.val_every_steps=1",
            "train.early_stop_patience=2",
        ],
    );
    let run = RunDir::new(dir.path().join("run"));
    let summary = common::train_new(&c, &run).unwrap();
    assert!(summary.completed && summary.early_stopped, "{summary:?}");
    assert_eq!(summary.steps, 3);
    assert_eq!(summary.best_step, Some(1));
    assert!(run.exported_model().is_file());
    let latest = run.latest().unwrap();
    assert!(latest.ends_with("step-000003"), "{}", latest.display());
}

#[test]
fn the_plateau_schedule_reduces_the_learning_rate_when_validation_stalls_and_resumes_with_it() {
    let _serial = common::serial();
    // Frozen towers and a learning rate far below any weight's rounding: the validation loss
    // never improves after the first validation, which happens after every step.
    let overrides = [
        "model.trainable=false",
        "train.lr=1e-30",
        "train.val_every_steps=1",
        "train.max_steps=8",
        "train.schedule=\"plateau\"",
        "train.plateau_factor=0.5",
        "train.warmup_steps=0",
    ];
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 60, &overrides);
    let run = RunDir::new(dir.path().join("run"));
    common::train_new(&c, &run).unwrap();
    let relative = |run: &RunDir| -> Vec<f64> { steps(run).iter().map(|m| m.lr / 1e-30).collect() };
    // Patience 1: the validations after steps 1 (the best), 2, 3 (→ × 0.5), 4, 5 (→ × 0.25), ...
    let want = [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125];
    let got = relative(&run);
    assert!(
        got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-9),
        "{got:?}"
    );

    // Stopped after step 4 and resumed: the reductions so far come back with the checkpoint.
    struct StopAfter(usize, usize);
    impl clip_train::Observer for StopAfter {
        fn on_step(&mut self, m: &clip_train::metrics::StepMetrics) {
            self.1 = m.step;
        }
        fn should_stop(&mut self) -> bool {
            self.1 >= self.0
        }
    }
    let resumed = RunDir::new(dir.path().join("resumed"));
    train::<B>(&c, &resumed, false, &Default::default(), "cpu", &mut StopAfter(4, 0)).unwrap();
    train::<B>(&c, &resumed, true, &Default::default(), "cpu", &mut Silent).unwrap();
    assert_eq!(relative(&resumed), got);

    let err =
        ExperimentConfig::load(&dir.path().join("exp.toml"), &["train.plateau_factor=1.5".into()])
            .unwrap_err()
            .to_string();
    assert!(err.contains("train.plateau_factor"), "{err}");
}

#[test]
fn recomputing_activations_trains_exactly_as_keeping_them() {
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::{Autodiff, Flex};
    type Recomputing = Autodiff<Flex, BalancedCheckpointing>;
    let _serial = common::serial();
    for micro in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        // Dropout in both towers and gradient norms reported (clipping far above them).
        let overrides =
            ["model.dropout=0.2", "train.grad_clip_norm=1e6", "train.recompute_activations=true"];
        let mut c = config(dir.path(), 40, &overrides);
        c.train.micro_batches = micro.parse().unwrap();
        let kept = RunDir::new(dir.path().join("kept"));
        let recomputed = RunDir::new(dir.path().join("recomputed"));
        common::train_new(&c, &kept).unwrap();
        train::<Recomputing>(&c, &recomputed, false, &Default::default(), "cpu", &mut Silent)
            .unwrap();
        let (a, b) = (steps(&kept), steps(&recomputed));
        assert!(a.len() >= 4 && a.len() == b.len(), "{} vs {} steps", a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            let (gx, gy) = (x.grad_norm.unwrap(), y.grad_norm.unwrap());
            assert!(
                (x.loss - y.loss).abs() <= 1e-5 * x.loss.abs(),
                "micro-batches {micro}, step {}: loss {} vs {}",
                x.step,
                x.loss,
                y.loss
            );
            assert!(
                (gx - gy).abs() <= 1e-4 * gx,
                "micro-batches {micro}, step {}: gradient norm {gx} vs {gy}",
                x.step
            );
        }
    }
}

#[test]
fn a_frozen_image_tower_is_cached_and_trains_exactly_as_recomputing_it() {
    let _serial = common::serial();
    for micro in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        let micro = format!("train.micro_batches={micro}");
        let cached = config(
            dir.path(),
            60,
            &["model.image_trainable=false", "model.dropout=0.2", "train.epochs=2", &micro],
        );
        let mut plain = cached.clone();
        plain.train.cache_frozen_image = false;
        let (a, b) =
            (RunDir::new(dir.path().join("cached")), RunDir::new(dir.path().join("plain")));
        common::train_new(&cached, &a).unwrap();
        common::train_new(&plain, &b).unwrap();
        let (x, y) = (steps(&a), steps(&b));
        assert!(x.len() >= 10 && x.len() == y.len(), "{} steps", x.len());
        for (p, q) in x.iter().zip(&y) {
            assert!(
                (p.loss - q.loss).abs() <= 1e-5 * q.loss.abs(),
                "{micro}, step {}: {} vs {}",
                p.step,
                p.loss,
                q.loss
            );
        }
    }
}

#[test]
fn an_unreadable_training_image_is_skipped_and_an_unreadable_validation_image_keeps_the_work() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 40, &["train.max_steps=1"]);
    let first = RunDir::new(dir.path().join("first"));
    common::train_new(&c, &first).unwrap();
    let split = clip_data::Split::load(&first.split()).unwrap();
    let images = dir.path().join("data/images");
    std::fs::write(images.join(&split.train[0]), b"not a picture").unwrap();

    // One epoch: every training image is visited; the broken one's captions are left out.
    let c = config(dir.path(), 40, &["train.epochs=1"]);
    let run = RunDir::new(dir.path().join("skips"));
    let s = common::train_new(&c, &run).unwrap();
    assert!(s.completed && s.skipped_images == 5, "{s:?}");
    let strict = config(dir.path(), 40, &["train.epochs=1", "data.skip_unreadable=false"]);
    let err = common::train_new(&strict, &RunDir::new(dir.path().join("strict")))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&split.train[0]), "{err}");

    // A broken validation image fails the validation, after the epoch's training is saved.
    std::fs::write(images.join(&split.val[0]), b"not a picture either").unwrap();
    let run = RunDir::new(dir.path().join("val"));
    let err = common::train_new(&c, &run).unwrap_err().to_string();
    assert!(err.contains(&split.val[0]) && err.contains("saved in"), "{err}");
    let saved = clip_train::checkpoint::read_state(&run.latest().unwrap()).unwrap();
    assert_eq!(saved.step, s.steps);
}
