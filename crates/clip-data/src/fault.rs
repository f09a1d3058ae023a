//! Fault injection, for the reliability suite (`cargo xtask chaos`, the `chaos` tests): the
//! `CLIP_FAULTS` environment variable names points of the code and what happens the Nth time a
//! process reaches one, so a test can kill a run *inside* a checkpoint write or poison a step's
//! loss deterministically, instead of hoping a timer lands there.
//!
//! `CLIP_FAULTS="checkpoint.swap@2=kill,train.loss@5=nan"`: the second time the run reaches
//! `checkpoint.swap` the process kills itself with SIGKILL (as an outside `kill -9` would, no
//! destructor runs); the fifth training step's loss is NaN. `@N` defaults to 1; `@N+` fires on
//! the Nth reach and every later one. Unset, every point costs one relaxed atomic load.
//!
//! The points: `checkpoint.fill` (a checkpoint's files written, not yet renamed into place),
//! `checkpoint.swap` (`best`'s old copy moved aside, the new one not yet in place),
//! `atomic.write` (any file written through [`crate::fs::write_atomic`], before its rename),
//! `validate` (inside validation), `embed.batch` (between `clip embed`'s batches),
//! `shards.write` (between shards of `clip data shards`), `train.loss` and `train.grad` (a
//! step's loss or gradient made non-finite, action `nan` or `inf`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

/// What a fault point does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// The process ends at once with SIGKILL.
    Kill,
    /// The value the point guards becomes NaN.
    Nan,
    /// The value the point guards becomes +∞.
    Inf,
}

impl FaultAction {
    /// The poisoned value for `Nan` / `Inf` (`Kill` never returns).
    pub fn value(self) -> f32 {
        match self {
            FaultAction::Inf => f32::INFINITY,
            _ => f32::NAN,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Fault {
    point: String,
    /// 1-based reach that fires.
    at: usize,
    /// Also every reach after `at`.
    onwards: bool,
    action: FaultAction,
}

/// 0: not read yet, 1: no faults, 2: faults configured.
static STATE: AtomicU8 = AtomicU8::new(0);
/// The configured faults, and how often each point was reached.
type Registry = (Vec<Fault>, Mutex<HashMap<String, usize>>);
static FAULTS: OnceLock<Registry> = OnceLock::new();

/// Reaches `point`: counts it and, when a configured fault fires here, kills the process or
/// returns the action for the caller to apply (`Nan`, `Inf`).
pub fn reach(point: &str) -> Option<FaultAction> {
    if STATE.load(Ordering::Relaxed) == 1 {
        return None;
    }
    let (faults, counts) = FAULTS.get_or_init(|| {
        let faults = std::env::var("CLIP_FAULTS").map(|s| parse(&s)).unwrap_or_default();
        STATE.store(if faults.is_empty() { 1 } else { 2 }, Ordering::Relaxed);
        (faults, Mutex::new(HashMap::new()))
    });
    if faults.is_empty() {
        return None;
    }
    let reached = {
        let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(point.to_string()).or_insert(0);
        *n += 1;
        *n
    };
    let fault = faults
        .iter()
        .find(|f| f.point == point && (reached == f.at || (f.onwards && reached > f.at)))?;
    if fault.action == FaultAction::Kill {
        eprintln!("CLIP_FAULTS: killing the process at {point} (reach {reached})");
        kill_self();
    }
    Some(fault.action)
}

/// Parses `point@N=action,...`; malformed entries are reported on stderr and left out (a fault
/// suite that silently injects nothing would prove nothing, so they are loud).
fn parse(spec: &str) -> Vec<Fault> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|entry| {
            let parsed = parse_one(entry);
            if parsed.is_none() {
                eprintln!("CLIP_FAULTS: ignoring {entry:?} (expected point[@N[+]]=kill|nan|inf)");
            }
            parsed
        })
        .collect()
}

fn parse_one(entry: &str) -> Option<Fault> {
    let (left, action) = entry.split_once('=')?;
    let action = match action.trim() {
        "kill" => FaultAction::Kill,
        "nan" => FaultAction::Nan,
        "inf" => FaultAction::Inf,
        _ => return None,
    };
    let (point, at, onwards) = match left.split_once('@') {
        None => (left, 1, false),
        Some((point, n)) => {
            let (n, onwards) = match n.strip_suffix('+') {
                Some(n) => (n, true),
                None => (n, false),
            };
            (point, n.trim().parse().ok().filter(|&n| n > 0)?, onwards)
        }
    };
    let point = point.trim();
    (!point.is_empty()).then(|| Fault { point: point.to_string(), at, onwards, action })
}

fn kill_self() -> ! {
    #[cfg(unix)]
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_malformed_ones_are_left_out() {
        let faults =
            parse("checkpoint.swap@2=kill, train.loss@5+=nan,x=boom,@3=kill,y@0=nan,z=inf");
        let fault =
            |point: &str, at, onwards, action| Fault { point: point.into(), at, onwards, action };
        assert_eq!(
            faults,
            vec![
                fault("checkpoint.swap", 2, false, FaultAction::Kill),
                fault("train.loss", 5, true, FaultAction::Nan),
                fault("z", 1, false, FaultAction::Inf),
            ]
        );
    }
}
