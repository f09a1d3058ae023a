//! WebDataset shards: image–caption pairs stored as tar files (`img2dataset`'s output, open_clip's
//! format at scale), read in place. A sample is the members sharing a key (`000123.jpg` with
//! `000123.txt` and/or `000123.json` holding `"caption"`).
//!
//! Each shard's headers are scanned once (data skipped by seeking) into an index of member
//! offsets; an image inside a shard is then named by a path through the tar file,
//! `shards/00000.tar/000123.jpg`, and [`read_image_bytes`] reads its bytes at their offset. Every
//! image reader in the workspace goes through it, so shard images work wherever files do
//! (training, evaluation, `clip embed --split`, search grids).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::captions::{CaptionRecord, ParseReport, ParsedCaptions, RowIssue};
use crate::error::{DataError, Result};

/// Image extensions a sample's image member may have.
const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// Where a member's bytes are inside its tar file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    offset: u64,
    len: u64,
}

/// The members of one shard by name.
#[derive(Debug, Default)]
struct ShardIndex {
    members: HashMap<String, Member>,
}

impl ShardIndex {
    fn scan(path: &Path) -> std::io::Result<Self> {
        let mut archive = tar::Archive::new(File::open(path)?);
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek()? {
            let entry = entry?;
            if entry.header().entry_type().is_file() {
                let name = entry.path()?.to_string_lossy().into_owned();
                members
                    .insert(name, Member { offset: entry.raw_file_position(), len: entry.size() });
            }
        }
        Ok(Self { members })
    }
}

/// Shard indexes built so far in this process (a shard is scanned once).
fn indexes() -> &'static Mutex<HashMap<PathBuf, Arc<ShardIndex>>> {
    static INDEXES: OnceLock<Mutex<HashMap<PathBuf, Arc<ShardIndex>>>> = OnceLock::new();
    INDEXES.get_or_init(Default::default)
}

fn index_of(shard: &Path) -> std::io::Result<Arc<ShardIndex>> {
    if let Some(index) = indexes().lock().unwrap_or_else(|p| p.into_inner()).get(shard) {
        return Ok(index.clone());
    }
    let index = Arc::new(ShardIndex::scan(shard)?);
    indexes().lock().unwrap_or_else(|p| p.into_inner()).insert(shard.to_path_buf(), index.clone());
    Ok(index)
}

/// Splits `shards/00000.tar/000123.jpg` into the tar file and the member name, when a
/// component of the path is a `.tar` file.
fn split_member(path: &Path) -> Option<(PathBuf, String)> {
    let mut shard = PathBuf::new();
    let mut components = path.components();
    for c in components.by_ref() {
        shard.push(c);
        if shard.extension().is_some_and(|e| e == "tar") && shard.is_file() {
            let member: PathBuf = components.collect();
            return Some((shard, member.to_string_lossy().into_owned()));
        }
    }
    None
}

/// Whether `path` names a file, or a member of a shard.
pub fn exists(path: &Path) -> bool {
    path.is_file()
        || split_member(path).is_some_and(|(shard, member)| {
            index_of(&shard).is_ok_and(|i| i.members.contains_key(&member))
        })
}

/// Size and modification time of a file, or of a shard member (its length, its shard's time):
/// what tells an index that an image changed.
pub fn identity(path: &Path) -> std::io::Result<(u64, std::time::SystemTime)> {
    if let Ok(meta) = std::fs::metadata(path) {
        return Ok((meta.len(), meta.modified()?));
    }
    let missing =
        || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or shard member");
    let (shard, member) = split_member(path).ok_or_else(missing)?;
    let m = *index_of(&shard)?.members.get(&member).ok_or_else(missing)?;
    Ok((m.len, std::fs::metadata(&shard)?.modified()?))
}

/// The bytes of a file, or of a member of a shard (`shards/00000.tar/000123.jpg`).
pub fn read_image_bytes(path: &Path) -> Result<Vec<u8>> {
    if path.is_file() {
        return std::fs::read(path).map_err(|e| DataError::io(path, e));
    }
    let not_found = || {
        DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or shard member"),
        )
    };
    let (shard, member) = split_member(path).ok_or_else(not_found)?;
    let index = index_of(&shard).map_err(|e| DataError::io(&shard, e))?;
    let m = *index.members.get(&member).ok_or_else(not_found)?;
    read_at(&shard, m).map_err(|e| DataError::io(path, e))
}

fn read_at(shard: &Path, m: Member) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(shard)?;
    file.seek(SeekFrom::Start(m.offset))?;
    let mut bytes = vec![0u8; m.len as usize];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The shards `location` names: a `.tar` file, or every `.tar` directly in a directory, sorted.
pub fn list_shards(location: &Path) -> Result<Vec<PathBuf>> {
    if location.is_file() {
        return Ok(vec![location.to_path_buf()]);
    }
    let entries = std::fs::read_dir(location).map_err(|e| DataError::io(location, e))?;
    let mut shards: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "tar"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(DataError::Config {
            path: location.into(),
            message: "no `.tar` shards here (data.format = \"webdataset\")".into(),
        });
    }
    Ok(shards)
}

/// Reads the samples of every shard `location` names: one record per caption, the image named
/// `<shard file>/<member>` (relative to the shards' directory, which is `data.images`). A
/// record's `line` is its sample's position in its shard (1-based); samples without an image or
/// a caption are reported as skipped.
pub fn read_samples(location: &Path) -> Result<ParsedCaptions> {
    let mut records = Vec::new();
    let mut report = ParseReport::default();
    for shard in list_shards(location)? {
        let index = index_of(&shard).map_err(|e| DataError::io(&shard, e))?;
        let file_name =
            shard.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Members by sample key (the name up to the first dot of its last component).
        let mut samples: HashMap<&str, Vec<&str>> = HashMap::new();
        for name in index.members.keys() {
            let base = name.rsplit('/').next().unwrap_or(name);
            let stem_len = name.len() - base.len() + base.find('.').unwrap_or(base.len());
            samples.entry(&name[..stem_len]).or_default().push(name.as_str());
        }
        // Samples and their members in the order the shard stores them.
        samples.values_mut().for_each(|m| m.sort_by_key(|name| index.members[*name].offset));
        let mut keys: Vec<&str> = samples.keys().copied().collect();
        keys.sort_by_key(|k| index.members[samples[k][0]].offset);
        for (i, key) in keys.iter().enumerate() {
            let line = i + 1;
            let members = &samples[key];
            let ext = |m: &&str| m.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
            let image = members.iter().find(|m| IMAGE_EXTENSIONS.contains(&ext(m).as_str()));
            let mut captions = Vec::new();
            for m in members.iter() {
                let e = ext(m);
                if e != "txt" && e != "json" {
                    continue;
                }
                let bytes =
                    read_at(&shard, index.members[*m]).map_err(|err| DataError::io(&shard, err))?;
                let text = String::from_utf8_lossy(&bytes);
                if e == "txt" {
                    captions.extend(
                        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from),
                    );
                } else if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                    // img2dataset writes the caption into the json too: use it only without a .txt.
                    if !members.iter().any(|m| ext(m) == "txt") {
                        captions.extend(
                            value
                                .get("caption")
                                .and_then(|c| c.as_str())
                                .map(|c| c.trim().to_string())
                                .filter(|c| !c.is_empty()),
                        );
                    }
                }
            }
            match (image, captions.is_empty()) {
                (Some(image), false) => {
                    let name = format!("{file_name}/{image}");
                    records.extend(captions.into_iter().map(|caption| CaptionRecord {
                        line,
                        image: name.clone(),
                        caption,
                    }));
                }
                (None, _) => report.skipped.push(RowIssue {
                    line,
                    reason: format!("{file_name}: sample {key:?} has no image member"),
                }),
                (Some(_), true) => report.skipped.push(RowIssue {
                    line,
                    reason: format!(
                        "{file_name}: sample {key:?} has no caption (.txt or .json \"caption\")"
                    ),
                }),
            }
        }
    }
    if records.is_empty() {
        return Err(DataError::NoCaptions { path: location.into(), skipped: report.skipped.len() });
    }
    Ok(ParsedCaptions { path: location.into(), records, report, splits: Vec::new() })
}

/// Whether shards may be written into `out`: only when it is missing or empty (an error naming
/// it otherwise; nothing is written).
pub fn claim_shards_dir(out: &Path) -> Result<()> {
    crate::fs::claim_dir(
        out,
        "WebDataset shards",
        |_| false,
        "Choose a new or empty --out (shards are never written over or beside other files; remove an earlier set of shards first to rewrite it).",
    )
    .map(|_| ())
}

/// What [`write_shards`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSummary {
    pub shards: usize,
    pub samples: usize,
    pub captions: usize,
}

/// Packs images and their captions into WebDataset shards of `per_shard` samples under `out`
/// (`00000.tar`, ...): each image's bytes as they are, under its name in the dataset (a `KEY.txt`
/// beside it holds its captions, one per line); an image whose file name has more than one dot
/// is stored under its position instead (WebDataset keys end at the first dot). Each shard is
/// written atomically. `out` must be missing or empty ([`claim_shards_dir`]): shards are never
/// written over, or mixed with, files already there.
pub fn write_shards(
    images: &[crate::ImageCaptions],
    out: &Path,
    per_shard: usize,
) -> Result<ShardSummary> {
    claim_shards_dir(out)?;
    let per_shard = per_shard.max(1);
    let mut summary = ShardSummary { shards: 0, samples: 0, captions: 0 };
    for (s, chunk) in images.chunks(per_shard).enumerate() {
        let path = out.join(format!("{s:05}.tar"));
        crate::fs::write_atomic_with(&path, |file| {
            let mut builder = tar::Builder::new(file);
            for (i, image) in chunk.iter().enumerate() {
                let bytes = read_image_bytes(&image.path).map_err(std::io::Error::other)?;
                let name = image.name.replace('\\', "/");
                let (stem, ext) = match name.rsplit_once('.') {
                    Some((stem, ext))
                        if !stem.rsplit('/').next().unwrap_or(stem).contains('.')
                            && !ext.contains('/') =>
                    {
                        (stem.to_string(), ext.to_string())
                    }
                    _ => (
                        format!("{:09}", s * per_shard + i),
                        Path::new(&name)
                            .extension()
                            .map_or("jpg".into(), |e| e.to_string_lossy().into_owned()),
                    ),
                };
                let text = image
                    .captions
                    .iter()
                    .map(|c| c.replace('\n', " "))
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n";
                for (member, data) in [
                    (format!("{stem}.{ext}"), bytes.as_slice()),
                    (format!("{stem}.txt"), text.as_bytes()),
                ] {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder.append_data(&mut header, &member, data)?;
                }
            }
            builder.finish()
        })?;
        summary.shards += 1;
        summary.samples += chunk.len();
        summary.captions += chunk.iter().map(|i| i.captions.len()).sum::<usize>();
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a tar with the given members, in order.
    pub(crate) fn write_tar(path: &Path, members: &[(&str, &[u8])]) {
        let mut builder = tar::Builder::new(File::create(path).unwrap());
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.finish().unwrap();
    }

    #[test]
    fn samples_group_by_key_and_members_read_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("00000.tar");
        let json = br#"{"caption": "from the json", "url": "x"}"#;
        write_tar(
            &shard,
            &[
                ("000001.jpg", b"image one"),
                ("000001.txt", b"a red circle\n"),
                ("000001.json", json),
                ("sub/000002.png", b"image two"),
                ("sub/000002.json", json),
                ("000003.txt", b"no image"),
                ("000004.jpg", b"no caption"),
            ],
        );
        let parsed = read_samples(dir.path()).unwrap();
        let got: Vec<(&str, &str, usize)> =
            parsed.records.iter().map(|r| (r.image.as_str(), r.caption.as_str(), r.line)).collect();
        assert_eq!(
            got,
            vec![
                ("00000.tar/000001.jpg", "a red circle", 1),
                ("00000.tar/sub/000002.png", "from the json", 2)
            ]
        );
        let skipped: Vec<&str> = parsed.report.skipped.iter().map(|r| r.reason.as_str()).collect();
        assert!(skipped[0].contains("000003") && skipped[0].contains("no image"), "{skipped:?}");
        assert!(skipped[1].contains("000004") && skipped[1].contains("no caption"), "{skipped:?}");

        assert_eq!(
            read_image_bytes(&dir.path().join("00000.tar/sub/000002.png")).unwrap(),
            b"image two"
        );
        assert!(exists(&dir.path().join("00000.tar/000001.jpg")));
        assert!(!exists(&dir.path().join("00000.tar/000009.jpg")));
        let err =
            read_image_bytes(&dir.path().join("00000.tar/000009.jpg")).unwrap_err().to_string();
        assert!(
            err.contains("000009.jpg") && err.contains("no such file or shard member"),
            "{err}"
        );
        // Plain files still read as files.
        std::fs::write(dir.path().join("plain.jpg"), b"plain").unwrap();
        assert_eq!(read_image_bytes(&dir.path().join("plain.jpg")).unwrap(), b"plain");
    }

    #[test]
    fn written_shards_read_back_as_the_same_images_and_captions() {
        let dir = tempfile::tempdir().unwrap();
        let images: Vec<crate::ImageCaptions> = ["a/one.jpg", "two.png", "odd.name.jpg"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let path = dir.path().join("src").join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, format!("pixels {i}")).unwrap();
                crate::ImageCaptions {
                    name: name.to_string(),
                    path,
                    captions: vec![format!("caption {i}"), format!("second\nline {i}")],
                }
            })
            .collect();
        let out = dir.path().join("shards");
        let summary = write_shards(&images, &out, 2).unwrap();
        assert_eq!(summary, ShardSummary { shards: 2, samples: 3, captions: 6 });
        let parsed = read_samples(&out).unwrap();
        let got: Vec<(&str, &str)> =
            parsed.records.iter().map(|r| (r.image.as_str(), r.caption.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("00000.tar/a/one.jpg", "caption 0"),
                ("00000.tar/a/one.jpg", "second line 0"),
                ("00000.tar/two.png", "caption 1"),
                ("00000.tar/two.png", "second line 1"),
                ("00001.tar/000000002.jpg", "caption 2"),
                ("00001.tar/000000002.jpg", "second line 2"),
            ]
        );
        assert_eq!(read_image_bytes(&out.join("00000.tar/two.png")).unwrap(), b"pixels 1");
        // A missing image fails its shard, which is not left half-written.
        let missing = vec![crate::ImageCaptions {
            name: "gone.jpg".into(),
            path: dir.path().join("gone.jpg"),
            captions: vec!["x".into()],
        }];
        let err = write_shards(&missing, &dir.path().join("other"), 2).unwrap_err().to_string();
        assert!(err.contains("gone.jpg"), "{err}");
        assert!(!dir.path().join("other/00000.tar").exists(), "no partial shard is left");
        // A folder that holds anything (earlier shards, the images themselves) is refused.
        for taken in [out.clone(), dir.path().join("src")] {
            let before: Vec<_> =
                std::fs::read_dir(&taken).unwrap().map(|e| e.unwrap().path()).collect();
            let err = write_shards(&images, &taken, 2).unwrap_err().to_string();
            assert!(
                err.contains(&taken.display().to_string()) && err.contains("new or empty --out"),
                "{err}"
            );
            assert_eq!(std::fs::read_dir(&taken).unwrap().count(), before.len());
        }
        assert_eq!(read_image_bytes(&out.join("00000.tar/two.png")).unwrap(), b"pixels 1");
    }

    #[test]
    fn a_folder_without_shards_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_samples(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no `.tar` shards"), "{err}");
    }
}
