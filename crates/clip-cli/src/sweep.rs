//! `clip sweep`: one config trained over a grid of settings, run after run, then compared.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use clip_train::runs::overview;
use clip_train::{ExperimentConfig, RunDir};

use crate::backend::BackendChoice;

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Experiment config (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// A setting and the values to try, e.g. `--grid train.lr=1e-3,3e-4` (repeatable: every
    /// combination is trained). Values are TOML: quote strings (`model.loss='"sigmoid"'`);
    /// commas inside `[...]` or quotes do not separate values.
    #[arg(long = "grid", value_name = "KEY=V1,V2,...", required = true)]
    pub grid: Vec<String>,
    /// Override a config value in every run (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// auto, cuda, cpu or tch (default: the config's `train.backend`).
    #[arg(long, value_parser = crate::backend::parse_backend)]
    pub backend: Option<BackendChoice>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// List the runs the grid makes, check their configs, and stop.
    #[arg(long)]
    pub dry_run: bool,
}

/// `KEY=V1,V2,...` → the key and its values.
fn parse_axis(spec: &str) -> Result<(String, Vec<String>)> {
    let (key, values) =
        spec.split_once('=').with_context(|| format!("--grid {spec}: expected KEY=V1,V2,..."))?;
    let values = split_values(values);
    if key.trim().is_empty() || values.is_empty() || values.iter().any(|v| v.is_empty()) {
        bail!("--grid {spec}: expected KEY=V1,V2,... with a key and non-empty values");
    }
    Ok((key.trim().to_string(), values))
}

/// Splits on commas outside brackets, braces and quotes.
fn split_values(s: &str) -> Vec<String> {
    let (mut out, mut current) = (Vec::new(), String::new());
    let (mut depth, mut quote) = (0i32, None::<char>);
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current.trim().to_string());
    out
}

/// Every combination of the axes' values, the first axis slowest.
fn combinations(axes: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    axes.iter().fold(vec![Vec::new()], |acc, (key, values)| {
        acc.into_iter()
            .flat_map(|combo| {
                values.iter().map(move |v| {
                    let mut c = combo.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect()
    })
}

/// A run name for a combination: `quickstart-lr=3e-4-loss=sigmoid`.
fn run_name(base: &str, combo: &[(String, String)]) -> String {
    let mut name = base.to_string();
    for (key, value) in combo {
        let short = key.rsplit('.').next().unwrap_or(key);
        let value: String = value
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' })
            .collect();
        name.push_str(&format!("-{short}={}", value.trim_matches('_')));
    }
    name
}

pub fn sweep(args: SweepArgs) -> Result<()> {
    let axes = args.grid.iter().map(|g| parse_axis(g)).collect::<Result<Vec<_>>>()?;
    let combos = combinations(&axes);
    // Every config is loaded (and so validated) before anything trains.
    let mut jobs = Vec::new();
    for combo in &combos {
        let mut overrides = args.overrides.clone();
        overrides.extend(combo.iter().map(|(k, v)| format!("{k}={v}")));
        let mut config = ExperimentConfig::load(&args.config, &overrides)?;
        config.name = run_name(&config.name, combo);
        jobs.push(config);
    }
    println!("sweep: {} runs from {}", jobs.len(), args.config.display());
    for config in &jobs {
        println!("  {}", config.name);
    }
    if args.dry_run {
        return Ok(());
    }
    let mut dirs = Vec::new();
    let mut failed = Vec::new();
    for (i, config) in jobs.into_iter().enumerate() {
        println!("sweep: run {} of {}: {}", i + 1, combos.len(), config.name);
        let backend = args.backend.unwrap_or(config.train.backend);
        let run = RunDir::create_unique(&config.runs_dir, &config.name)?;
        dirs.push(run.root.clone());
        let name = config.name.clone();
        if let Err(e) = crate::train::train_in(config, run, backend, args.plain) {
            // One failed combination (a diverged learning rate, say) does not end the sweep.
            eprintln!("sweep: {name} failed: {e:#}");
            failed.push(name);
        }
    }
    println!();
    crate::runs::print_overview(&overview(&dirs)?);
    if !failed.is_empty() {
        bail!("{} of {} runs failed: {}", failed.len(), dirs.len(), failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_split_on_top_level_commas_and_combine() {
        assert_eq!(split_values("1e-3, 3e-4"), ["1e-3", "3e-4"]);
        assert_eq!(split_values("[0.4,0.4,0.4,0.1],[0,0,0,0]"), ["[0.4,0.4,0.4,0.1]", "[0,0,0,0]"]);
        assert_eq!(split_values(r#""a,b","c""#), [r#""a,b""#, r#""c""#]);
        assert!(parse_axis("train.lr").is_err() && parse_axis("train.lr=1,").is_err());
        let axes = [
            parse_axis("train.lr=1,2").unwrap(),
            parse_axis("model.loss=\"infonce\",\"sigmoid\"").unwrap(),
        ];
        let combos = combinations(&axes);
        assert_eq!(combos.len(), 4);
        assert_eq!(
            combos[1],
            [
                ("train.lr".to_string(), "1".to_string()),
                ("model.loss".to_string(), "\"sigmoid\"".to_string())
            ]
        );
        assert_eq!(run_name("qs", &combos[1]), "qs-lr=1-loss=sigmoid");
    }
}
