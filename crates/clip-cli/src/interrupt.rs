//! SIGINT (Ctrl-C outside the dashboard) and SIGTERM (a scheduler's preemption, `kill`) during
//! training: the first one asks for a graceful stop (a checkpoint after the current step, then
//! exit); a second one, or one before any step has been taken (nothing new to save), quits at
//! once. Checkpoints are written atomically, so quitting at once never damages the last one.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Once;

use clip_train::metrics::{EpochMetrics, StepMetrics};
use clip_train::{Observer, RunInfo, TrainSummary};

/// The signal that asked for a stop (0: none yet).
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// Whether this process has taken a training step since it started.
static STEPPED: AtomicBool = AtomicBool::new(false);

/// The signal that asked for a graceful stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Watches SIGINT and SIGTERM from a background thread (once per process; a failure to install
/// leaves the default behaviour and says so).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGINT, SIGTERM};
            match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
                Ok(mut signals) => {
                    std::thread::spawn(move || {
                        for signal in signals.forever() {
                            let first = REQUESTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_ok();
                            if !first || !STEPPED.load(Ordering::SeqCst) {
                                clip_train::dashboard::restore_terminal();
                                eprintln!("\n{}: quitting now (the last checkpoint is intact)", name(signal));
                                std::process::exit(128 + signal);
                            }
                        }
                    });
                }
                Err(e) => eprintln!("warning: cannot watch for Ctrl-C / SIGTERM ({e}); they will stop training without a checkpoint"),
            }
        }
    });
}

fn name(signal: i32) -> &'static str {
    #[cfg(unix)]
    {
        if signal == signal_hook::consts::SIGTERM {
            return "SIGTERM";
        }
    }
    let _ = signal;
    "SIGINT"
}

/// Turns a watched signal into the observer's graceful-stop request, said once.
pub struct StopOnSignal<'a> {
    pub inner: &'a mut dyn Observer,
    pub announced: bool,
}

impl Observer for StopOnSignal<'_> {
    fn on_start(&mut self, info: &RunInfo) {
        self.inner.on_start(info);
    }
    fn on_step(&mut self, m: &StepMetrics) {
        STEPPED.store(true, Ordering::SeqCst);
        self.inner.on_step(m);
    }
    fn on_epoch(&mut self, m: &EpochMetrics) {
        self.inner.on_epoch(m);
    }
    fn on_checkpoint(&mut self, path: &std::path::Path, kind: clip_train::CheckpointKind) {
        self.inner.on_checkpoint(path, kind);
    }
    fn on_message(&mut self, msg: &str) {
        self.inner.on_message(msg);
    }
    fn should_stop(&mut self) -> bool {
        let inner = self.inner.should_stop();
        if let Some(signal) = requested() {
            if !std::mem::replace(&mut self.announced, true) {
                self.inner.on_message(&format!(
                    "{}: saving a checkpoint, then stopping (again to quit at once)",
                    name(signal)
                ));
            }
            return true;
        }
        inner
    }
    fn on_finish(&mut self, summary: &TrainSummary) {
        self.inner.on_finish(summary);
    }
}
