//! `clip runs`: the runs of a runs directory side by side: status, best validation, and the
//! config values that differ between them.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use clip_train::runs::{list_runs, RunOverview};

#[derive(Args, Debug, Clone)]
pub struct RunsArgs {
    /// The runs directory (`runs_dir` of the configs).
    #[arg(default_value = "runs")]
    pub dir: PathBuf,
    /// Print the overview as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn runs(args: RunsArgs) -> Result<()> {
    let runs = list_runs(&args.dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs in {}", args.dir.display());
        return Ok(());
    }
    print_overview(&runs);
    Ok(())
}

/// The runs as a table, then the settings that differ between them (one row per key).
pub fn print_overview(runs: &[RunOverview]) {
    let percent = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    let width = runs.iter().map(|r| r.name.len()).max().unwrap_or(3).max(3);
    println!(
        "{:width$}  {:13}  {:>7}  {:>6}  {:>16}  {:>8}  {:>8}  {:>9}",
        "run", "status", "steps", "time", "best", "t→i R@1", "i→t R@1", "zero-shot"
    );
    for r in runs {
        let time = r.elapsed_s.map_or("-".to_string(), |s| {
            if s < 90.0 {
                format!("{s:.0}s")
            } else if s < 5400.0 {
                format!("{:.0}m", s / 60.0)
            } else {
                format!("{:.1}h", s / 3600.0)
            }
        });
        let best = r.best_score.map_or("-".to_string(), |v| format!("{} {v:.4}", r.best_by));
        let (t2i, i2t, zs) = match &r.best {
            Some(m) => (
                percent(Some(m.val.retrieval.t2i_r1)),
                percent(Some(m.val.retrieval.i2t_r1)),
                percent(m.val.zero_shot_top1),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:width$}  {:13}  {:>7}  {:>6}  {:>16}  {:>8}  {:>8}  {:>9}",
            r.name, r.status, r.steps, time, best, t2i, i2t, zs
        );
    }
    // The settings that set runs apart: one row per key, one column per run.
    let keys: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|r| r.differs.keys()).collect();
    if keys.is_empty() || runs.len() < 2 {
        return;
    }
    const CELL: usize = 24;
    let cell = |v: &str| {
        let v = v.trim_matches('"');
        let n = v.chars().count();
        if n <= CELL {
            v.to_string()
        } else {
            format!("…{}", v.chars().skip(n - (CELL - 1)).collect::<String>())
        }
    };
    const HEADER: &str = "settings that differ";
    let key_width = keys.iter().map(|k| k.len()).max().unwrap_or(0).max(HEADER.len());
    println!();
    print!("{HEADER:key_width$}");
    for r in runs {
        print!("  {:CELL$}", cell(&r.name));
    }
    println!();
    for key in keys {
        print!("{key:key_width$}");
        for r in runs {
            print!("  {:CELL$}", cell(r.differs.get(key).map_or("", String::as_str)));
        }
        println!();
    }
}
