//! Learning-rate schedules as functions of the step and, for the plateau schedule, of the
//! reductions counted so far (kept in the checkpoint's state), so a resumed run continues them.

use serde::{Deserialize, Serialize};

use crate::config::{ScheduleKind, TrainSpec};

/// The learning-rate multiplier at `step` (0-based) of `total` steps: linear warmup from
/// `1/warmup` to 1, then constant, a cosine down to `min_lr / lr` at the last step, or
/// `plateau_factor` to the power of the reductions so far (not below `min_lr / lr`).
pub fn lr_factor(spec: &TrainSpec, step: usize, total: usize, plateau: &Plateau) -> f64 {
    let warmup = spec.warmup_steps;
    let ramp = if warmup > 0 && step < warmup { (step + 1) as f64 / warmup as f64 } else { 1.0 };
    match spec.schedule {
        ScheduleKind::Constant => ramp,
        ScheduleKind::Plateau => ramp * plateau_factor(spec, plateau.reductions),
        ScheduleKind::Cosine if ramp < 1.0 => ramp,
        ScheduleKind::Cosine => {
            let floor = spec.min_lr / spec.lr;
            let span = total.saturating_sub(warmup).max(1);
            let t = ((step - warmup.min(step)) as f64 / span as f64).min(1.0);
            floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// The plateau schedule's multiplier after `reductions`: `plateau_factor` to that power, not
/// below `min_lr / lr`.
fn plateau_factor(spec: &TrainSpec, reductions: usize) -> f64 {
    spec.plateau_factor.powi(reductions as i32).max(spec.min_lr / spec.lr)
}

/// Relative change a validation must make to count as an improvement (PyTorch's
/// `ReduceLROnPlateau` default, `threshold = 1e-4` in `rel` mode): noise is not progress.
const PLATEAU_THRESHOLD: f64 = 1e-4;

/// The state of the plateau schedule (PyTorch's `ReduceLROnPlateau`, which the seed notebook
/// steps with the validation loss after every epoch): the best validation score, the
/// validations since it, and the reductions made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    pub best: Option<f64>,
    pub validations_without_improvement: usize,
    pub reductions: usize,
}

impl Plateau {
    /// Counts a validation's score; true when it reduces the learning rate, which happens when
    /// more than `patience` validations in a row did not improve on the best by the threshold.
    pub fn observe(&mut self, score: f64, lower_is_better: bool, patience: usize) -> bool {
        let improved = match self.best {
            _ if score.is_nan() => false,
            None => true,
            Some(b) if lower_is_better => score < b - b.abs() * PLATEAU_THRESHOLD,
            Some(b) => score > b + b.abs() * PLATEAU_THRESHOLD,
        };
        if improved {
            self.best = Some(score);
            self.validations_without_improvement = 0;
            return false;
        }
        self.validations_without_improvement += 1;
        if self.validations_without_improvement > patience {
            self.validations_without_improvement = 0;
            self.reductions += 1;
            return true;
        }
        false
    }

    /// Counts a validation's `score` for the plateau schedule of `spec` (nothing for any other
    /// schedule): the new multiplier when the learning rates go down (not when a reduction is
    /// counted at the `min_lr` floor already reached).
    pub fn after_validation(
        &mut self,
        spec: &TrainSpec,
        score: f64,
        lower_is_better: bool,
    ) -> Option<f64> {
        if spec.schedule != ScheduleKind::Plateau {
            return None;
        }
        let before = plateau_factor(spec, self.reductions);
        let reduced = self.observe(score, lower_is_better, spec.plateau_patience);
        let after = plateau_factor(spec, self.reductions);
        (reduced && after < before).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let spec = TrainSpec {
            schedule: ScheduleKind::Cosine,
            warmup_steps: 10,
            lr: 1e-3,
            min_lr: 1e-4,
            ..TrainSpec::default()
        };
        let none = Plateau::default();
        assert!((lr_factor(&spec, 0, 110, &none) - 0.1).abs() < 1e-12);
        assert!((lr_factor(&spec, 9, 110, &none) - 1.0).abs() < 1e-12);
        assert!((lr_factor(&spec, 10, 110, &none) - 1.0).abs() < 1e-12);
        assert!((lr_factor(&spec, 60, 110, &none) - 0.55).abs() < 1e-12);
        assert!((lr_factor(&spec, 110, 110, &none) - 0.1).abs() < 1e-12);
        let constant = TrainSpec::default();
        assert_eq!(lr_factor(&constant, 500, 10, &none), 1.0);
    }

    #[test]
    fn plateau_reduces_after_more_than_patience_validations_without_improvement() {
        // The seed notebook's ReduceLROnPlateau(mode="min", patience=1, factor=0.8).
        let mut p = Plateau::default();
        let reduced: Vec<bool> = [3.0, 2.0, 2.5, 2.1, 2.0, 1.9999, 1.5, 1.6, 1.7, 1.8, f64::NAN]
            .iter()
            .map(|&loss| p.observe(loss, true, 1))
            .collect();
        // 2.5, 2.1: two without improvement → reduce; 2.0 (not below 2.0), 1.9999 (within the
        // relative threshold) → reduce; 1.6, 1.7 → reduce; 1.8, NaN → reduce.
        let want = [false, false, false, true, false, true, false, false, true, false, true];
        assert_eq!(reduced, want);
        assert_eq!((p.reductions, p.best), (4, Some(1.5)));

        // Higher is better (rsum); patience 0 reduces on every validation without improvement.
        let mut p = Plateau::default();
        let reduced: Vec<bool> =
            [100.0, 120.0, 119.0, 130.0, 130.0].iter().map(|&r| p.observe(r, false, 0)).collect();
        assert_eq!(reduced, [false, false, true, false, true]);

        let spec = TrainSpec {
            schedule: ScheduleKind::Plateau,
            plateau_factor: 0.5,
            lr: 1e-3,
            min_lr: 2e-4,
            warmup_steps: 4,
            ..TrainSpec::default()
        };
        let after = |reductions| Plateau { reductions, ..Plateau::default() };
        assert_eq!(lr_factor(&spec, 1, 100, &after(0)), 0.5); // warming up
        assert_eq!(lr_factor(&spec, 10, 100, &after(0)), 1.0);
        assert_eq!(lr_factor(&spec, 10, 100, &after(2)), 0.25);
        assert!((lr_factor(&spec, 10, 100, &after(5)) - 0.2).abs() < 1e-12, "min_lr is the floor");

        // Reported reductions: 0.5, 0.25, then the floor 0.2 once, then nothing more to report.
        let spec = TrainSpec { plateau_patience: 0, ..spec };
        let mut p = Plateau::default();
        let reported: Vec<Option<f64>> =
            [1.0, 2.0, 2.0, 2.0, 2.0].iter().map(|&l| p.after_validation(&spec, l, true)).collect();
        assert_eq!(reported, [None, Some(0.5), Some(0.25), Some(0.2), None]);
        assert_eq!(p.reductions, 4);
        let cosine = TrainSpec { schedule: ScheduleKind::Cosine, ..spec };
        assert_eq!(Plateau::default().after_validation(&cosine, f64::NAN, true), None);
    }
}
