//! The `clip` program end to end: inspecting data, a training process killed mid-run and resumed,
//! and clear errors for bad input.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn clip() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clip"))
}

fn write_config(dir: &Path, images: usize, epochs: usize) -> std::path::PathBuf {
    let text = format!(
        r#"
name = "cli-test"
runs_dir = "runs"
[data]
captions = "data/results.csv"
images = "data/images"
image_size = 32
text_max_length = 40
batch_size = 16
num_workers = 1
[data.synthetic]
images = {images}
image_size = 32
[model]
image_encoder = "custom"
text_encoder = "custom"
projection_dim = 16
normalize_embeddings = true
learnable_temperature = true
temperature = 0.07
[model.image]
block = "basic"
layers = [1, 1, 1, 1]
channels = [8, 16, 32, 64]
stem_channels = 8
zero_init_residual = false
[model.text]
vocab_size = 30522
hidden_size = 32
num_layers = 1
num_heads = 2
intermediate_size = 64
max_position_embeddings = 48
[train]
epochs = {epochs}
lr = 1e-3
backend = "cpu"
[checkpoint]
every_steps = 4
keep_last = 3
"#
    );
    let path = dir.join("exp.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn step_numbers(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics/steps.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .collect()
}

#[test]
fn a_killed_training_process_resumes_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 150, 4);
    let run = dir.path().join("run");
    let mut child = clip()
        .args(["train", "--plain", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no chance to clean up) as soon as a periodic checkpoint exists.
    let start = Instant::now();
    let killed_at = loop {
        let done = std::fs::read_dir(run.join("checkpoints"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("step-") && e.path().join("state.json").is_file());
        if done {
            child.kill().unwrap();
            break step_numbers(&run).len();
        }
        assert!(child.try_wait().unwrap().is_none(), "training ended before it could be killed");
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(5));
    };
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!run.join("summary.json").exists(), "the killed run did not finish");

    let out = clip().args(["train", "--plain", "--resume"]).arg(&run).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "resume failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("resumed from") && stdout.contains("finished after"), "{stdout}");
    let steps = step_numbers(&run);
    let total = steps.len() as u64;
    assert!(killed_at < total as usize, "killed at {killed_at} of {total}");
    // One line per step, no step twice, none missing: the curve continues where it stopped.
    assert_eq!(steps, (1..=total).collect::<Vec<_>>());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["completed"], true);
    // No half-written checkpoint directories were left behind.
    let leftovers: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty() || leftovers.iter().all(|n| n.contains(".tmp-")), "{leftovers:?}");
}

#[test]
fn data_inspect_reports_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 30, 1);
    let out = clip().args(["data", "inspect", "--batches", "2", "--config"]).arg(&config).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for want in ["images           30", "captions         150", "train            24 images", "val              6 images", "caption tokens   min", "ms per batch of 16"] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 10, 1);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["train".into(), "--config".into(), config.display().to_string(), "--set".into(), "train.lrr=1".into()], "lrr"),
        (vec!["train".into(), "--config".into(), dir.path().join("absent.toml").display().to_string()], "absent.toml"),
        (vec!["train".into(), "--resume".into(), dir.path().join("no-run").display().to_string()], "no-run"),
        (vec!["train".into(), "--config".into(), config.display().to_string(), "--backend".into(), "tpu".into()], "tpu"),
    ];
    for (args, want) in cases {
        let out = clip().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
