//! An embedding index on disk: a directory with `index.json` (the model that made it, and one
//! entry per image) and a NumPy `.npy` float32 matrix of L2-normalized embeddings, row `i` for
//! entry `i` (`numpy.load` reads it).
//!
//! Saving writes a new `.npy` under a fresh name, then replaces `index.json` atomically, then
//! removes the old matrix: a reader sees the old index or the new one, never a half-written one.
//! An index is written only into a missing or empty folder or one that holds an index
//! ([`EmbeddingIndex::claim_dir`]), and only matrices it named itself are ever removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::card::LoadedModel;
use crate::embed::ImageEmbeddings;
use crate::error::{InferError, Result};

/// One indexed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub path: PathBuf,
    /// Size and modification time when embedded: a changed file is embedded again.
    pub size: u64,
    pub modified: u64,
}

impl IndexEntry {
    /// The entry describing `path` (a file, or a member of a WebDataset shard) as it is on disk now.
    pub fn of(path: &Path) -> Result<Self> {
        let (size, modified) =
            clip_data::shards::identity(path).map_err(|e| InferError::io(path, e))?;
        let modified = modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(Self { path: path.into(), size, modified })
    }
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    pub version: u32,
    /// The identity of the model that made the embeddings (see `LoadedModel::id`).
    pub model_id: String,
    /// The run directory of that model (used to embed queries).
    pub run_dir: PathBuf,
    pub dim: usize,
    /// The matrix file, relative to the index directory.
    pub embeddings: String,
    pub entries: Vec<IndexEntry>,
}

/// An index in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingIndex {
    pub meta: IndexMeta,
    /// `[entries, dim]`, row-major, L2-normalized rows.
    pub rows: Vec<f32>,
}

impl EmbeddingIndex {
    pub fn new(model_id: &str, run_dir: &Path, dim: usize) -> Self {
        Self {
            meta: IndexMeta {
                version: 1,
                model_id: model_id.into(),
                run_dir: run_dir.into(),
                dim,
                embeddings: String::new(),
                entries: Vec::new(),
            },
            rows: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.meta.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.entries.is_empty()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.meta.dim..(i + 1) * self.meta.dim]
    }

    /// Whether `dir` holds an index.
    pub fn exists(dir: &Path) -> bool {
        dir.join("index.json").is_file()
    }

    /// Whether `dir` holds an index `clip embed` wrote (its `index.json` reads as one).
    pub fn is_index_dir(dir: &Path) -> bool {
        std::fs::read(dir.join("index.json"))
            .ok()
            .is_some_and(|b| serde_json::from_slice::<IndexMeta>(&b).is_ok())
    }

    /// Whether an index may be written into `dir`: only a missing or empty folder, or one that
    /// holds an index, is; anything else (a folder of photos, say) is an error naming it.
    pub fn claim_dir(dir: &Path) -> Result<()> {
        clip_data::fs::claim_dir(
            dir,
            "an embedding index",
            Self::is_index_dir,
            "Give --out a new or empty folder (or the folder of an index `clip embed` made, to update it).",
        )?;
        Ok(())
    }

    /// Reads the index in `dir`, checking that the matrix agrees with the entries.
    pub fn load(dir: &Path) -> Result<Self> {
        let json = dir.join("index.json");
        let bad = |message: String| InferError::Index { path: dir.into(), message };
        let bytes = std::fs::read(&json).map_err(|e| {
            InferError::unreadable(dir, "no index here (cannot read index.json)", e)
        })?;
        let meta: IndexMeta = serde_json::from_slice(&bytes)
            .map_err(|e| InferError::unreadable(&json, "not an index", e))?;
        if meta.entries.is_empty() {
            return Ok(Self { meta, rows: Vec::new() });
        }
        // A file beside index.json: an index.json from elsewhere cannot point reads outside the
        // folder (`../`, an absolute path).
        let mut parts = Path::new(&meta.embeddings).components();
        let beside =
            matches!(parts.next(), Some(std::path::Component::Normal(_))) && parts.next().is_none();
        if !beside {
            return Err(bad(format!(
                "index.json names {:?} as its matrix; an index's matrix is a file beside it",
                meta.embeddings
            )));
        }
        let npy = dir.join(&meta.embeddings);
        let (shape, rows) = read_npy_f32(&npy)?;
        if shape != [meta.entries.len(), meta.dim] {
            return Err(bad(format!(
                "{} holds a {:?} matrix but index.json lists {} entries of {} dimensions",
                meta.embeddings,
                shape,
                meta.entries.len(),
                meta.dim
            )));
        }
        Ok(Self { meta, rows })
    }

    /// Writes the index into `dir` (created if needed, see [`Self::claim_dir`]), atomically.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        Self::claim_dir(dir)?;
        std::fs::create_dir_all(dir).map_err(|e| InferError::io(dir, e))?;
        assert_eq!(self.rows.len(), self.meta.entries.len() * self.meta.dim, "rows match entries");
        let old = self.meta.embeddings.clone();
        let stamp =
            std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("embeddings-{stamp:x}.npy");
        let npy = write_npy_f32(&self.rows, [self.meta.entries.len(), self.meta.dim]);
        clip_data::fs::write_atomic(&dir.join(&name), &npy)?;
        self.meta.embeddings = name;
        let json = serde_json::to_vec_pretty(&self.meta).expect("meta serializes");
        if let Err(e) = clip_data::fs::write_atomic(&dir.join("index.json"), &json) {
            let _ = std::fs::remove_file(dir.join(&self.meta.embeddings));
            self.meta.embeddings = old;
            return Err(e.into());
        }
        // Only files of ours: the matrix this index no longer names, matrices an interrupted
        // save wrote but never named (names this function gives), and temporary files of writes
        // whose process is gone; never a path out of the folder.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for name in entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()) {
                let stale_matrix = is_matrix_name(&name) && name != self.meta.embeddings;
                let stale_temp =
                    clip_data::fs::interrupted_write(&name).is_some_and(|(target, kind, pid)| {
                        kind == "tmp"
                            && (target == "index.json" || is_matrix_name(target))
                            && !clip_data::fs::process_alive(pid)
                    });
                if stale_matrix || stale_temp {
                    let _ = std::fs::remove_file(dir.join(name));
                }
            }
        }
        Ok(())
    }
}

/// An index brought up to date with a list of files ([`EmbeddingIndex::refresh`]): the rows it
/// keeps, and the files still to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct Refresh {
    /// The index so far: the rows of files still listed and unchanged, then those [`add`]ed.
    ///
    /// [`add`]: Refresh::add
    pub index: EmbeddingIndex,
    /// Files still listed and unchanged since they were embedded (their rows are kept).
    pub unchanged: usize,
    /// Files to embed: new ones, and those changed since they were embedded.
    pub todo: Vec<PathBuf>,
    /// Entries dropped: files no longer listed, or changed (to be embedded again).
    pub removed: usize,
}

impl Refresh {
    /// Appends the rows of embedded files (some of [`todo`](Self::todo), as
    /// [`LoadedModel::embed_images`](crate::LoadedModel::embed_images) returns them), each
    /// recorded with its size and modification time now.
    pub fn add(&mut self, embedded: &ImageEmbeddings) -> Result<()> {
        if embedded.paths.is_empty() {
            return Ok(());
        }
        let dim = self.index.meta.dim;
        if embedded.dim != dim {
            return Err(InferError::Input(format!(
                "embeddings of {} dimensions for an index of {dim}",
                embedded.dim
            )));
        }
        for (i, p) in embedded.paths.iter().enumerate() {
            self.index.meta.entries.push(IndexEntry::of(p)?);
            self.index.rows.extend_from_slice(&embedded.rows[i * dim..(i + 1) * dim]);
        }
        Ok(())
    }
}

impl EmbeddingIndex {
    /// The index in `dir` to bring up to date with `model`'s embeddings, or a new, empty one for
    /// it when `dir` holds none. An index another model made is an error: its rows and this
    /// model's embeddings are not comparable.
    pub fn open_for<B: Backend>(dir: &Path, model: &LoadedModel<B>) -> Result<Self> {
        if !Self::exists(dir) {
            let run_dir =
                std::fs::canonicalize(&model.run_dir).unwrap_or_else(|_| model.run_dir.clone());
            return Ok(Self::new(&model.id, &run_dir, model.card.clip.projection_dim));
        }
        let index = Self::load(dir)?;
        if !model.made(&index.meta.model_id) {
            return Err(InferError::Index {
                path: dir.into(),
                message: format!(
                    "this index was built by another model ({} from {}); this is {} from {}. Use a new --out",
                    index.meta.model_id,
                    index.meta.run_dir.display(),
                    model.id,
                    model.run_dir.display()
                ),
            });
        }
        Ok(index)
    }

    /// What it takes to make this index hold exactly `files`: the rows of files still listed
    /// whose size and modification time are those recorded are kept, in index order; new and
    /// changed files are to embed, in `files`' order. The result is recorded under `model_id`
    /// (an index made under a model's legacy identity is upgraded) and, saved, replaces this
    /// index's matrix.
    pub fn refresh(&self, model_id: &str, files: &[PathBuf]) -> Refresh {
        let wanted: HashSet<&PathBuf> = files.iter().collect();
        let mut kept = EmbeddingIndex::new(model_id, &self.meta.run_dir, self.meta.dim);
        kept.meta.embeddings = self.meta.embeddings.clone();
        let mut have = HashSet::new();
        for (i, e) in self.meta.entries.iter().enumerate() {
            if wanted.contains(&e.path) && IndexEntry::of(&e.path).is_ok_and(|now| &now == e) {
                kept.meta.entries.push(e.clone());
                kept.rows.extend_from_slice(self.row(i));
                have.insert(e.path.clone());
            }
        }
        let todo: Vec<PathBuf> = files.iter().filter(|p| !have.contains(*p)).cloned().collect();
        Refresh { index: kept, unchanged: have.len(), todo, removed: self.len() - have.len() }
    }
}

/// Whether `name` is one [`EmbeddingIndex::save`] gives a matrix: `embeddings-<hex>.npy`.
fn is_matrix_name(name: &str) -> bool {
    name.strip_prefix("embeddings-")
        .and_then(|rest| rest.strip_suffix(".npy"))
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Serializes a float32 matrix in NumPy's `.npy` format (version 1.0, C order).
pub fn write_npy_f32(data: &[f32], shape: [usize; 2]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        shape[0], shape[1]
    );
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Reads a 2-D little-endian float32 `.npy` file (version 1 or 2, C order).
pub fn read_npy_f32(path: &Path) -> Result<([usize; 2], Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| InferError::io(path, e))?;
    let bad = |m: &str| InferError::Index {
        path: path.into(),
        message: format!("not a float32 .npy matrix: {m}"),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("bad magic"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        _ => return Err(bad("unknown version")),
    };
    let header =
        std::str::from_utf8(bytes.get(start..start + len).ok_or_else(|| bad("truncated header"))?)
            .map_err(|_| bad("header"))?;
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("only little-endian float32 in C order"));
    }
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("shape")))
        .collect::<Result<_>>()?;
    let [n, d] = dims[..] else { return Err(bad("expected a 2-D matrix")) };
    let body = &bytes[start + len..];
    // A shape from the header is a claim: its byte count may not even fit in a usize.
    let expected = n.checked_mul(d).and_then(|e| e.checked_mul(4));
    if expected != Some(body.len()) {
        return Err(bad(&format!(
            "the shape ({n}, {d}) needs {} bytes of data, found {} (truncated?)",
            expected.map_or("more than 2^64".to_string(), |e| e.to_string()),
            body.len()
        )));
    }
    let data = body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(([n, d], data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_truncation_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        std::fs::write(&p, write_npy_f32(&data, [3, 4])).unwrap();
        assert_eq!(read_npy_f32(&p).unwrap(), ([3, 4], data));
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.len() - 48) % 64, 0, "header aligned to 64 bytes");
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read_npy_f32(&p).unwrap_err().to_string().contains("truncated"));
    }

    /// Found by fuzzing (fuzz/RESULTS.md): a shape whose byte count overflows panicked, and a
    /// count that wrapped to the real data length would have passed as a huge matrix.
    #[test]
    fn npy_shapes_too_large_to_count_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        for shape in ["(2, 4611686018427387904)", "(4611686018427387904, 4)", "(25000000000, 4)"] {
            let mut header =
                format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            while (10 + header.len() + 1) % 64 != 0 {
                header.push(' ');
            }
            header.push('\n');
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
            bytes.extend_from_slice(header.as_bytes());
            std::fs::write(&p, &bytes).unwrap();
            let err = read_npy_f32(&p).unwrap_err().to_string();
            assert!(err.contains("m.npy") && err.contains("bytes of data"), "{shape}: {err}");
        }
    }

    #[test]
    fn save_replaces_the_matrix_and_load_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = EmbeddingIndex::new("abc", Path::new("/runs/x"), 2);
        idx.meta.entries.push(IndexEntry { path: "a.jpg".into(), size: 1, modified: 2 });
        idx.rows = vec![1.0, 0.0];
        idx.save(dir.path()).unwrap();
        let first = idx.meta.embeddings.clone();
        idx.meta.entries.push(IndexEntry { path: "b.jpg".into(), size: 1, modified: 2 });
        idx.rows.extend([0.0, 1.0]);
        idx.save(dir.path()).unwrap();
        assert_ne!(first, idx.meta.embeddings);
        assert!(!dir.path().join(&first).exists(), "old matrix removed");
        // What a save killed midway leaves: a matrix never named, a temporary index.json of a
        // dead process; the next save clears them and nothing else.
        let debris = ["embeddings-abc123.npy", ".index.json.tmp-999999999"];
        let users = ["notes.txt", ".index.json.tmp-x", "embeddings-mine.npy"];
        for name in debris.iter().chain(&users) {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        idx.save(dir.path()).unwrap();
        for name in debris {
            assert!(!dir.path().join(name).exists(), "{name} is debris");
        }
        for name in users {
            assert!(dir.path().join(name).exists(), "{name} is not ours");
        }
        let back = EmbeddingIndex::load(dir.path()).unwrap();
        // A matrix name pointing out of the folder is refused.
        let json = dir.path().join("index.json");
        let good = std::fs::read_to_string(&json).unwrap();
        for evil in ["../../etc/passwd", "/etc/passwd", "embeddings-x/../../y.npy"] {
            let text = good.replace(&idx.meta.embeddings, evil);
            std::fs::write(&json, text).unwrap();
            let err = EmbeddingIndex::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("a file beside it"), "{evil}: {err}");
        }
        std::fs::write(&json, good).unwrap();
        assert_eq!(back, idx);
        // A matrix that disagrees with index.json is an error, not a silent mismatch.
        std::fs::write(dir.path().join(&idx.meta.embeddings), write_npy_f32(&[1.0, 0.0], [1, 2]))
            .unwrap();
        let err = EmbeddingIndex::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2 entries"), "{err}");
        assert!(EmbeddingIndex::load(&dir.path().join("nothing"))
            .unwrap_err()
            .to_string()
            .contains("no index here"));
    }

    #[test]
    fn refresh_keeps_unchanged_rows_and_re_embeds_changed_and_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let (a, b, c) = (file("a.jpg", b"a"), file("b.jpg", b"b"), file("c.jpg", b"c"));
        let mut idx = EmbeddingIndex::new("old-id", Path::new("/runs/x"), 2);
        for (p, row) in [(&a, [1.0, 0.0]), (&b, [0.0, 1.0]), (&c, [0.6, 0.8])] {
            idx.meta.entries.push(IndexEntry::of(p).unwrap());
            idx.rows.extend(row);
        }
        idx.meta.embeddings = "embeddings-1.npy".into();
        // b changes (another size), c is no longer listed, d is new.
        std::fs::write(&b, b"b, edited").unwrap();
        let d = file("d.jpg", b"d");
        let mut r = idx.refresh("new-id", &[d.clone(), b.clone(), a.clone()]);
        assert_eq!((r.unchanged, r.removed), (1, 2));
        assert_eq!(r.todo, vec![d.clone(), b.clone()]);
        assert_eq!(r.index.meta.model_id, "new-id");
        assert_eq!(r.index.meta.run_dir, Path::new("/runs/x"));
        assert_eq!(r.index.meta.embeddings, "embeddings-1.npy", "saving replaces the old matrix");
        assert_eq!(r.index.meta.entries, vec![idx.meta.entries[0].clone()]);
        assert_eq!(r.index.rows, [1.0, 0.0]);
        let embedded = ImageEmbeddings {
            paths: vec![d.clone(), b.clone()],
            rows: vec![0.0, -1.0, -1.0, 0.0],
            dim: 2,
            skipped: vec![],
        };
        r.add(&embedded).unwrap();
        let paths: Vec<&PathBuf> = r.index.meta.entries.iter().map(|e| &e.path).collect();
        assert_eq!(paths, [&a, &d, &b]);
        assert_eq!(r.index.row(2), [-1.0, 0.0]);
        assert_eq!(r.index.meta.entries[2], IndexEntry::of(&b).unwrap(), "b's size now");
        // Refreshed again with nothing changed: everything is kept, nothing to embed.
        let again = r.index.refresh("new-id", &[a.clone(), b.clone(), d.clone()]);
        assert_eq!((again.unchanged, again.removed, again.todo.len()), (3, 0, 0));
        assert_eq!(again.index, r.index);
        let wrong =
            ImageEmbeddings { paths: vec![a.clone()], rows: vec![1.0; 3], dim: 3, ..embedded };
        assert!(r.add(&wrong).unwrap_err().to_string().contains("3 dimensions"));
    }

    #[test]
    fn an_index_is_never_written_into_a_folder_of_someone_elses() {
        let root = tempfile::tempdir().unwrap();
        let mut idx = EmbeddingIndex::new("abc", Path::new("/runs/x"), 2);
        idx.meta.entries.push(IndexEntry { path: "a.jpg".into(), size: 1, modified: 2 });
        idx.rows = vec![1.0, 0.0];
        // A folder of photos, and one with an index.json / embeddings.npy of another tool.
        let photos = root.path().join("photos");
        std::fs::create_dir(&photos).unwrap();
        std::fs::write(photos.join("cat.jpg"), b"my cat").unwrap();
        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("index.json"), b"{\"their\": \"index\"}").unwrap();
        std::fs::write(other.join("embeddings.npy"), b"their matrix").unwrap();
        for dir in [&photos, &other] {
            let before: Vec<_> =
                std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
            let err = idx.clone().save(dir).unwrap_err().to_string();
            assert!(
                err.contains(&dir.display().to_string()) && err.contains("new or empty folder"),
                "{err}"
            );
            assert_eq!(std::fs::read_dir(dir).unwrap().count(), before.len(), "nothing added");
        }
        assert_eq!(std::fs::read(other.join("index.json")).unwrap(), b"{\"their\": \"index\"}");
        // An index of ours whose index.json names a file that is not one of its matrices: that
        // file is never removed.
        let ours = root.path().join("ours");
        let mut tricked = idx.clone();
        tricked.meta.embeddings = "../photos/cat.jpg".into();
        tricked.save(&ours).unwrap();
        assert_eq!(std::fs::read(photos.join("cat.jpg")).unwrap(), b"my cat");
        assert!(
            is_matrix_name(&tricked.meta.embeddings)
                && !is_matrix_name("embeddings.npy")
                && !is_matrix_name("embeddings-.npy")
        );
    }
}
