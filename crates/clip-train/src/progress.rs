//! Plain progress lines for logs, pipes and CI, where no terminal can hold the dashboard.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::metrics::{EpochMetrics, StepMetrics};
use crate::observer::{CheckpointKind, Observer, RunInfo};

/// Plain progress lines for logs, pipes and CI: one line at most every `interval`, plus every
/// epoch and checkpoint.
pub struct PlainProgress<W: Write> {
    out: W,
    interval: Duration,
    last: Option<Instant>,
    epochs: usize,
}

impl<W: Write> PlainProgress<W> {
    pub fn new(out: W, interval: Duration) -> Self {
        Self { out, interval, last: None, epochs: 0 }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Observer for PlainProgress<W> {
    fn on_start(&mut self, i: &RunInfo) {
        self.epochs = i.epochs;
        let _ = writeln!(
            self.out,
            "run {} · {} · {} · {:.1}M params · batch {}{} · {} training pairs, {} validation pairs ({} images) · {} steps{}",
            i.run_dir,
            i.backend,
            i.precision,
            i.parameters as f64 / 1e6,
            i.batch_size,
            micro_batches_note(i),
            i.train_pairs,
            i.val_pairs,
            i.val_images,
            i.total_steps,
            if i.start_step > 0 { format!(" (resuming at {})", i.start_step) } else { String::new() }
        );
    }
    fn on_step(&mut self, m: &StepMetrics) {
        let due = self.last.is_none_or(|t| t.elapsed() >= self.interval) || m.step == m.total_steps;
        if due {
            self.last = Some(Instant::now());
            let _ = writeln!(
                self.out,
                "epoch {}/{} step {}/{} loss {:.4} acc i→t {:.0}% t→i {:.0}% lr {:.2e} temp {:.3} {:.1} samples/s ETA {}",
                m.epoch + 1,
                self.epochs,
                m.step,
                m.total_steps,
                m.loss,
                m.acc_i2t * 100.0,
                m.acc_t2i * 100.0,
                m.lr,
                m.temperature,
                m.samples_per_s,
                fmt_duration(m.eta_s)
            );
            if !m.replicas.is_empty() {
                let _ = writeln!(self.out, "  {}", replicas_line(m));
            }
        }
    }
    fn on_epoch(&mut self, m: &EpochMetrics) {
        let _ = writeln!(
            self.out,
            "{} {}: train loss {} val loss {:.4} | {}{}",
            m.label(),
            if m.mid_epoch { "validated" } else { "done" },
            m.train_loss.map_or("--".to_string(), |l| format!("{l:.4}")),
            m.val.loss,
            m.val.retrieval,
            m.val
                .zero_shot_top1
                .map_or(String::new(), |z| format!(" | zero-shot top-1 {:.1}%", z * 100.0))
        );
    }
    fn on_checkpoint(&mut self, path: &Path, kind: CheckpointKind) {
        let _ = writeln!(self.out, "checkpoint ({kind}): {}", path.display());
    }
    fn on_message(&mut self, msg: &str) {
        let _ = writeln!(self.out, "{msg}");
    }
}

/// Each replica's throughput and time spent exchanging tensors in the last step.
pub(crate) fn replicas_line(m: &StepMetrics) -> String {
    let parts: Vec<String> = m
        .replicas
        .iter()
        .enumerate()
        .map(|(r, s)| format!("#{r} {:.1}/s ({:.0} ms comm)", s.samples_per_s, s.comm_s * 1e3))
        .collect();
    format!("replicas {}", parts.join(" · "))
}

/// " in 4 micro-batches" when a batch's passes are split, else nothing.
pub(crate) fn micro_batches_note(i: &RunInfo) -> String {
    let mut note = String::new();
    if i.replicas > 1 {
        note += &format!(" over {} devices", i.replicas);
    }
    if i.micro_batches > 1 {
        note += &format!(" in {} micro-batches", i.micro_batches);
        if i.replicas > 1 {
            note += " each";
        }
    }
    note
}

/// A duration as `1h02m`, `3m05s` or `42s` (`--` when unknown).
pub(crate) fn fmt_duration(s: f64) -> String {
    if !s.is_finite() {
        return "--".into();
    }
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::test_metrics::{epoch, step};

    #[test]
    fn plain_progress_prints_epochs_and_checkpoints() {
        let mut p = PlainProgress::new(Vec::new(), Duration::from_secs(3600));
        p.on_step(&step(1, 3.0));
        p.on_step(&step(2, 2.9));
        p.on_epoch(&epoch());
        p.on_checkpoint(Path::new("runs/x/checkpoints/step-000010"), CheckpointKind::Epoch);
        let mut inside = epoch();
        (inside.step, inside.mid_epoch) = (15, true);
        p.on_epoch(&inside);
        let out = String::from_utf8(p.into_inner()).unwrap();
        assert!(
            out.contains("epoch 1 done:") && out.contains("step 15 (epoch 1) validated:"),
            "{out}"
        );
        assert_eq!(out.lines().filter(|l| l.contains("loss 3.0000")).count(), 1);
        assert!(!out.contains("loss 2.9000"), "throttled: {out}");
        assert!(
            out.contains("text→image R@1 12.3%") && out.contains("checkpoint (epoch)"),
            "{out}"
        );
        assert!(out.contains("zero-shot top-1 87.5%"), "{out}");
    }
}
