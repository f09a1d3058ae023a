//! Tar shard storage: image–caption datasets stored as tar files (WebDataset's layout,
//! `img2dataset`'s output, open_clip's format at scale), read in place, and written.
//!
//! Each shard's headers are scanned once (data skipped by seeking) into an index of member
//! offsets; an image inside a shard is then named by a path through the tar file,
//! `shards/00000.tar/000123.jpg`, and [`read_image_bytes`] reads its bytes at their offset. Every
//! image reader in the workspace goes through it, so shard images work wherever files do
//! (training, evaluation, `clip embed --split`, search grids). How a shard's members make up
//! captioned samples (the `webdataset` caption format) is in [`crate::formats::webdataset`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::captions::ImageCaptions;
use crate::error::{DataError, Result};

/// Where a member's bytes are inside its tar file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// The members of one shard by name.
#[derive(Debug, Default)]
pub(crate) struct ShardIndex {
    pub(crate) members: HashMap<String, Member>,
}

impl ShardIndex {
    fn scan(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek()? {
            let entry = entry?;
            if entry.header().entry_type().is_file() {
                let name = entry.path()?.to_string_lossy().into_owned();
                let m = Member { offset: entry.raw_file_position(), len: entry.size() };
                // A size is the header's claim: reading it would allocate that much (a
                // truncated or hostile shard can claim gigabytes).
                if m.offset.checked_add(m.len).is_none_or(|end| end > file_len) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "member {name:?} claims {} bytes at offset {}, past the end of the \
                             shard ({file_len} bytes; truncated?)",
                            m.len, m.offset
                        ),
                    ));
                }
                members.insert(name, m);
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

/// The index of a shard, scanned on first use.
pub(crate) fn index_of(shard: &Path) -> std::io::Result<Arc<ShardIndex>> {
    if let Some(index) = indexes().lock().unwrap_or_else(|p| p.into_inner()).get(shard) {
        return Ok(index.clone());
    }
    let index = Arc::new(ShardIndex::scan(shard)?);
    indexes().lock().unwrap_or_else(|p| p.into_inner()).insert(shard.to_path_buf(), index.clone());
    Ok(index)
}

/// Drops the cached index of `shard`, so that the next use scans it again: for a shard rewritten
/// in place by this process (a fuzzer reuses one file for every input).
pub fn forget_index(shard: &Path) {
    indexes().lock().unwrap_or_else(|p| p.into_inner()).remove(shard);
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

/// The bytes of member `m` of `shard`.
pub(crate) fn read_at(shard: &Path, m: Member) -> std::io::Result<Vec<u8>> {
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
    images: &[ImageCaptions],
    out: &Path,
    per_shard: usize,
) -> Result<ShardSummary> {
    claim_shards_dir(out)?;
    let per_shard = per_shard.max(1);
    let mut summary = ShardSummary { shards: 0, samples: 0, captions: 0 };
    for (s, chunk) in images.chunks(per_shard).enumerate() {
        crate::fault::reach("shards.write");
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
pub(crate) mod tests {
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
    fn members_read_in_place_and_files_as_files() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("00000.tar");
        write_tar(
            &shard,
            &[
                ("000001.jpg", b"image one"),
                ("000001.txt", b"a red circle\n"),
                ("sub/000002.png", b"image two"),
            ],
        );
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
        assert_eq!(identity(&dir.path().join("00000.tar/000001.jpg")).unwrap().0, 9);
        // Plain files still read as files.
        std::fs::write(dir.path().join("plain.jpg"), b"plain").unwrap();
        assert_eq!(read_image_bytes(&dir.path().join("plain.jpg")).unwrap(), b"plain");
        assert_eq!(list_shards(dir.path()).unwrap(), vec![shard]);
    }

    /// Found by fuzzing (fuzz/RESULTS.md): a member whose header claims 8 GiB in a 2 KiB shard
    /// made reading its caption allocate 8 GiB.
    #[test]
    fn a_member_claiming_more_than_the_shard_holds_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("00000.tar");
        write_tar(&shard, &[("000000.jpg", b"image"), ("000000.txt", b"a caption")]);
        let mut bytes = std::fs::read(&shard).unwrap();
        // 000000.txt's header (after the image's header and data blocks): size 8 GiB - 1,
        // checksum recomputed.
        let h = &mut bytes[1024..1536];
        h[124..136].copy_from_slice(b"77777777777\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        std::fs::write(&shard, &bytes).unwrap();
        let err = crate::formats::webdataset::read_samples(&shard).unwrap_err().to_string();
        assert!(err.contains("00000.tar") && err.contains("past the end of the shard"), "{err}");
        assert!(read_image_bytes(&shard.join("000000.jpg")).is_err());
    }

    #[test]
    fn a_forgotten_index_is_scanned_again() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("00000.tar");
        write_tar(&shard, &[("a.jpg", b"first")]);
        assert!(exists(&shard.join("a.jpg")));
        write_tar(&shard, &[("b.jpg", b"second")]);
        assert!(exists(&shard.join("a.jpg")), "the cached index is still used");
        forget_index(&shard);
        assert!(!exists(&shard.join("a.jpg")));
        assert_eq!(read_image_bytes(&shard.join("b.jpg")).unwrap(), b"second");
    }
}
