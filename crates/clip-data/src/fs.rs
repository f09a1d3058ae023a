//! Writing files safely: atomically (a reader sees the old file or the whole new one), and only
//! where clip may write.
//!
//! The rule every writer follows ([`claim_dir`], [`claim_file`]): clip never overwrites or deletes
//! what it did not create.
//! - An output **folder** (a generated dataset, shards, an embedding index, an ONNX export, a run)
//!   is written only when it is missing, empty, or recognised as clip's own output of the same
//!   kind by its marker file; anything else is an error naming the folder, and nothing is touched.
//! - An output **file** at a path the user chooses (a report, a grid) replaces an existing file
//!   only when that file is recognised as clip's (a PNG's `Software: clip` text chunk, a JSON
//!   report's leading `"written_by": "clip ..."` key, see [`tagged_json`]) or when the user passes
//!   `--overwrite`.
//! - Files inside a folder clip owns (a run directory, a generated dataset) under the names clip
//!   gives them are clip's, and temporary files (`.NAME.tmp-PID`) are only ever its own.

use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;

use crate::error::{DataError, Result};

/// What an output folder held when [`claim_dir`] allowed writing into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Missing,
    Empty,
    /// clip's own earlier output, recognised by its marker.
    Ours,
}

/// Whether clip may write `what` into `dir`: only when `dir` is missing, an empty folder, or
/// `is_ours(dir)` recognises clip's earlier output there (its marker file). Otherwise an error
/// naming the folder and a few of its entries, followed by `hint` (what to do instead); nothing
/// is written.
pub fn claim_dir(
    dir: &Path,
    what: &str,
    is_ours: impl FnOnce(&Path) -> bool,
    hint: &str,
) -> Result<Claim> {
    let refuse = |message: String| Err(DataError::NotOurs { path: dir.into(), message });
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Claim::Missing),
        Err(_) if dir.exists() && !dir.is_dir() => {
            return refuse(format!(
            "cannot write {what} here: this is a file, not a folder; nothing was changed. {hint}"
        ))
        }
        Err(e) => return Err(DataError::io(dir, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(Claim::Empty);
    }
    if is_ours(dir) {
        return Ok(Claim::Ours);
    }
    names.sort();
    let shown: Vec<String> = names.iter().take(3).map(|n| format!("`{n}`")).collect();
    let more =
        if names.len() > 3 { format!(" and {} more", names.len() - 3) } else { String::new() };
    refuse(format!(
        "refusing to write {what} into this folder: it is not empty ({}{more}) and holds nothing clip recognises as its own; \
         nothing was changed. {hint}",
        shown.join(", ")
    ))
}

/// Whether clip may write the file `path`: only when it is missing, `is_ours(path)` recognises a
/// file clip wrote, or `overwrite` (the user's explicit `--overwrite`). Otherwise an error naming
/// the file, followed by `hint`; nothing is written.
pub fn claim_file(
    path: &Path,
    overwrite: bool,
    is_ours: impl FnOnce(&Path) -> bool,
    hint: &str,
) -> Result<()> {
    let refuse = |message: String| Err(DataError::NotOurs { path: path.into(), message });
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::io(path, e)),
        Ok(m) if m.is_dir() => refuse(format!("is a folder; give a file path. {hint}")),
        Ok(_) if overwrite || is_ours(path) => Ok(()),
        Ok(_) => {
            refuse(format!("exists and was not written by clip; refusing to replace it. {hint}"))
        }
    }
}

/// The leading key of every JSON report clip writes at a path of the user's choice.
pub const WRITTEN_BY: &str = "written_by";

/// `report` as pretty JSON whose first key is `"written_by": "clip <command>"`, the mark
/// [`is_tagged_json`] recognises (the report's own keys follow, in their order).
pub fn tagged_json<T: Serialize>(command: &str, report: &T) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Tagged<'a, T: Serialize> {
        written_by: String,
        #[serde(flatten)]
        report: &'a T,
    }
    serde_json::to_vec_pretty(&Tagged { written_by: format!("clip {command}"), report }).map_err(
        |e| DataError::File {
            path: format!("<clip {command} report>").into(),
            what: "the report does not serialize as a JSON object".into(),
            source: e.into(),
        },
    )
}

/// Whether `path` is a JSON report written by [`tagged_json`] (its first bytes say so).
pub fn is_tagged_json(path: &Path) -> bool {
    let head = read_head(path, 64);
    head.starts_with(format!("{{\n  \"{WRITTEN_BY}\": \"clip ").as_bytes())
}

/// The first `n` bytes of a file (fewer if it is shorter; none if it cannot be read).
pub fn read_head(path: &Path, n: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(n);
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(n as u64).read_to_end(&mut head);
    }
    head
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader sees either the old file or the whole new one, never a partial write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with the contents produced by a writer callback.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        crate::fault::reach("atomic.write");
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}

/// What a write cut short by a killed process leaves: `.NAME.tmp-PID` ([`write_atomic`]'s
/// temporary file, a checkpoint folder being filled), `.NAME.old-PID` (a folder moved aside to
/// be replaced) or `.NAME.del-PID` (a folder hidden, then being deleted). Returns
/// `(NAME, "tmp" | "old" | "del", PID)` for such a name, `None` for any other.
pub fn interrupted_write(name: &str) -> Option<(&str, &str, u32)> {
    let rest = name.strip_prefix('.')?;
    let (stem, pid) = rest.rsplit_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid = pid.parse().ok()?;
    let (target, kind) = stem.rsplit_once('.')?;
    (matches!(kind, "tmp" | "old" | "del") && !target.is_empty()).then_some((target, kind, pid))
}

/// Whether process `pid` still runs (where that cannot be told, it is assumed to: its files are
/// then left alone).
pub fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_temporary_names_of_atomic_writes_count_as_interrupted() {
        assert_eq!(interrupted_write(".index.json.tmp-123"), Some(("index.json", "tmp", 123)));
        assert_eq!(interrupted_write(".best.old-7"), Some(("best", "old", 7)));
        assert_eq!(interrupted_write(".step-000002.del-7"), Some(("step-000002", "del", 7)));
        for other in
            ["index.json", ".hidden", ".x.tmp-", ".x.tmp-12a", "x.tmp-3", "..tmp-3", ".x.bak-3"]
        {
            assert_eq!(interrupted_write(other), None, "{other}");
        }
        assert!(process_alive(std::process::id()));
    }

    #[test]
    fn folders_are_claimed_only_when_missing_empty_or_ours() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let never = |_: &Path| false;
        assert_eq!(claim_dir(&dir, "x", never, "hint").unwrap(), Claim::Missing);
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(claim_dir(&dir, "x", never, "hint").unwrap(), Claim::Empty);
        std::fs::write(dir.join("results.csv"), b"mine").unwrap();
        std::fs::create_dir(dir.join("images")).unwrap();
        let err = claim_dir(&dir, "the synthetic dataset", never, "Do this instead.")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&dir.display().to_string())
                && err.contains("`results.csv`")
                && err.contains("`images`"),
            "{err}"
        );
        assert!(
            err.contains("the synthetic dataset") && err.ends_with("Do this instead."),
            "{err}"
        );
        assert_eq!(
            claim_dir(&dir, "x", |d| d.join("results.csv").is_file(), "hint").unwrap(),
            Claim::Ours
        );
        let file = dir.join("results.csv");
        let err = claim_dir(&file, "x", never, "hint").unwrap_err().to_string();
        assert!(err.contains("not a folder"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    }

    #[test]
    fn files_are_replaced_only_when_ours_or_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.json");
        claim_file(&p, false, is_tagged_json, "hint").unwrap();
        std::fs::write(&p, b"{\"mine\": 1}").unwrap();
        let err =
            claim_file(&p, false, is_tagged_json, "Pass --overwrite.").unwrap_err().to_string();
        assert!(
            err.contains("report.json")
                && err.contains("not written by clip")
                && err.contains("--overwrite"),
            "{err}"
        );
        claim_file(&p, true, is_tagged_json, "hint").unwrap();
        #[derive(Serialize)]
        struct R {
            zeta: u32,
            alpha: Vec<u32>,
        }
        let bytes = tagged_json("eval", &R { zeta: 1, alpha: vec![2] }).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        claim_file(&p, false, is_tagged_json, "hint").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((v["written_by"].as_str(), v["zeta"].as_u64()), (Some("clip eval"), Some(1)));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.find("zeta") < text.find("alpha"), "the report keeps its key order: {text}");
        let err = claim_file(dir.path(), true, is_tagged_json, "hint").unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
    }

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let failed = write_atomic_with(&p, |_| Err(std::io::Error::other("disk full")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
    }
}
