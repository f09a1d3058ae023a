//! An overview of the runs in a runs directory, for comparing experiments: how far each got,
//! its best validation, and which config values set it apart from the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::{read_state, RunDir};
use crate::config::BestBy;
use crate::error::{Result, TrainError};
use crate::metrics::{read_jsonl, EpochMetrics};
use crate::observer::TrainSummary;

/// One run as the overview shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunOverview {
    pub name: String,
    pub dir: PathBuf,
    /// `finished`, `early-stopped`, `stopped` (resumable), `imported` (made by `clip import`,
    /// never trained), or `interrupted` (no summary: killed, or still training).
    pub status: &'static str,
    pub steps: usize,
    pub elapsed_s: Option<f64>,
    /// The metric that picks the run's best model, and its best value.
    pub best_by: String,
    pub best_score: Option<f64>,
    /// The validation of the best model (or the last one when none was best yet).
    pub best: Option<EpochMetrics>,
    /// Config values (dotted keys) this run does not share with every other run listed.
    pub differs: BTreeMap<String, String>,
    #[serde(skip)]
    config: BTreeMap<String, String>,
}

impl RunOverview {
    /// Reads a run directory (None if it is not one: no `config.toml`).
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let run = RunDir::new(dir);
        let config_path = run.config();
        let Ok(text) = std::fs::read_to_string(&config_path) else { return Ok(None) };
        // Through the config type when it parses, so that runs written by older versions show
        // today's defaults for keys they did not have, not a difference.
        let value = match toml::from_str::<crate::ExperimentConfig>(&text)
            .ok()
            .and_then(|c| toml::Value::try_from(c).ok())
        {
            Some(v) => v,
            None => toml::Value::Table(
                toml::from_str(&text)
                    .map_err(|source| TrainError::Toml { path: config_path.clone(), source })?,
            ),
        };
        let mut config = BTreeMap::new();
        flatten("", &value, &mut config);
        let best_by: BestBy = config
            .get("checkpoint.best_by")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let summary: Option<TrainSummary> =
            std::fs::read(run.summary()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let validations: Vec<EpochMetrics> = read_jsonl(&run.epoch_metrics());
        let (status, steps, elapsed_s) = match &summary {
            Some(s) if s.completed && s.early_stopped => {
                ("early-stopped", s.steps, Some(s.elapsed_s))
            }
            Some(s) if s.completed => ("finished", s.steps, Some(s.elapsed_s)),
            Some(s) => ("stopped", s.steps, Some(s.elapsed_s)),
            None if run.import_record().is_file() => ("imported", 0, None),
            None => {
                let state = run.latest().and_then(|p| read_state(&p).ok());
                ("interrupted", state.as_ref().map_or(0, |s| s.step), state.map(|s| s.elapsed_s))
            }
        };
        // The best validation under the run's own metric, from its history.
        let mut best: Option<(f64, EpochMetrics)> = None;
        for m in validations.iter() {
            if let Some(score) = m.score(best_by) {
                if crate::metrics::improves(best_by, score, best.as_ref().map(|b| b.0)) {
                    best = Some((score, m.clone()));
                }
            }
        }
        let (best_score, best) = match best {
            Some((score, m)) => (Some(score), Some(m)),
            None => (None, validations.last().cloned()),
        };
        Ok(Some(Self {
            name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            dir: dir.into(),
            status,
            steps,
            elapsed_s,
            best_by: best_by.name(),
            best_score,
            best,
            differs: BTreeMap::new(),
            config,
        }))
    }
}

/// The runs directly inside `runs_dir`, by name, each with the config values that set it apart.
pub fn list_runs(runs_dir: &Path) -> Result<Vec<RunOverview>> {
    let entries = std::fs::read_dir(runs_dir).map_err(|e| TrainError::io(runs_dir, e))?;
    let mut dirs: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    overview(&dirs)
}

/// The given run directories (others skipped), in order, each with the config values that set
/// it apart from the rest of them.
pub fn overview(dirs: &[PathBuf]) -> Result<Vec<RunOverview>> {
    let mut runs = Vec::new();
    for dir in dirs {
        if let Some(run) = RunOverview::read(dir)? {
            runs.push(run);
        }
    }
    mark_differences(&mut runs);
    Ok(runs)
}

/// Keys that only name or place a run, not what it trains.
fn incidental(key: &str) -> bool {
    key == "name" || key == "runs_dir"
}

fn mark_differences(runs: &mut [RunOverview]) {
    let keys: std::collections::BTreeSet<String> =
        runs.iter().flat_map(|r| r.config.keys().cloned()).collect();
    for key in keys.into_iter().filter(|k| !incidental(k)) {
        let first = runs.first().and_then(|r| r.config.get(&key)).cloned();
        if runs.iter().all(|r| r.config.get(&key) == first.as_ref()) {
            continue;
        }
        for run in runs.iter_mut() {
            let value = run.config.get(&key).cloned().unwrap_or_else(|| "(unset)".into());
            run.differs.insert(key.clone(), value);
        }
    }
}

/// `a.b.c = value` pairs of a TOML tree (strings quoted, arrays inline).
fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), show(other));
        }
    }
}

/// A value as a config would spell it; floats that are exactly an `f32` (most config fields)
/// in that type's shortest form, `0.286` rather than `0.28600001335144043`.
fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Float(f) if (*f as f32) as f64 == *f => format!("{}", *f as f32),
        toml::Value::Float(f) => format!("{f}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        toml::Value::Table(t) => format!(
            "{{{}}}",
            t.iter().map(|(k, v)| format!("{k} = {}", show(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differing_config_values_are_marked() {
        let dir = tempfile::tempdir().unwrap();
        let configs = [
            ("a", "name = \"a\"\n[train]\nlr = 0.001\nepochs = 2\n[data]\nmean = [0.5, 0.5, 0.5]\n"),
            ("b", "name = \"b\"\n[train]\nlr = 0.0003\nepochs = 2\n[data]\nmean = [0.5, 0.5, 0.5]\n[checkpoint]\nbest_by = \"rsum\"\n"),
        ];
        for (name, text) in configs {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("config.toml"), text).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("not-a-run")).unwrap();
        let runs = list_runs(dir.path()).unwrap();
        assert_eq!(runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let differs: Vec<(&str, &str)> =
            runs[1].differs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(differs, [("checkpoint.best_by", "\"rsum\""), ("train.lr", "0.0003")]);
        assert_eq!(
            show(&toml::Value::Array(vec![
                toml::Value::Float(0.286f32 as f64),
                toml::Value::Float(0.1)
            ])),
            "[0.286, 0.1]"
        );
        assert_eq!(runs[0].differs["checkpoint.best_by"], "(unset)");
        assert_eq!(
            (runs[0].status, runs[0].steps, runs[1].best_by.as_str()),
            ("interrupted", 0, "rsum")
        );
    }
}
