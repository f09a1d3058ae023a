//! `clip import` end to end: a seed notebook checkpoint as Lightning writes it becomes a run
//! directory that `clip embed` and `clip search` take, with PyTorch's embeddings; tower weights
//! too; and what cannot be imported fails without writing anything.

use std::path::PathBuf;
use std::process::Command;

use clip_infer::index::EmbeddingIndex;

fn clip() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clip"))
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clip-model/tests/fixtures")
}

fn seed(name: &str) -> PathBuf {
    fixtures().join("seed_notebook").join(name)
}

fn run(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = clip().args(args).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn run_ok(args: &[&std::ffi::OsStr]) -> String {
    let (ok, text) = run(args);
    assert!(ok, "clip {args:?} failed:\n{text}");
    text
}

/// The fixture's float32 tensor `name` as rows.
fn expected(name: &str) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(seed("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let values: Vec<f32> =
        t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    values.chunks(t.shape()[1]).map(|r| r.to_vec()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn a_seed_checkpoint_is_imported_embedded_and_searched_with_pytorchs_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("runs/seed");
    let config = seed("seed_tiny.toml");
    let out = run_ok(&[
        os("import"),
        os("--checkpoint"),
        seed("seed_lightning2.ckpt").as_os_str(),
        os("--config"),
        config.as_os_str(),
        os("--out"),
        run_dir.as_os_str(),
    ]);
    // What the checkpoint held besides weights is reported, not fatal.
    for want in [
        "tensors loaded",
        "skipped hyper_parameters",
        "__main__.Config",
        "torch.device",
        "skipped optimizer_states",
        "no split.json",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    for file in ["model.json", "model.safetensors", "config.toml", "import.json"] {
        assert!(run_dir.join(file).is_file(), "{file} missing");
    }

    // The notebook's inference section: embed the images, then find matches for a caption.
    let index = dir.path().join("index");
    let images = seed("images");
    run_ok(&[
        os("embed"),
        os("--checkpoint"),
        run_dir.as_os_str(),
        os("--images"),
        images.as_os_str(),
        os("--out"),
        index.as_os_str(),
        os("--backend"),
        os("cpu"),
    ]);
    let idx = EmbeddingIndex::load(&index).unwrap();
    let theirs = expected("image_embeddings");
    let names: Vec<String> = (0..theirs.len()).map(|i| format!("picture{i}.png")).collect();
    assert_eq!(idx.len(), names.len());
    let mut worst = 1f32;
    for (i, entry) in idx.meta.entries.iter().enumerate() {
        let name = entry.path.file_name().unwrap().to_str().unwrap();
        let k = names.iter().position(|n| n == name).unwrap();
        worst = worst.min(cosine(idx.row(i), &theirs[k]));
    }
    assert!(worst >= 0.99999, "image embeddings: worst cosine to PyTorch's {worst}");

    let grid = dir.path().join("matches.png");
    let out = run_ok(&[
        os("search"),
        os("--index"),
        index.as_os_str(),
        os("dogs on the grass"),
        os("-k"),
        os("6"),
        os("--grid"),
        grid.as_os_str(),
        os("--backend"),
        os("cpu"),
    ]);
    assert!(grid.is_file());
    let ranked: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|p| p.rsplit('/').next())
        .filter(|n| n.starts_with("picture"))
        .collect();
    let query = &expected("text_embeddings")[0];
    let mut want: Vec<(f32, &String)> =
        theirs.iter().zip(&names).map(|(e, n)| (cosine(query, e), n)).collect();
    want.sort_by(|a, b| b.0.total_cmp(&a.0));
    let want: Vec<&str> = want.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(ranked, want, "search ranking vs PyTorch's cosine ranking:\n{out}");

    // `clip runs` tells an imported run from an interrupted training.
    let listing = run_ok(&[os("runs"), dir.path().join("runs").as_os_str()]);
    assert!(listing.lines().any(|l| l.starts_with("seed") && l.contains("imported")), "{listing}");

    // The run directory is never written into again by import.
    let (ok, err) = run(&[
        os("import"),
        os("--checkpoint"),
        seed("seed_pl19.ckpt").as_os_str(),
        os("--config"),
        config.as_os_str(),
        os("--out"),
        run_dir.as_os_str(),
    ]);
    assert!(!ok && err.contains("not empty") && err.contains("nothing was changed"), "{err}");
}

#[test]
fn an_import_with_the_dataset_saves_its_split_and_tower_weights_import_alone() {
    let dir = tempfile::tempdir().unwrap();
    // A small Flickr-layout dataset beside a copy of the tiny config.
    let data = dir.path().join("flickr");
    std::fs::create_dir_all(data.join("images")).unwrap();
    let mut csv = String::from("image_name| comment_number| comment\n");
    for i in 0..20 {
        let name = format!("im{i:02}.png");
        std::fs::copy(
            seed(&format!("images/picture{}.png", i % 6)),
            data.join("images").join(&name),
        )
        .unwrap();
        for k in 0..5 {
            csv.push_str(&format!("{name}| {k}| a dog on the grass number {i}\n"));
        }
    }
    std::fs::write(data.join("results.csv"), csv).unwrap();
    let config = dir.path().join("seed_tiny.toml");
    let text = std::fs::read_to_string(seed("seed_tiny.toml"))
        .unwrap()
        .replace("tokenizer = \"vocab.txt\"", &format!("tokenizer = {:?}", seed("vocab.txt")));
    std::fs::write(&config, text).unwrap();

    let run_dir = dir.path().join("run");
    let out = run_ok(&[
        os("import"),
        os("--checkpoint"),
        seed("seed_pl19.ckpt").as_os_str(),
        os("--config"),
        config.as_os_str(),
        os("--out"),
        run_dir.as_os_str(),
    ]);
    assert!(out.contains("18 training / 2 validation images (numpy-legacy split"), "{out}");
    let split: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("split.json")).unwrap()).unwrap();
    assert_eq!(split["val"].as_array().unwrap().len(), 2);
    let index = dir.path().join("index");
    run_ok(&[
        os("embed"),
        os("--checkpoint"),
        run_dir.as_os_str(),
        os("--split"),
        os("val"),
        os("--out"),
        index.as_os_str(),
        os("--backend"),
        os("cpu"),
    ]);
    assert_eq!(EmbeddingIndex::load(&index).unwrap().len(), 2);

    // Tower weights alone (the image tower from the seed's timm file): heads are new, and said so.
    let towers = dir.path().join("towers");
    let out = run_ok(&[
        os("import"),
        os("--image"),
        fixtures().join("resnet_bottleneck.pth").as_os_str(),
        os("--text"),
        fixtures().join("distilbert").as_os_str(),
        os("--config"),
        config.as_os_str(),
        os("--out"),
        towers.as_os_str(),
    ]);
    assert!(out.contains("projection heads are newly initialized"), "{out}");
    assert!(towers.join("model.safetensors").is_file());
}

#[test]
fn weights_that_do_not_fit_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    // The seed's real architecture (ResNet-50 + DistilBERT-base, the default) cannot take the tiny checkpoint.
    let (ok, err) = run(&[
        os("import"),
        os("--checkpoint"),
        seed("seed_lightning2.ckpt").as_os_str(),
        os("--out"),
        run_dir.as_os_str(),
    ]);
    assert!(!ok && err.contains("shape mismatch") && err.contains("seed_lightning2.ckpt"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!run_dir.exists(), "a failed import left {}", run_dir.display());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no staging directory left behind"
    );

    // Not a torch file at all.
    let junk = dir.path().join("junk.ckpt");
    std::fs::write(&junk, b"PK\x03\x04 not really a zip").unwrap();
    let (ok, err) = run(&[
        os("import"),
        os("--checkpoint"),
        junk.as_os_str(),
        os("--config"),
        seed("seed_tiny.toml").as_os_str(),
        os("--out"),
        run_dir.as_os_str(),
    ]);
    assert!(!ok && err.contains("junk.ckpt") && !err.contains("panicked"), "{err}");
    assert!(!run_dir.exists());

    // A folder of the user's is never written into.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), b"mine").unwrap();
    let (ok, err) = run(&[
        os("import"),
        os("--checkpoint"),
        seed("seed_lightning2.ckpt").as_os_str(),
        os("--config"),
        seed("seed_tiny.toml").as_os_str(),
        os("--out"),
        mine.as_os_str(),
    ]);
    assert!(!ok && err.contains("not empty") && err.contains("nothing was changed"), "{err}");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
    assert_eq!(std::fs::read(mine.join("notes.txt")).unwrap(), b"mine");
}
