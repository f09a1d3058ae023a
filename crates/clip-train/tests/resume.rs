//! Resuming a stopped run continues the very same loss curve. In a test binary of its own: the
//! backend's random generator is global to the process, and tests running in parallel threads
//! would draw from it between our steps.

use clip_train::checkpoint::read_state;
use clip_train::{train, RunDir, Silent};

mod common;

use common::{config, steps, StopAt, B};

#[test]
fn a_stopped_run_resumes_with_the_same_loss_curve() {
    // Whole batches, batches in micro-batches (dropout reseeded per part), and validation every
    // 2 steps (best model and patience carried over through the checkpoint).
    for (micro_batches, val_every_steps, stop_at) in [(1, 0, 4), (3, 0, 4), (1, 2, 5)] {
        let dir = tempfile::tempdir().unwrap();
        // Dropout on, augmentation on, shuffling on: everything that draws random numbers.
        let micro = format!("train.micro_batches={micro_batches}");
        let val = format!("train.val_every_steps={val_every_steps}");
        let overrides = [
            "train.max_steps=14",
            "data.augment.horizontal_flip=true",
            "data.augment.random_resized_crop=true",
            &micro,
            &val,
        ];
        let c = config(dir.path(), 120, &overrides);
        assert_eq!(c.train.max_steps, Some(14));

        let straight = RunDir::new(dir.path().join("straight"));
        train::<B>(&c, &straight, false, &Default::default(), "cpu", &mut Silent).unwrap();

        let resumed = RunDir::new(dir.path().join("resumed"));
        let s =
            train::<B>(&c, &resumed, false, &Default::default(), "cpu", &mut StopAt(stop_at, 0))
                .unwrap();
        assert!(!s.completed && s.steps == stop_at);
        assert_eq!(read_state(&resumed.latest().unwrap()).unwrap().step, stop_at);
        // The stop is mid-epoch, so the data order must be restored.
        let s = train::<B>(&c, &resumed, true, &Default::default(), "cpu", &mut Silent).unwrap();
        assert!(s.completed && s.steps == 14);
        let validations = |run: &RunDir| -> Vec<(usize, f64)> {
            clip_train::metrics::read_jsonl::<clip_train::metrics::EpochMetrics>(
                &run.metrics().join("epochs.jsonl"),
            )
            .iter()
            .map(|m| (m.step, m.val.loss))
            .collect()
        };
        let (va, vb) = (validations(&straight), validations(&resumed));
        assert_eq!(
            va.iter().map(|v| v.0).collect::<Vec<_>>(),
            vb.iter().map(|v| v.0).collect::<Vec<_>>()
        );
        assert!(va.iter().zip(&vb).all(|(x, y)| (x.1 - y.1).abs() < 1e-5), "{va:?} vs {vb:?}");
        if val_every_steps > 0 {
            assert!(va.len() >= 7, "{va:?}");
            let summary = |run: &RunDir| -> serde_json::Value {
                serde_json::from_str(
                    &std::fs::read_to_string(run.root.join("summary.json")).unwrap(),
                )
                .unwrap()
            };
            assert_eq!(summary(&straight)["best_step"], summary(&resumed)["best_step"]);
        }

        let a = steps(&straight);
        let b = steps(&resumed);
        assert_eq!(a.len(), 14);
        assert_eq!(b.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=14).collect::<Vec<_>>());
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x.loss - y.loss).abs() < 1e-5,
                "micro-batches {micro_batches}, step {}: {} vs {}",
                x.step,
                x.loss,
                y.loss
            );
            assert_eq!((x.epoch, x.batch), (y.epoch, y.batch));
        }
    }
}
