//! Resuming a stopped run continues the very same loss curve. In a test binary of its own: the
//! backend's random generator is global to the process, and tests running in parallel threads
//! would draw from it between our steps.


use clip_train::checkpoint::read_state;
use clip_train::metrics::StepMetrics;
use clip_train::{train, Observer, RunDir, Silent};

mod common;

use common::{config, steps, B};


/// Asks for a graceful stop after `at` steps.
struct StopAt(usize, usize);
impl Observer for StopAt {
    fn on_step(&mut self, m: &StepMetrics) {
        self.1 = m.step;
    }
    fn should_stop(&mut self) -> bool {
        self.1 >= self.0
    }
}

#[test]
fn a_stopped_run_resumes_with_the_same_loss_curve() {
    // Whole batches, and batches in micro-batches (dropout reseeded per part).
    for micro_batches in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        // Dropout on, augmentation on, shuffling on: everything that draws random numbers.
        let micro = format!("train.micro_batches={micro_batches}");
        let overrides = ["train.max_steps=14", "data.augment.horizontal_flip=true", "data.augment.random_resized_crop=true", &micro];
        let c = config(dir.path(), 120, &overrides);
        assert_eq!(c.train.max_steps, Some(14));

        let straight = RunDir::new(dir.path().join("straight"));
        train::<B>(&c, &straight, false, &Default::default(), "cpu", &mut Silent).unwrap();

        let resumed = RunDir::new(dir.path().join("resumed"));
        let s = train::<B>(&c, &resumed, false, &Default::default(), "cpu", &mut StopAt(4, 0)).unwrap();
        assert!(!s.completed && s.steps == 4);
        assert_eq!(read_state(&resumed.latest().unwrap()).unwrap().step, 4);
        // An epoch has 3 batches here: step 4 is mid-epoch, so the data order must be restored.
        let s = train::<B>(&c, &resumed, true, &Default::default(), "cpu", &mut Silent).unwrap();
        assert!(s.completed && s.steps == 14);

        let a = steps(&straight);
        let b = steps(&resumed);
        assert_eq!(a.len(), 14);
        assert_eq!(b.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=14).collect::<Vec<_>>());
        for (x, y) in a.iter().zip(&b) {
            assert!((x.loss - y.loss).abs() < 1e-5, "micro-batches {micro_batches}, step {}: {} vs {}", x.step, x.loss, y.loss);
            assert_eq!((x.epoch, x.batch), (y.epoch, y.batch));
        }
    }
}
