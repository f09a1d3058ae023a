//! Training on Flex with a tiny model on generated shapes: the mixed-precision modes train with
//! f32 master weights, fp16 loss scaling skips overflowing steps, bad configs fail early.


use std::path::PathBuf;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Tensor};
use clip_train::checkpoint::load_model;
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
    for precision in ["bf16-mixed", "fp16-mixed"] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 120, &[&format!("train.precision=\"{precision}\""), "train.epochs=3"]);
        let run = RunDir::new(dir.path().join("run"));
        let summary = train::<B>(&c, &run, false, &Default::default(), "cpu", &mut Silent).unwrap();
        assert!(summary.completed, "{precision}");
        let s = steps(&run);
        let first: f64 = s[..3].iter().map(|m| m.loss).sum::<f64>() / 3.0;
        let end: f64 = s[s.len() - 3..].iter().map(|m| m.loss).sum::<f64>() / 3.0;
        assert!(end < first * 0.85, "{precision}: loss {first} -> {end}");
        let model = load_model(c.clip_config().unwrap().init::<B>(&Default::default()), &run.latest().unwrap(), &Default::default()).unwrap();
        let mut dtypes = Dtypes(vec![]);
        model.visit(&mut dtypes);
        assert!(!dtypes.0.is_empty() && dtypes.0.iter().all(|d| *d == DType::F32), "{precision}: {:?}", dtypes.0);
        if precision == "fp16-mixed" {
            assert!(s.iter().all(|m| m.loss_scale.is_some()));
        }
    }
}

#[test]
fn fp16_overflowing_steps_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // A loss scale of 2^126 overflows f32 at once: the first steps' gradients are infinite.
    let c = config(dir.path(), 60, &["train.precision=\"fp16-mixed\"", "train.loss_scale=8.5e37", "train.max_steps=4"]);
    let run = RunDir::new(dir.path().join("run"));
    let before = c.clip_config().unwrap();
    let summary = train::<B>(&c, &run, false, &Default::default(), "cpu", &mut Silent).unwrap();
    let s = steps(&run);
    assert!(summary.skipped_steps >= 1, "{summary:?}");
    assert_eq!(s[0].skipped_steps, 1);
    assert!((s[0].loss_scale.unwrap() - 8.5e37 / 2.0).abs() < 1e30, "halved: {:?}", s[0].loss_scale);
    assert!(s.iter().all(|m| m.loss.is_finite()));
    let _ = before;
}

#[test]
fn bad_configs_fail_before_training_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 20, &[]);
    let path: PathBuf = dir.path().join("exp.toml");
    let err = ExperimentConfig::load(&path, &["train.optimizer=\"sgd\"".into()]).unwrap_err().to_string();
    assert!(err.contains("sgd") && err.contains("exp.toml"), "{err}");
    let err = ExperimentConfig::load(&path, &["model.image.layers=[1,1]".into()]).unwrap_err().to_string();
    assert!(err.contains("layers"), "{err}");
    // A missing dataset is named at the start, not after building a model.
    let mut missing = c.clone();
    missing.data.synthetic = None;
    missing.data.captions = dir.path().join("nowhere/results.csv");
    missing.data.images = dir.path().join("nowhere/images");
    let err = train::<B>(&missing, &RunDir::new(dir.path().join("r")), false, &Default::default(), "cpu", &mut Silent).unwrap_err();
    assert!(err.to_string().contains("nowhere/images"), "{err}");
    assert!(!dir.path().join("r/checkpoints").exists());
}
