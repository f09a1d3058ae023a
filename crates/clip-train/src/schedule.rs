//! Learning-rate schedules as pure functions of the step, so a resumed run needs only the step.

use crate::config::{ScheduleKind, TrainSpec};

/// The learning-rate multiplier at `step` (0-based) of `total` steps: linear warmup from
/// `1/warmup` to 1, then constant or a cosine down to `min_lr / lr` at the last step.
pub fn lr_factor(spec: &TrainSpec, step: usize, total: usize) -> f64 {
    let warmup = spec.warmup_steps;
    if warmup > 0 && step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    match spec.schedule {
        ScheduleKind::Constant => 1.0,
        ScheduleKind::Cosine => {
            let floor = spec.min_lr / spec.lr;
            let span = total.saturating_sub(warmup).max(1);
            let t = ((step - warmup.min(step)) as f64 / span as f64).min(1.0);
            floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
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
        assert!((lr_factor(&spec, 0, 110) - 0.1).abs() < 1e-12);
        assert!((lr_factor(&spec, 9, 110) - 1.0).abs() < 1e-12);
        assert!((lr_factor(&spec, 10, 110) - 1.0).abs() < 1e-12);
        assert!((lr_factor(&spec, 60, 110) - 0.55).abs() < 1e-12);
        assert!((lr_factor(&spec, 110, 110) - 0.1).abs() < 1e-12);
        let constant = TrainSpec::default();
        assert_eq!(lr_factor(&constant, 500, 10), 1.0);
    }
}
