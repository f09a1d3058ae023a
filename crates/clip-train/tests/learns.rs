//! A short training run on Flex learns: validation recall far above chance. In a test binary of
//! its own so that no parallel test draws from the backend's global generator during its run,
//! which keeps the result the same on every machine.

use clip_train::metrics::{read_jsonl, EpochMetrics};
use clip_train::RunDir;

mod common;

use common::{config, steps};

#[test]
fn training_learns_far_above_chance() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 400, &["train.epochs=8", "model.text.dropout=0.0"]);
    let run = RunDir::new(dir.path().join("run"));
    let summary = common::train_new(&c, &run).unwrap();
    assert!(summary.completed);
    let epochs: Vec<EpochMetrics> = read_jsonl(&run.metrics().join("epochs.jsonl"));
    assert_eq!(epochs.len(), 8);
    let last = epochs.last().unwrap();
    let chance = 1.0 / last.val.retrieval.images as f64;
    eprintln!(
        "val images {}, t2i R@1 {:.3}, i2t R@1 {:.3}, chance {chance:.3}",
        last.val.retrieval.images, last.val.retrieval.t2i_r1, last.val.retrieval.i2t_r1
    );
    assert!(
        last.val.retrieval.t2i_r1 > 8.0 * chance,
        "text→image R@1 {} vs chance {chance}",
        last.val.retrieval.t2i_r1
    );
    assert!(
        last.val.retrieval.i2t_r1 > 8.0 * chance,
        "image→text R@1 {} vs chance {chance}",
        last.val.retrieval.i2t_r1
    );
    let s = steps(&run);
    let first: f64 = s[..5].iter().map(|m| m.loss).sum::<f64>() / 5.0;
    let end: f64 = s[s.len() - 5..].iter().map(|m| m.loss).sum::<f64>() / 5.0;
    assert!(end < first * 0.6, "loss {first} -> {end}");
    // The run directory holds everything inference and resumption need.
    for f in [
        "config.toml",
        "model.json",
        "split.json",
        "model.safetensors",
        "curves.png",
        "summary.json",
    ] {
        assert!(run.root.join(f).is_file(), "missing {f}");
    }
    assert!(run.best().join("model.mpk").is_file());
    assert!(run.step_checkpoints().len() <= 2, "keep_last = 2");
}
