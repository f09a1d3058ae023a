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

/// `clip train --plain` of `config` into `run`, in the background.
fn spawn_training(config: &Path, run: &Path, output: fn() -> Stdio) -> std::process::Child {
    clip()
        .args(["train", "--plain", "--config"])
        .arg(config)
        .arg("--run-dir")
        .arg(run)
        .stdout(output())
        .stderr(output())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_training_process_resumes_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 150, 4);
    let run = dir.path().join("run");
    let mut child = spawn_training(&config, &run, Stdio::null);
    // Kill it (SIGKILL: no chance to clean up) as soon as a periodic checkpoint exists.
    let start = Instant::now();
    let killed_at = loop {
        let done = std::fs::read_dir(run.join("checkpoints"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name().to_string_lossy().starts_with("step-")
                    && e.path().join("state.json").is_file()
            });
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
    assert!(
        out.status.success(),
        "resume failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("resumed from") && stdout.contains("finished after"), "{stdout}");
    let steps = step_numbers(&run);
    let total = steps.len() as u64;
    assert!(killed_at < total as usize, "killed at {killed_at} of {total}");
    // One line per step, no step twice, none missing: the curve continues where it stopped.
    assert_eq!(steps, (1..=total).collect::<Vec<_>>());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
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

#[cfg(unix)]
#[test]
fn sigterm_stops_training_with_a_checkpoint_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 150, 50);
    let run = dir.path().join("run");
    let mut child = spawn_training(&config, &run, Stdio::piped);
    let start = Instant::now();
    while step_numbers(&run).len() < 2 {
        assert!(child.try_wait().unwrap().is_none(), "training ended before the signal");
        assert!(start.elapsed() < Duration::from_secs(120), "no step after 2 minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(143), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("SIGTERM: saving a checkpoint")
            && stdout.contains("continue with: clip train --resume"),
        "{stdout}"
    );
    // The checkpoint holds the last logged step, well before the 50 epochs' end.
    let steps = step_numbers(&run);
    let last = *steps.last().unwrap();
    assert!(last < 100, "stopped at step {last}");
    assert!(
        run.join(format!("checkpoints/step-{last:06}/state.json")).is_file(),
        "no checkpoint of step {last}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["completed"], false);

    let more = format!("train.max_steps={}", last + 2);
    let out = clip()
        .args(["train", "--plain", "--resume"])
        .arg(&run)
        .args(["--set", &more])
        .output()
        .unwrap();
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(step_numbers(&run), (1..=last + 2).collect::<Vec<_>>());
}

#[test]
fn data_inspect_reports_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 30, 1);
    let out = clip()
        .args(["data", "inspect", "--batches", "2", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "images           30",
        "captions         150",
        "train            24 images",
        "val              6 images",
        "caption tokens   min",
        "ms per batch of 16",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }

    // The training samples as augmented, in a grid; a bad augmentation value names its key.
    let png = dir.path().join("preview.png");
    let jitter = [
        "--set",
        "data.augment.color_jitter=[0.4,0.4,0.4,0.1]",
        "--set",
        "data.augment.grayscale_prob=0.5",
    ];
    let out = clip()
        .args(["data", "preview", "--samples", "4", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&png)
        .args(jitter)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let grid = image::open(&png).unwrap();
    assert!(
        grid.width() >= 2 * 160 && grid.height() >= 2 * 160,
        "{}x{}",
        grid.width(),
        grid.height()
    );
    // Its own preview is replaced; a picture of the user's is not, unless --overwrite.
    let out = clip()
        .args(["data", "preview", "--samples", "1", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mine = dir.path().join("holiday.png");
    image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3])).save(&mine).unwrap();
    let before = std::fs::read(&mine).unwrap();
    let out = clip()
        .args(["data", "preview", "--samples", "1", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&mine)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("holiday.png")
            && err.contains("--overwrite")
            && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(std::fs::read(&mine).unwrap(), before);
    let out = clip()
        .args(["data", "preview", "--samples", "1", "--overwrite", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&mine)
        .output()
        .unwrap();
    assert!(
        out.status.success() && std::fs::read(&mine).unwrap() != before,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = clip()
        .args(["data", "preview", "--config"])
        .arg(&config)
        .args(["--set", "data.augment.color_jitter=[0.4,0.4,0.4,0.9]"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("data.augment.color_jitter")
            && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 10, 1);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "train".into(),
                "--config".into(),
                config.display().to_string(),
                "--set".into(),
                "train.lrr=1".into(),
            ],
            "lrr",
        ),
        (
            vec![
                "train".into(),
                "--config".into(),
                dir.path().join("absent.toml").display().to_string(),
            ],
            "absent.toml",
        ),
        (
            vec![
                "train".into(),
                "--resume".into(),
                dir.path().join("no-run").display().to_string(),
            ],
            "no-run",
        ),
        (
            vec![
                "train".into(),
                "--config".into(),
                config.display().to_string(),
                "--backend".into(),
                "tpu".into(),
            ],
            "tpu",
        ),
    ];
    for (args, want) in cases {
        let out = clip().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A broken TOML file: the parser's report (with its line) is said once, after the path.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "name = \"x\"\n[data\nbatch_size = 4\n").unwrap();
    let out = clip().arg("train").arg("--config").arg(&broken).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.toml") && stderr.contains("line 2"), "{stderr}");
    assert_eq!(stderr.matches("line 2").count(), 1, "said twice: {stderr}");
}

/// Every file under `dir` with its bytes (to show that nothing changed).
fn tree(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
                files.push((p, Vec::new()));
            } else {
                files.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// A user's own Flickr30k-layout folder: `results.csv` and `images/` with one photo of theirs.
fn users_flickr_folder(dir: &Path) -> std::path::PathBuf {
    let flickr = dir.join("my-flickr");
    std::fs::create_dir_all(flickr.join("images")).unwrap();
    image::RgbImage::from_fn(20, 20, |x, y| image::Rgb([(x * 12) as u8, (y * 12) as u8, 90]))
        .save(flickr.join("images/1000092795.jpg"))
        .unwrap();
    let mut captions = String::from("image_name| comment_number| comment\n");
    for (k, c) in [
        "Two young guys with shaggy hair look at their hands .",
        "Two friends enjoy time spent together .",
        "Two men in green shirts stand in a yard .",
        "A man in a blue shirt stands in a garden .",
        "Two young men hang out in the yard .",
    ]
    .iter()
    .enumerate()
    {
        captions.push_str(&format!("1000092795.jpg| {k}| {c}\n"));
    }
    std::fs::write(flickr.join("results.csv"), captions).unwrap();
    flickr
}

#[test]
fn the_quickstart_config_pointed_at_a_users_flickr_folder_never_writes_into_it() {
    // What anyone adapting the quickstart does: its config (with its [data.synthetic]), the data
    // paths pointed at their own Flickr folder.
    let dir = tempfile::tempdir().unwrap();
    let flickr = users_flickr_folder(dir.path());
    let before = tree(&flickr);
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quickstart.toml");
    assert!(std::fs::read_to_string(&quickstart).unwrap().contains("[data.synthetic]"));
    let captions = format!("data.captions={}", flickr.join("results.csv").display());
    let images = format!("data.images={}", flickr.join("images").display());
    let sets = ["--set", captions.as_str(), "--set", images.as_str()];
    let run = dir.path().join("run");
    let attempts: Vec<Vec<std::ffi::OsString>> = vec![
        ["data", "inspect", "--batches", "1"].iter().map(Into::into).collect(),
        ["train", "--plain", "--backend", "cpu"]
            .iter()
            .map(Into::into)
            .chain(["--run-dir".into(), run.clone().into_os_string()])
            .collect(),
    ];
    for args in attempts {
        let out = clip().args(&args).arg("--config").arg(&quickstart).args(sets).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} should refuse: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            err.contains(&flickr.display().to_string()) && err.contains("`results.csv`"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("remove the `[data.synthetic]` section")
                && err.contains("--set data.synthetic=none"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(tree(&flickr), before, "{args:?} changed the user's folder");
    }
    // A run is not written into their folder either.
    let out = clip()
        .args(["train", "--plain", "--backend", "cpu", "--config"])
        .arg(&quickstart)
        .args(sets)
        .args(["--set", "data.synthetic=none", "--run-dir"])
        .arg(&flickr)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("new or empty folder") && !err.contains("panicked"),
        "{err}"
    );
    // What the error says to do works: their dataset, read as it is.
    let out = clip()
        .args(["data", "inspect", "--batches", "1", "--config"])
        .arg(&quickstart)
        .args(sets)
        .args(["--set", "data.synthetic=none"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("images           1") && stdout.contains("captions         5"),
        "{stdout}"
    );
    assert_eq!(tree(&flickr), before, "byte-identical afterwards");
}

#[test]
fn synthetic_data_is_generated_only_into_missing_empty_or_its_own_folders() {
    let dir = tempfile::tempdir().unwrap();
    let synth = |out: &Path, seed: &str| {
        clip()
            .args(["data", "synth", "--images", "3", "--size", "16", "--seed", seed, "--out"])
            .arg(out)
            .output()
            .unwrap()
    };
    let missing = dir.path().join("new/shapes");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for out in [&missing, &empty] {
        let o = synth(out, "0");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            out.join("results.csv").is_file()
                && out.join("images/00002.jpg").is_file()
                && out.join("synth.json").is_file()
        );
    }
    // Its own folder, another config: regenerated.
    let first = std::fs::read(missing.join("images/00000.jpg")).unwrap();
    let o = synth(&missing, "7");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(std::fs::read(missing.join("images/00000.jpg")).unwrap(), first);
    assert!(std::fs::read_to_string(missing.join("synth.json")).unwrap().contains("\"seed\": 7"));
    // A config whose [data.synthetic] points at a generated folder still generates into it.
    let config = write_config(dir.path(), 12, 1);
    inspect_shows(&config, &["images           12"]);
    let text = std::fs::read_to_string(&config).unwrap().replace("images = 12\n", "images = 10\n");
    std::fs::write(&config, text).unwrap();
    inspect_shows(&config, &["images           10"]);
    // A folder of the user's: refused, unchanged.
    let flickr = users_flickr_folder(dir.path());
    let before = tree(&flickr);
    let o = synth(&flickr, "0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(&flickr.display().to_string())
            && err.contains("missing or empty folder")
            && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(tree(&flickr), before);
}

/// Trains a tiny model for a few steps and returns its run directory.
fn tiny_run(dir: &Path, name: &str, seed: u64) -> std::path::PathBuf {
    let config = write_config(dir, 30, 1);
    let run = dir.join(name);
    let out = clip()
        .args(["train", "--plain", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(&run)
        .args(["--set", "train.max_steps=3", "--set", &format!("train.seed={seed}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    run
}

fn run_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = clip().args(args).args(["--backend", "cpu"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `clip` with `args` (no backend flag: data commands), expecting success.
fn run_ok_plain(args: &[&std::ffi::OsStr]) -> String {
    let out = clip().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn run_err(args: &[&std::ffi::OsStr]) -> String {
    let out = clip().args(args).args(["--backend", "cpu"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn embed_search_zero_shot_and_eval_on_a_trained_run() {
    use std::ffi::OsStr;
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "run", 1);
    let images = dir.path().join("data/images");
    // A folder with a few images, a non-image file that claims to be one, and a text file.
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    for name in ["00000.jpg", "00001.jpg", "00002.jpg"] {
        std::fs::copy(images.join(name), folder.join(name)).unwrap();
    }
    std::fs::copy(images.join("00003.jpg"), folder.join("sub/00003.jpg")).unwrap();
    std::fs::write(folder.join("broken.jpg"), b"not a picture").unwrap();
    std::fs::write(folder.join("notes.txt"), b"ignored").unwrap();
    let index = dir.path().join("index");
    let o = |s: &str| OsStr::new(s).to_os_string();
    let (run_s, folder_s, index_s) = (run.as_os_str(), folder.as_os_str(), index.as_os_str());

    let out = run_ok(&[
        &o("embed"),
        &o("--checkpoint"),
        run_s,
        &o("--images"),
        folder_s,
        &o("--out"),
        index_s,
    ]);
    assert!(out.contains("5 images: 0 already indexed, 5 to embed"), "{out}");
    assert!(out.contains("skipped") && out.contains("broken.jpg"), "{out}");
    assert!(out.contains("index") && out.contains("4 images"), "{out}");
    // numpy-readable matrix, one row per image.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(index.join("index.json")).unwrap()).unwrap();
    let npy = std::fs::read(index.join(meta["embeddings"].as_str().unwrap())).unwrap();
    assert!(
        npy.starts_with(b"\x93NUMPY")
            && String::from_utf8_lossy(&npy[..128]).contains("'shape': (4, 16)")
    );

    // A grown folder: only the new image is embedded.
    std::fs::copy(images.join("00004.jpg"), folder.join("00004.jpg")).unwrap();
    let out = run_ok(&[
        &o("embed"),
        &o("--checkpoint"),
        run_s,
        &o("--images"),
        folder_s,
        &o("--out"),
        index_s,
    ]);
    assert!(out.contains("6 images: 4 already indexed, 2 to embed"), "{out}");

    let grid = dir.path().join("grid.png");
    let out = run_ok(&[
        &o("search"),
        &o("--index"),
        index_s,
        &o("a large red circle"),
        &o("-k"),
        &o("4"),
        &o("--grid"),
        grid.as_os_str(),
    ]);
    assert_eq!(out.lines().filter(|l| l.contains("folder/")).count(), 4, "{out}");
    assert!(grid.is_file());
    let query = folder.join("00001.jpg");
    let out = run_ok(&[
        &o("search"),
        &o("--index"),
        index_s,
        &o("--image"),
        query.as_os_str(),
        &o("-k"),
        &o("1"),
        &o("--grid"),
        grid.as_os_str(),
    ]);
    assert!(
        out.lines().any(|l| l.starts_with("1.0000") && l.contains("00001.jpg")),
        "an image finds itself first: {out}"
    );
    let out = run_ok(&[
        &o("search"),
        &o("--index"),
        index_s,
        &o("--image"),
        query.as_os_str(),
        &o("--captions"),
        &o("a red circle,a blue square"),
    ]);
    assert_eq!(
        out.lines().filter(|l| l.contains("a red circle") || l.contains("a blue square")).count(),
        2,
        "{out}"
    );

    // Nothing clip did not write is replaced or written into (its grid above was replaced).
    let folder_before = tree(&folder);
    let mine = dir.path().join("mine.png");
    std::fs::write(&mine, b"my picture").unwrap();
    let err =
        run_err(&[&o("search"), &o("--index"), index_s, &o("red"), &o("--grid"), mine.as_os_str()]);
    assert!(
        err.contains("mine.png")
            && err.contains("not written by clip")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(&mine).unwrap(), b"my picture");
    run_ok(&[
        &o("search"),
        &o("--index"),
        index_s,
        &o("red"),
        &o("--grid"),
        mine.as_os_str(),
        &o("--overwrite"),
    ]);
    assert!(image::open(&mine).is_ok(), "replaced when asked");
    // An index is not written into a folder of photos.
    let err = run_err(&[
        &o("embed"),
        &o("--checkpoint"),
        run_s,
        &o("--images"),
        folder_s,
        &o("--out"),
        folder_s,
    ]);
    assert!(
        err.contains(&folder.display().to_string()) && err.contains("new or empty folder"),
        "{err}"
    );
    let theirs = dir.path().join("theirs.json");
    std::fs::write(&theirs, b"{\"mine\": true}").unwrap();
    let err = run_err(&[
        &o("zero-shot"),
        &o("--checkpoint"),
        run_s,
        &o("--images"),
        folder_s,
        &o("--labels"),
        &o("red,blue"),
        &o("--json"),
        theirs.as_os_str(),
    ]);
    assert!(err.contains("theirs.json") && err.contains("--overwrite"), "{err}");
    let err = run_err(&[&o("eval"), &o("--checkpoint"), run_s, &o("--json"), theirs.as_os_str()]);
    assert!(err.contains("theirs.json") && err.contains("--overwrite"), "{err}");
    let err = run_err(&[
        &o("probe"),
        &o("--checkpoint"),
        run_s,
        &o("--labels"),
        &o("x.csv"),
        &o("--json"),
        theirs.as_os_str(),
    ]);
    assert!(err.contains("theirs.json") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&theirs).unwrap(), b"{\"mine\": true}");
    let out = clip()
        .args(["export", "--checkpoint"])
        .arg(&run)
        .arg("--out")
        .arg(&folder)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&folder.display().to_string())
            && err.contains("new or empty folder")
            && !err.contains("panicked"),
        "{err}"
    );
    let err = run_err(&[
        &o("train"),
        &o("--config"),
        dir.path().join("exp.toml").as_os_str(),
        &o("--run-dir"),
        folder_s,
    ]);
    assert!(
        err.contains(&folder.display().to_string())
            && err.contains("--run-dir a new or empty folder"),
        "{err}"
    );
    assert_eq!(tree(&folder), folder_before, "the folder of photos is as it was");

    // Zero-shot with folder names as ground truth.
    let classes = dir.path().join("classes");
    for (class, name) in [("red", "00000.jpg"), ("red", "00001.jpg"), ("blue", "00002.jpg")] {
        std::fs::create_dir_all(classes.join(class)).unwrap();
        std::fs::copy(images.join(name), classes.join(class).join(name)).unwrap();
    }
    let report = dir.path().join("zs.json");
    let out = run_ok(&[
        &o("zero-shot"),
        &o("--checkpoint"),
        run_s,
        &o("--images"),
        classes.as_os_str(),
        &o("--labels"),
        &o("red,blue"),
        &o("--json"),
        report.as_os_str(),
    ]);
    assert!(out.contains("on 3 labelled images") && out.contains("true\\pred"), "{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        (r["evaluated"].as_u64(), r["written_by"].as_str()),
        (Some(3), Some("clip zero-shot"))
    );
    let total: u64 = r["confusion"]["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 3);

    let out = run_ok(&[&o("eval"), &o("--checkpoint"), run_s]);
    assert!(out.contains("text→image") && out.contains("median rank"), "{out}");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval-val.json")).unwrap()).unwrap();
    assert_eq!(e["retrieval"]["images"], 6);
    assert!(e.get("label_retrieval").is_none());

    // Class level (a hit is any image of the same shape): never below the instance level.
    let labels = dir.path().join("data/labels.csv");
    let out = run_ok(&[
        &o("eval"),
        &o("--checkpoint"),
        run_s,
        &o("--labels"),
        labels.as_os_str(),
        &o("--label-column"),
        &o("shape"),
    ]);
    assert!(out.contains("class level"), "{out}");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval-val.json")).unwrap()).unwrap();
    for key in ["t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5"] {
        let (class, instance) =
            (e["label_retrieval"][key].as_f64().unwrap(), e["retrieval"][key].as_f64().unwrap());
        assert!(class >= instance && class <= 1.0, "{key}: class {class} < instance {instance}");
    }
    let err = run_err(&[
        &o("eval"),
        &o("--checkpoint"),
        run_s,
        &o("--labels"),
        labels.as_os_str(),
        &o("--label-column"),
        &o("flavour"),
    ]);
    assert!(err.contains("flavour") && err.contains("labels.csv"), "{err}");

    // Linear probe on the run's split: fitted on the 24 training images, scored on the 6 held out.
    let out = run_ok(&[
        &o("probe"),
        &o("--checkpoint"),
        run_s,
        &o("--labels"),
        labels.as_os_str(),
        &o("--label-column"),
        &o("shape"),
    ]);
    assert!(
        out.contains("24 training and 6 test images") && out.contains("test accuracy"),
        "{out}"
    );
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("probe.json")).unwrap()).unwrap();
    assert_eq!((p["train_images"].as_u64(), p["test_images"].as_u64()), (Some(24), Some(6)));
    assert_eq!(p["sweep"].as_array().unwrap().len(), 9, "{p}");
    let matrix: Vec<Vec<u64>> = serde_json::from_value(p["confusion"]["matrix"].clone()).unwrap();
    let hits: u64 = (0..matrix.len()).map(|i| matrix[i][i]).sum();
    assert_eq!(matrix.iter().flatten().sum::<u64>(), 6);
    assert!((p["test_accuracy"].as_f64().unwrap() - hits as f64 / 6.0).abs() < 1e-9, "{p}");
    // A given penalty skips the sweep; a sample of the training images; folders instead of the split.
    let report = dir.path().join("probe.json");
    run_ok(&[
        &o("probe"),
        &o("--checkpoint"),
        run_s,
        &o("--labels"),
        labels.as_os_str(),
        &o("--label-column"),
        &o("shape"),
        &o("--l2"),
        &o("0.01"),
        &o("--max-train-images"),
        &o("10"),
        &o("--json"),
        report.as_os_str(),
    ]);
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        (p["train_images"].as_u64(), p["l2"].as_f64(), p["sweep"].as_array().map(Vec::len)),
        (Some(10), Some(0.01), Some(0)),
        "{p}"
    );
    let out = run_ok(&[
        &o("probe"),
        &o("--checkpoint"),
        run_s,
        &o("--labels"),
        labels.as_os_str(),
        &o("--label-column"),
        &o("shape"),
        &o("--train-images"),
        images.as_os_str(),
        &o("--test-images"),
        folder_s,
        &o("--json"),
        report.as_os_str(),
    ]);
    assert!(out.contains("30 training and 6 test images") && out.contains("broken.jpg"), "{out}");
    let err = run_err(&[
        &o("probe"),
        &o("--checkpoint"),
        run_s,
        &o("--labels"),
        labels.as_os_str(),
        &o("--label-column"),
        &o("flavour"),
    ]);
    assert!(err.contains("flavour") && err.contains("labels.csv"), "{err}");
    let err = run_err(&[
        &o("probe"),
        &o("--checkpoint"),
        run_s,
        &o("--labels"),
        labels.as_os_str(),
        &o("--l2=-1"),
    ]);
    assert!(err.contains("--l2"), "{err}");

    // ONNX export: both towers, the tokenizer, the preprocessing in the files' metadata (the
    // numbers they compute are checked against an ONNX runtime in clip-model's tests).
    let exported = dir.path().join("exported");
    let out =
        run_ok_plain(&[&o("export"), &o("--checkpoint"), run_s, &o("--out"), exported.as_os_str()]);
    assert!(out.contains("image_encoder.onnx") && out.contains("text_encoder.onnx"), "{out}");
    use clip_model::onnx_proto::ModelProto;
    use prost::Message;
    let image_model =
        ModelProto::decode(std::fs::read(exported.join("image_encoder.onnx")).unwrap().as_slice())
            .unwrap();
    let text_model =
        ModelProto::decode(std::fs::read(exported.join("text_encoder.onnx")).unwrap().as_slice())
            .unwrap();
    let names = |m: &ModelProto, inputs: bool| -> Vec<String> {
        let g = m.graph.as_ref().unwrap();
        (if inputs { &g.input } else { &g.output }).iter().map(|v| v.name.clone()).collect()
    };
    assert_eq!(
        (names(&image_model, true), names(&image_model, false)),
        (vec!["pixel_values".to_string()], vec!["image_embeds".to_string()])
    );
    assert_eq!(names(&text_model, true), ["input_ids", "attention_mask"]);
    assert_eq!(names(&text_model, false), ["text_embeds"]);
    let meta = |key: &str| {
        image_model.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.clone())
    };
    assert_eq!(meta("image_size").as_deref(), Some("32"));
    assert!(meta("model_card").is_some_and(|c| c.contains("projection_dim")));
    let tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("tokenizer.json")).unwrap())
            .unwrap();
    assert_eq!(tokenizer["model"]["type"], "WordPiece");
    assert!(exported.join("model.json").is_file());
    // An earlier export is recognised and replaced.
    let out =
        run_ok_plain(&[&o("export"), &o("--checkpoint"), run_s, &o("--out"), exported.as_os_str()]);
    assert!(out.contains("image_encoder.onnx"), "{out}");
    let out = clip()
        .args(["export", "--checkpoint"])
        .arg(dir.path().join("no-such-run"))
        .arg("--out")
        .arg(&exported)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no-such-run") && !err.contains("panicked"),
        "{err}"
    );

    // An index made by another model is refused.
    let other = tiny_run(dir.path(), "other", 2);

    // The two runs side by side: both finished, and the seed is what sets them apart.
    let out = run_ok_plain(&[&o("runs"), dir.path().as_os_str()]);
    let row = |name: &str| {
        out.lines()
            .skip(1)
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row {name}: {out}"))
            .to_string()
    };
    assert!(row("run").contains("finished") && row("other").contains("finished"), "{out}");
    let seeds =
        out.lines().find(|l| l.starts_with("train.seed")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(seeds.split_whitespace().collect::<Vec<_>>(), ["train.seed", "2", "1"], "{out}");
    assert!(!out.contains("train.lr"), "equal settings are not listed: {out}");
    let err = run_err(&[
        &o("search"),
        &o("--index"),
        index_s,
        &o("red"),
        &o("--checkpoint"),
        other.as_os_str(),
    ]);
    assert!(err.contains("built by model") && err.contains("index"), "{err}");
    let err = run_err(&[
        &o("embed"),
        &o("--checkpoint"),
        other.as_os_str(),
        &o("--images"),
        folder_s,
        &o("--out"),
        index_s,
    ]);
    assert!(err.contains("another model"), "{err}");

    // An empty index says so.
    let empty_dir = dir.path().join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let empty_index = dir.path().join("empty-index");
    run_ok(&[
        &o("embed"),
        &o("--checkpoint"),
        run_s,
        &o("--images"),
        empty_dir.as_os_str(),
        &o("--out"),
        empty_index.as_os_str(),
    ]);
    let err = run_err(&[&o("search"), &o("--index"), empty_index.as_os_str(), &o("red")]);
    assert!(err.contains("empty"), "{err}");

    // A run whose weights belong to another architecture: a clear error.
    let card_path = other.join("model.json");
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    card["clip"]["projection_dim"] = serde_json::json!(24);
    std::fs::write(&card_path, serde_json::to_vec(&card).unwrap()).unwrap();
    let err = run_err(&[&o("eval"), &o("--checkpoint"), other.as_os_str()]);
    assert!(err.contains("shape mismatch") && err.contains("projection"), "{err}");
}

/// The generated shapes of `dir/data` (after a first `data inspect`): each image with its captions.
fn synthetic_images(dir: &Path) -> Vec<(String, Vec<String>)> {
    let rows = std::fs::read_to_string(dir.join("data/results.csv")).unwrap();
    let mut images: Vec<(String, Vec<String>)> = Vec::new();
    for row in rows.lines().skip(1) {
        let f: Vec<&str> = row.split('|').map(str::trim).collect();
        match images.last_mut() {
            Some((name, caps)) if name == f[0] => caps.push(f[2].to_string()),
            _ => images.push((f[0].to_string(), vec![f[2].to_string()])),
        }
    }
    images
}

/// `clip data inspect` of `config` succeeds and prints every line of `wants`.
fn inspect_shows(config: &Path, wants: &[&str]) {
    let out = clip()
        .args(["data", "inspect", "--batches", "1", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for want in wants {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
}

#[test]
fn a_karpathy_split_file_defines_train_val_and_a_test_side_that_eval_scores() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 30, 1);
    // Generate the shapes, then describe them in Karpathy's layout: 3 test, 3 val, the rest
    // train or restval.
    let out = clip()
        .args(["data", "inspect", "--batches", "1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let images = synthetic_images(dir.path());
    let entries: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(i, (name, caps))| {
            let split = ["test", "val", "train", "restval"][if i < 3 {
                0
            } else if i < 6 {
                1
            } else {
                2 + i % 2
            }];
            let sentences: Vec<serde_json::Value> =
                caps.iter().map(|c| serde_json::json!({"raw": c})).collect();
            serde_json::json!({"filename": name, "split": split, "sentences": sentences})
        })
        .collect();
    std::fs::write(
        dir.path().join("data/karpathy.json"),
        serde_json::to_vec(&serde_json::json!({"images": entries})).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[data.synthetic]\nimages = 30\nimage_size = 32\n", "");
    let config = dir.path().join("karpathy.toml");
    std::fs::write(
        &config,
        text.replace(
            "captions = \"data/results.csv\"",
            "format = \"karpathy\"\ncaptions = \"data/karpathy.json\"",
        ),
    )
    .unwrap();

    inspect_shows(
        &config,
        &[
            "train            24 images, 120 captions",
            "val              3 images",
            "test             3 images, 15 captions",
        ],
    );

    let run = dir.path().join("run");
    let out = clip()
        .args(["train", "--plain", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(&run)
        .args(["--set", "train.max_steps=2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    let side = |s: &str| {
        split[s]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(side("test"), images[..3].iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
    assert_eq!((side("train").len(), side("val").len()), (24, 3));

    let out = run_ok(&[run.as_os_str(), "--split".as_ref(), "test".as_ref()].iter().fold(
        vec!["eval".as_ref(), "--checkpoint".as_ref()],
        |mut v, a| {
            v.push(*a);
            v
        },
    ));
    assert!(out.contains("on the test split: 3 images, 15 captions"), "{out}");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval-test.json")).unwrap())
            .unwrap();
    assert_eq!(e["retrieval"]["images"], 3);

    // A random split has no test side: a clear error.
    let plain = tiny_run(dir.path(), "plain", 1);
    let err = run_err(&[
        "eval".as_ref(),
        "--checkpoint".as_ref(),
        plain.as_os_str(),
        "--split".as_ref(),
        "test".as_ref(),
    ]);
    assert!(err.contains("no test images"), "{err}");
}

#[test]
fn training_and_search_read_images_inside_webdataset_shards() {
    use std::ffi::OsStr;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 30, 1);
    let out = clip()
        .args(["data", "inspect", "--batches", "1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The shapes as two shards of 15 samples: `<key>.jpg` + `<key>.txt` (one caption per line).
    let samples: Vec<(String, String)> = synthetic_images(dir.path())
        .into_iter()
        .map(|(name, caps)| (name, caps.join("\n") + "\n"))
        .collect();
    let shards = dir.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    for (s, chunk) in samples.chunks(15).enumerate() {
        let mut tar =
            tar::Builder::new(std::fs::File::create(shards.join(format!("{s:05}.tar"))).unwrap());
        for (name, text) in chunk {
            let key = name.trim_end_matches(".jpg");
            let image = std::fs::read(dir.path().join("data/images").join(name)).unwrap();
            for (member, bytes) in
                [(format!("{key}.jpg"), image), (format!("{key}.txt"), text.clone().into_bytes())]
            {
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                tar.append_data(&mut header, member, bytes.as_slice()).unwrap();
            }
        }
        tar.finish().unwrap();
    }
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[data.synthetic]\nimages = 30\nimage_size = 32\n", "");
    let shard_config = dir.path().join("shards.toml");
    let webdataset = "format = \"webdataset\"\ncaptions = \"shards\"\nimages = \"shards\"";
    std::fs::write(
        &shard_config,
        text.replace("captions = \"data/results.csv\"\nimages = \"data/images\"", webdataset),
    )
    .unwrap();

    inspect_shows(
        &shard_config,
        &["images           30", "captions         150", "train            24 images"],
    );
    let run = dir.path().join("run");
    let out = clip()
        .args(["train", "--plain", "--config"])
        .arg(&shard_config)
        .arg("--run-dir")
        .arg(&run)
        .args(["--set", "train.max_steps=2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let split = std::fs::read_to_string(run.join("split.json")).unwrap();
    assert!(split.contains("00000.tar/") && split.contains("00001.tar/"), "{split}");

    let o = |s: &str| OsStr::new(s).to_os_string();
    let out = run_ok(&[&o("eval"), &o("--checkpoint"), run.as_os_str()]);
    assert!(out.contains("6 images, 30 captions"), "{out}");
    let index = dir.path().join("index");
    let out = run_ok(&[
        &o("embed"),
        &o("--checkpoint"),
        run.as_os_str(),
        &o("--split"),
        &o("val"),
        &o("--out"),
        index.as_os_str(),
    ]);
    assert!(out.contains("6 to embed") && out.contains("0 skipped"), "{out}");
    let out = run_ok(&[
        &o("embed"),
        &o("--checkpoint"),
        run.as_os_str(),
        &o("--split"),
        &o("val"),
        &o("--out"),
        index.as_os_str(),
    ]);
    assert!(
        out.contains("6 already indexed, 0 to embed"),
        "unchanged shard members are not embedded again: {out}"
    );
    let grid = dir.path().join("grid.png");
    let out = run_ok(&[
        &o("search"),
        &o("--index"),
        index.as_os_str(),
        &o("a red circle"),
        &o("-k"),
        &o("4"),
        &o("--grid"),
        grid.as_os_str(),
    ]);
    assert_eq!(out.lines().filter(|l| l.contains(".tar/")).count(), 4, "{out}");
    // The grid shows the pictures (not the grey square of an unreadable one).
    let png = image::open(&grid).unwrap().to_rgb8();
    let grey = png.pixels().filter(|p| p.0 == [200, 200, 200]).count();
    assert!(grey < (png.width() * png.height() / 10) as usize, "{grey} grey pixels");

    // `clip data shards` packs a dataset the same way; packing into a folder with shards refuses.
    let packed = dir.path().join("packed");
    let out = run_ok_plain(&[
        &o("data"),
        &o("shards"),
        &o("--config"),
        config.as_os_str(),
        &o("--out"),
        packed.as_os_str(),
        &o("--samples-per-shard"),
        &o("8"),
    ]);
    assert!(out.contains("wrote 30 samples (150 captions) into 4 shards"), "{out}");
    let again = clip()
        .args([
            o("data"),
            o("shards"),
            o("--config"),
            config.clone().into_os_string(),
            o("--out"),
            packed.clone().into_os_string(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success()
            && err.contains("packed")
            && err.contains("not empty")
            && err.contains("new or empty --out"),
        "{err}"
    );
    let packed_config = dir.path().join("packed.toml");
    std::fs::write(
        &packed_config,
        text.replace(
            "captions = \"data/results.csv\"\nimages = \"data/images\"",
            "format = \"webdataset\"\ncaptions = \"packed\"\nimages = \"packed\"",
        ),
    )
    .unwrap();
    let out = run_ok_plain(&[
        &o("data"),
        &o("inspect"),
        &o("--batches"),
        &o("1"),
        &o("--config"),
        packed_config.as_os_str(),
    ]);
    assert!(out.contains("images           30") && out.contains("captions         150"), "{out}");

    // `data.images` must be where the shards are.
    std::fs::write(
        &shard_config,
        text.replace(
            "captions = \"data/results.csv\"\nimages = \"data/images\"",
            "format = \"webdataset\"\ncaptions = \"shards\"\nimages = \"data/images\"",
        ),
    )
    .unwrap();
    let err = run_err(&[&o("train"), &o("--plain"), &o("--config"), shard_config.as_os_str()]);
    assert!(err.contains("data.images") && err.contains("shards"), "{err}");
}

/// A `clip serve` process, killed when dropped (a failing test leaves no server behind).
struct Served(std::process::Child);
impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request; the status and the body of the reply.
fn http(address: &str, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "{method} {target} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    stream.write_all(body).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").expect("a header");
    let status = String::from_utf8_lossy(&reply[..split])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, reply[split + 4..].to_vec())
}

#[test]
fn serve_answers_text_and_image_queries_like_search_does() {
    use std::ffi::OsStr;
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "run", 3);
    let images = dir.path().join("data/images");
    let index = dir.path().join("index");
    let o = |s: &str| OsStr::new(s).to_os_string();
    run_ok(&[
        &o("embed"),
        &o("--checkpoint"),
        run.as_os_str(),
        &o("--images"),
        images.as_os_str(),
        &o("--out"),
        index.as_os_str(),
    ]);
    let grid = dir.path().join("grid.png");
    let searched = run_ok(&[
        &o("search"),
        &o("--index"),
        index.as_os_str(),
        &o("a small blue square"),
        &o("-k"),
        &o("5"),
        &o("--grid"),
        grid.as_os_str(),
    ]);
    let want: Vec<String> = searched
        .lines()
        .filter(|l| l.contains(".jpg"))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    assert_eq!(want.len(), 5, "{searched}");

    let child = clip()
        .args(["serve", "--backend", "cpu", "--port", "0", "--index"])
        .arg(&index)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut served = Served(child);
    let mut line = String::new();
    std::io::BufReader::new(served.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("serving 30 images"), "{line}");
    let address = line.trim().rsplit("http://").next().unwrap().trim_end_matches('/').to_string();

    // Text → image: the same ranking as `clip search`.
    let (status, body) = http(&address, "GET", "/search?q=a+small+blue%20square&k=5", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let got: Vec<String> = reply["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(reply["images"], 30);

    // The images are served, and an uploaded one finds itself first.
    let first = reply["matches"][0]["url"].as_str().unwrap().to_string();
    let (status, bytes) = http(&address, "GET", &first, b"");
    assert_eq!(status, 200);
    assert_eq!(bytes, std::fs::read(&want[0]).unwrap());
    let (status, body) = http(&address, "POST", "/search?k=1", &bytes);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["matches"][0]["path"].as_str().unwrap(), want[0]);
    assert!((reply["matches"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4, "{reply}");

    // Bad requests get a status and a JSON message; the server keeps serving.
    for (method, target, body, status, says) in [
        ("GET", "/search", &b""[..], 400, "text query"),
        ("GET", "/search?q=red&k=zero", b"", 400, "k must be"),
        ("POST", "/search", b"not an image", 400, "cannot decode"),
        ("GET", "/image/30", b"", 404, "no image"),
        ("GET", "/elsewhere", b"", 404, "nothing at"),
    ] {
        let (got, body) = http(&address, method, target, body);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(got, status, "{method} {target}: {text}");
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(error["error"].as_str().unwrap().contains(says), "{method} {target}: {text}");
    }
    // An upload announced as too large is refused before it is read.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(stream, "POST /search HTTP/1.1\r\nHost: {address}\r\nContent-Length: 40000000\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = vec![0u8; 12];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&reply));
    }
    let (status, page) = http(&address, "GET", "/", b"");
    assert!(status == 200 && String::from_utf8_lossy(&page).contains("<form"));
    let (status, _) = http(&address, "GET", "/health", b"");
    assert_eq!(status, 200);
}

#[test]
fn a_sweep_trains_every_combination_and_compares_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 30, 1);
    let out = clip()
        .args([
            "sweep",
            "--plain",
            "--backend",
            "cpu",
            "--set",
            "train.max_steps=2",
            "--grid",
            "train.seed=1,2",
            "--grid",
            "train.lr=1e-3,3e-4",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("sweep: 4 runs"), "{stdout}");
    let runs_dir = config.parent().unwrap().join("runs");
    let mut made: Vec<String> = std::fs::read_dir(&runs_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    made.sort();
    assert_eq!(made.len(), 4, "{made:?}");
    assert!(made.iter().all(|n| n.contains("-seed=") && n.contains("-lr=")), "{made:?}");
    // The comparison at the end: every run finished, and the two settings that vary are listed.
    assert_eq!(stdout.lines().filter(|l| l.contains(" finished ")).count(), 4, "{stdout}");
    for key in ["train.seed", "train.lr"] {
        assert!(stdout.lines().any(|l| l.starts_with(key)), "no {key} row: {stdout}");
    }
    // A bad value in the grid fails before anything trains, naming the key.
    let out = clip()
        .args(["sweep", "--grid", "train.lr=1e-3,fast", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("train.lr") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&runs_dir).unwrap().count(), 4);
}

/// burn's LibTorch backend beside Flex (`cargo test -p clip-cli --features tch`, with the
/// LibTorch of `cargo xtask libtorch`): the same training steps, checkpoints that move between
/// them, the inference commands.
#[cfg(feature = "tch")]
mod tch {
    use super::*;
    use std::path::PathBuf;

    /// A tiny run of `steps` steps on `backend` with no dropout (each backend draws its own
    /// dropout masks; the initial weights are drawn alike on every backend).
    fn train(dir: &Path, name: &str, backend: &str, steps: usize, sets: &[&str]) -> PathBuf {
        let config = write_config(dir, 48, 1);
        let run = dir.join(name);
        let mut cmd = clip();
        cmd.args(["train", "--plain", "--backend", backend, "--config"]).arg(&config);
        cmd.arg("--run-dir").arg(&run);
        for set in [
            format!("train.max_steps={steps}"),
            "model.dropout=0.0".into(),
            "model.text.dropout=0.0".into(),
            "model.text.attention_dropout=0.0".into(),
            // Clipping far above the norms seen: the gradient norm is measured and logged.
            "train.grad_clip_norm=1000.0".into(),
        ]
        .iter()
        .map(String::as_str)
        .chain(sets.iter().copied())
        {
            cmd.args(["--set", set]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{backend}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        run
    }

    /// (loss, gradient norm) of every logged step.
    fn curve(run: &Path) -> Vec<(f64, f64)> {
        std::fs::read_to_string(run.join("metrics/steps.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            // fp16-mixed logs no gradient norm (its gradients are scaled): NaN stands for it.
            .map(|v| (v["loss"].as_f64().unwrap(), v["grad_norm"].as_f64().unwrap_or(f64::NAN)))
            .collect()
    }

    /// Asserts two curves agree within `tolerance`, relative to each value.
    fn assert_close(a: &[(f64, f64)], b: &[(f64, f64)], tolerance: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: step counts differ");
        for (i, ((la, ga), (lb, gb))) in a.iter().zip(b).enumerate() {
            let norms =
                [(ga, gb, "grad norm")].into_iter().filter(|(x, y, _)| !(x.is_nan() && y.is_nan()));
            for (x, y, name) in [(la, lb, "loss")].into_iter().chain(norms) {
                assert!(
                    (x - y).abs() <= tolerance * x.abs().max(y.abs()).max(1e-3),
                    "{what}: step {} {name}: {x} vs {y}\n{a:?}\n{b:?}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn five_training_steps_on_libtorch_match_flex() {
        let dir = tempfile::tempdir().unwrap();
        let flex = curve(&train(dir.path(), "flex", "cpu", 5, &[]));
        let tch = curve(&train(dir.path(), "tch", "tch", 5, &[]));
        assert_eq!(flex.len(), 5);
        // Different kernels sum in different orders: f32 rounding, compounded over 5 Adam steps.
        assert_close(&flex, &tch, 1e-4, "fp32");
        // The loss moved: the steps trained something.
        assert!(flex[4].0 < flex[0].0, "{flex:?}");
    }

    #[test]
    fn micro_batches_recomputation_and_mixed_precision_run_on_libtorch() {
        let dir = tempfile::tempdir().unwrap();
        let split = ["train.micro_batches=2", "train.recompute_activations=true"];
        let flex = curve(&train(dir.path(), "flex-split", "cpu", 4, &split));
        let tch = curve(&train(dir.path(), "tch-split", "tch", 4, &split));
        assert_close(&flex, &tch, 1e-4, "micro-batches + recomputation");

        let fp32 = curve(&train(dir.path(), "tch-fp32", "tch", 1, &[]));
        for precision in ["bf16-mixed", "fp16-mixed"] {
            let set = [format!("train.precision=\"{precision}\"")];
            let set: Vec<&str> = set.iter().map(String::as_str).collect();
            let flex = curve(&train(dir.path(), &format!("flex-{precision}"), "cpu", 3, &set));
            let tch = curve(&train(dir.path(), &format!("tch-{precision}"), "tch", 3, &set));
            // The first step's forward pass sees the same weights on both backends: the losses
            // agree to the 16-bit formats' resolution (bf16 keeps 8 bits of mantissa), and
            // stay near the f32 loss. Measured: Flex and LibTorch within 0.4% (bf16), the
            // bf16 gradient norms 5-7% below the f32 one on each backend. After the first step
            // rounding differences grow step by step (lr 1e-3 on a tiny model): finite, then.
            let ((lf, gf), (lt, gt)) = (flex[0], tch[0]);
            assert!(
                (lf - lt).abs() < 1e-2 * lf && !((gf - gt).abs() > 0.1 * gf),
                "{precision}: {flex:?} vs {tch:?}"
            );
            assert!((tch[0].0 - fp32[0].0).abs() < 2e-2 * fp32[0].0, "{tch:?} vs f32 {fp32:?}");
            assert!(tch.iter().all(|(l, g)| l.is_finite() && !g.is_infinite()), "{tch:?}");
        }
    }

    #[test]
    fn a_checkpoint_written_on_flex_resumes_on_libtorch_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let whole = curve(&train(dir.path(), "whole", "cpu", 8, &[]));
        let run = train(dir.path(), "moved", "cpu", 4, &[]);
        for (backend, steps) in [("tch", 6), ("cpu", 8)] {
            let out = clip()
                .args(["train", "--plain", "--backend", backend, "--resume"])
                .arg(&run)
                .args(["--set", &format!("train.max_steps={steps}")])
                .output()
                .unwrap();
            assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert_eq!(step_numbers(&run), (1..=8).collect::<Vec<_>>());
        assert_close(&whole, &curve(&run), 1e-4, "Flex 4 steps, LibTorch 2, Flex 2");
    }

    #[test]
    fn inference_commands_run_on_libtorch_and_agree_with_flex() {
        let dir = tempfile::tempdir().unwrap();
        let run = tiny_run(dir.path(), "run", 5);
        let images = dir.path().join("data/images");
        let mut ranked = Vec::new();
        for backend in ["cpu", "tch"] {
            let index = dir.path().join(format!("index-{backend}"));
            let embed = clip()
                .args(["embed", "--backend", backend, "--checkpoint"])
                .arg(&run)
                .arg("--images")
                .arg(&images)
                .arg("--out")
                .arg(&index)
                .output()
                .unwrap();
            assert!(embed.status.success(), "{}", String::from_utf8_lossy(&embed.stderr));
            let search = clip()
                .args(["search", "--backend", backend, "--index"])
                .arg(&index)
                .args(["a red circle", "-k", "5"])
                .output()
                .unwrap();
            assert!(search.status.success(), "{}", String::from_utf8_lossy(&search.stderr));
            ranked.push(String::from_utf8_lossy(&search.stdout).into_owned());
        }
        // The same images in the same order (scores printed may differ in the last digit).
        let names = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| l.contains(".jpg"))
                .filter_map(|l| l.split_whitespace().last().map(String::from))
                .collect()
        };
        assert_eq!(names(&ranked[0]).len(), 5, "{ranked:?}");
        assert_eq!(names(&ranked[0]), names(&ranked[1]), "{ranked:?}");

        // Without a GPU, `auto` takes LibTorch's CPU kernels over Flex's, and says so.
        let auto = clip()
            .args(["search", "--backend", "auto", "--index"])
            .arg(dir.path().join("index-tch"))
            .args(["a red circle", "-k", "5"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&auto.stderr);
        assert!(auto.status.success(), "{said}");
        assert!(said.contains("auto picked tch (libtorch cpu)"), "{said}");
        assert_eq!(names(&String::from_utf8_lossy(&auto.stdout)), names(&ranked[1]));
    }
}

/// Loopback ports nothing listens on now.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<_> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_for(child: std::process::Child, limit: Duration, what: &str) -> std::process::Output {
    let started = std::time::Instant::now();
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still running after {limit:?}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// `--devices 0,1` trains data-parallel (two replicas on the CPU here), says so and records each
/// replica's throughput and exchange time per step; two `clip train` processes on loopback, two
/// nodes of one CPU replica each, train as that one process on two devices does: the same loss
/// curve, written by node 0 alone.
#[test]
fn two_devices_and_two_nodes_train_alike_and_report_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 30, 1);
    let one = dir.path().join("one");
    let out = clip()
        .args(["train", "--plain", "--backend", "cpu", "--devices", "0,1", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(&one)
        .args(["--set", "train.max_steps=3"])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("over 2 devices") && said.contains("replicas #0"), "{said}");
    let steps = std::fs::read_to_string(one.join("metrics/steps.jsonl")).unwrap();
    for line in steps.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let replicas = m["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 2, "{line}");
        assert!(replicas.iter().all(|r| r["samples_per_s"].as_f64().unwrap() > 0.0), "{line}");
    }
    assert_eq!(step_numbers(&one), vec![1, 2, 3]);

    let [coordinator] = free_ports::<1>();
    let two = dir.path().join("two");
    let node = |rank: usize| {
        let mut cmd = clip();
        cmd.args(["train", "--plain", "--backend", "cpu", "--config"])
            .arg(&config)
            .args(["--nodes", "2", "--node-rank", &rank.to_string()])
            .args(["--coordinator", &format!("127.0.0.1:{coordinator}")])
            .args(["--set", "train.max_steps=3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if rank == 0 {
            cmd.arg("--run-dir").arg(&two);
        }
        cmd.spawn().unwrap()
    };
    // Node 1 first: it waits for node 0 to listen.
    let node1 = node(1);
    std::thread::sleep(Duration::from_millis(300));
    let node0 = node(0);
    let limit = Duration::from_secs(240);
    let out1 = wait_for(node1, limit, "node 1");
    let out0 = wait_for(node0, limit, "node 0");
    let said = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    assert!(out0.status.success(), "node 0: {}", said(&out0));
    assert!(out1.status.success(), "node 1: {}", said(&out1));
    assert!(said(&out0).contains("over 2 devices"), "{}", said(&out0));
    assert!(said(&out1).contains("3 steps taken"), "{}", said(&out1));
    // Node 1 wrote no run of its own.
    assert!(!dir.path().join("runs").exists());

    let losses = |run: &Path| -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics/steps.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()
            })
            .collect()
    };
    // Node 0 shows node 1's replica too.
    let steps = std::fs::read_to_string(two.join("metrics/steps.jsonl")).unwrap();
    for line in steps.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let replicas = m["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 2, "{line}");
        assert!(replicas.iter().all(|r| r["samples_per_s"].as_f64().unwrap() > 0.0), "{line}");
    }
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 3);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4 * x.abs(), "{a:?} vs {b:?}");
    }
}

/// A build without LibTorch says how to get it when `--backend tch` is asked for.
#[cfg(not(feature = "tch"))]
#[test]
fn the_tch_backend_in_a_build_without_it_is_a_clear_error() {
    let out = clip().args(["bench", "step", "--backend", "tch", "--steps", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("without the `tch` feature") && err.contains("cargo xtask"), "{err}");
    let out = clip().args(["bench", "step", "--backend", "torch"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("auto, cuda, cpu or tch"), "{err}");
}
