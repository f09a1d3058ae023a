//! Train/validation split by image: every caption of an image lands on the same side, the split
//! is a pure function of (image names, val_size, seed), and it can be saved so that later
//! evaluation scores exactly the images training never saw.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::captions::PredefinedSide;
use crate::dataset::{CaptionDataset, PairDataset};
use crate::error::{DataError, Result};
use crate::fs::write_atomic;
use crate::numpy_rng::LegacyRandomState;

/// How `data.split` draws the train/validation split when the dataset defines none and no
/// `data.split_file` is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitMethod {
    /// [`Split::by_image`]: a ChaCha8 shuffle of the sorted names, independent of file order.
    #[default]
    Random,
    /// [`Split::numpy_legacy`]: the seed notebook's `np.random.seed(seed)` +
    /// `np.random.choice(image_ids, int(val_size * n), replace=False)`, redrawn bit for bit.
    NumpyLegacy,
}

/// Which images train and which validate (and, for a split a dataset defines, which are the
/// held-out test set that results are reported on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub seed: u64,
    pub val_size: f64,
    pub train: Vec<String>,
    pub val: Vec<String>,
    /// Never trained on nor validated during training (Karpathy's test images); empty for a
    /// random split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
}

impl Split {
    /// Splits image names: `round(val_size * n)` images go to validation (at least one when
    /// `val_size > 0` and there are two or more images). The input order does not matter.
    pub fn by_image(names: &[String], val_size: f64, seed: u64) -> Self {
        let mut sorted: Vec<&String> = names.iter().collect::<HashSet<_>>().into_iter().collect();
        sorted.sort();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        sorted.shuffle(&mut rng);
        let n = sorted.len();
        let mut n_val = (val_size * n as f64).round() as usize;
        if val_size > 0.0 && n >= 2 {
            n_val = n_val.clamp(1, n - 1);
        }
        let n_val = n_val.min(n);
        let mut val: Vec<String> = sorted[..n_val].iter().map(|s| s.to_string()).collect();
        let mut train: Vec<String> = sorted[n_val..].iter().map(|s| s.to_string()).collect();
        // Keep a stable, readable order in saved files; iteration order is the loader's business.
        val.sort();
        train.sort();
        Self { seed, val_size, train, val, test: Vec::new() }
    }

    /// The seed notebook's split, bit for bit: with NumPy's global legacy `RandomState` freshly
    /// seeded by `np.random.seed(seed)`, `valid_ids = np.random.choice(np.arange(n),
    /// size=int(val_size * n), replace=False)` where id `i` is the `i`-th distinct image in
    /// `names_in_file_order` (the captions file's first-appearance order, as
    /// `CaptionDataset::images` keeps it); the rest train. `int()` truncates, and nothing is
    /// clamped: one image and `val_size = 0.2` validate on none, as the notebook would.
    ///
    /// Both sides keep file order (the notebook's `valid_df` / `train_df` row order), so
    /// validation batches hold the notebook's images. A repeated name counts at its first
    /// appearance. Seeds above `2**32 - 1` are an error, as NumPy refuses them.
    pub fn numpy_legacy(names_in_file_order: &[String], val_size: f64, seed: u64) -> Result<Self> {
        let mut seen = HashSet::new();
        let names: Vec<&String> =
            names_in_file_order.iter().filter(|n| seen.insert(n.as_str())).collect();
        let mut rng = LegacyRandomState::new(seed).map_err(|e| DataError::Config {
            path: "<config>".into(),
            message: format!("data.seed with data.split = \"numpy-legacy\": {e}"),
        })?;
        let n = names.len();
        // Python's `int(val_size * n)`: the product in f64, truncated toward zero.
        let size = ((val_size * n as f64) as usize).min(n);
        let mut is_val = vec![false; n];
        for i in rng.choice_without_replacement(n, size) {
            is_val[i] = true;
        }
        let (mut train, mut val) = (Vec::with_capacity(n - size), Vec::with_capacity(size));
        for (name, v) in names.into_iter().zip(is_val) {
            if v {
                val.push(name.clone());
            } else {
                train.push(name.clone());
            }
        }
        Ok(Self { seed, val_size, train, val, test: Vec::new() })
    }

    /// The split a captions file defines (Karpathy's), sides sorted by name.
    pub fn predefined(sides: &[(String, PredefinedSide)], seed: u64) -> Self {
        let side = |want: PredefinedSide| {
            let mut names: Vec<String> =
                sides.iter().filter(|(_, s)| *s == want).map(|(n, _)| n.clone()).collect();
            names.sort();
            names.dedup();
            names
        };
        let (train, val, test) =
            (side(PredefinedSide::Train), side(PredefinedSide::Val), side(PredefinedSide::Test));
        let val_size = val.len() as f64 / (train.len() + val.len()).max(1) as f64;
        Self { seed, val_size, train, val, test }
    }

    /// The names of a side by its name (`train`, `val` or `test`).
    pub fn side(&self, name: &str) -> Option<&[String]> {
        match name {
            "train" => Some(&self.train),
            "val" => Some(&self.val),
            "test" => Some(&self.test),
            _ => None,
        }
    }

    /// Writes the split as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a split serializes");
        write_atomic(path, &json)
    }

    /// Reads a saved split and checks that no image is on both sides.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let split: Split = serde_json::from_slice(&bytes).map_err(|e| DataError::File {
            path: path.into(),
            what: "not a split file".into(),
            source: e.into(),
        })?;
        let sides = [("train", &split.train), ("val", &split.val), ("test", &split.test)];
        for (i, (a, names_a)) in sides.iter().enumerate() {
            let set: HashSet<&String> = names_a.iter().collect();
            for (b, names_b) in &sides[i + 1..] {
                if let Some(both) = names_b.iter().find(|n| set.contains(n)) {
                    return Err(DataError::Split {
                        path: path.into(),
                        message: format!("image {both:?} is in both {a} and {b}"),
                    });
                }
            }
        }
        Ok(split)
    }
}

/// How a dataset is split (`DataConfig::split_config` builds it from `[data]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SplitConfig {
    /// How a split is drawn when the dataset defines none and `split_file` is not there yet.
    pub method: SplitMethod,
    /// Fraction of images held out for validation.
    pub val_size: f64,
    pub seed: u64,
    /// A saved split to reuse when it exists, or where to save the one drawn.
    pub split_file: Option<PathBuf>,
}

/// The train and validation (and test) sides of a dataset, split by image.
#[derive(Debug, Clone)]
pub struct SplitDataset {
    pub split: Split,
    pub train: PairDataset,
    pub val: PairDataset,
    /// Empty unless the split has a test side (Karpathy's).
    pub test: PairDataset,
}

impl SplitDataset {
    /// Splits a loaded dataset as `config` says: reuses `config.split_file` when it exists,
    /// otherwise takes the split the captions file defines (Karpathy's), otherwise splits by
    /// image with `config.seed` / `config.val_size` as `config.method` says (and saves the split
    /// to `config.split_file` when one is named).
    pub fn new(dataset: &CaptionDataset, config: &SplitConfig) -> Result<Self> {
        let split = match &config.split_file {
            Some(path) if path.is_file() => Split::load(path)?,
            other => {
                let names: Vec<String> = dataset.images.iter().map(|i| i.name.clone()).collect();
                let split = if !dataset.predefined_split.is_empty() {
                    Split::predefined(&dataset.predefined_split, config.seed)
                } else {
                    match config.method {
                        SplitMethod::Random => {
                            Split::by_image(&names, config.val_size, config.seed)
                        }
                        // `dataset.images` is in captions-file order (first appearance).
                        SplitMethod::NumpyLegacy => {
                            Split::numpy_legacy(&names, config.val_size, config.seed)?
                        }
                    }
                };
                if let Some(path) = other {
                    split.save(path)?;
                }
                split
            }
        };
        Self::from_split(
            dataset,
            split,
            config.split_file.as_deref().unwrap_or(Path::new("<split>")),
        )
    }

    /// Applies a given split to a dataset; names the split file when an image is unknown.
    pub fn from_split(dataset: &CaptionDataset, split: Split, split_path: &Path) -> Result<Self> {
        let train = PairDataset::new(dataset.select(&split.train, split_path)?);
        let val = PairDataset::new(dataset.select(&split.val, split_path)?);
        let test = PairDataset::new(dataset.select(&split.test, split_path)?);
        Ok(Self { split, train, val, test })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:05}.jpg")).collect()
    }

    #[test]
    fn deterministic_for_a_seed_and_input_order() {
        let a = Split::by_image(&names(100), 0.2, 42);
        let mut shuffled = names(100);
        shuffled.reverse();
        assert_eq!(a, Split::by_image(&shuffled, 0.2, 42));
        assert_ne!(a.val, Split::by_image(&names(100), 0.2, 43).val);
        assert_eq!(a.val.len(), 20);
        assert_eq!(a.train.len(), 80);
    }

    #[test]
    fn no_image_on_both_sides_and_none_lost() {
        let s = Split::by_image(&names(31), 0.25, 1);
        let train: HashSet<_> = s.train.iter().collect();
        assert!(s.val.iter().all(|v| !train.contains(v)));
        assert_eq!(s.train.len() + s.val.len(), 31);
    }

    #[test]
    fn tiny_datasets_keep_both_sides() {
        let s = Split::by_image(&names(3), 0.01, 0);
        assert_eq!((s.train.len(), s.val.len()), (2, 1));
        let s = Split::by_image(&names(3), 0.0, 0);
        assert_eq!((s.train.len(), s.val.len()), (3, 0));
    }

    #[test]
    fn round_trips_through_a_file_and_rejects_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("split.json");
        let s = Split::by_image(&names(10), 0.3, 5);
        s.save(&path).unwrap();
        assert_eq!(Split::load(&path).unwrap(), s);

        let mut bad = s.clone();
        bad.val.push(bad.train[0].clone());
        bad.save(&path).unwrap();
        let err = Split::load(&path).unwrap_err().to_string();
        assert!(err.contains("both train and val") && err.contains("split.json"), "{err}");
        let mut bad = s.clone();
        bad.test.push(bad.val[0].clone());
        bad.save(&path).unwrap();
        let err = Split::load(&path).unwrap_err().to_string();
        assert!(err.contains("both val and test"), "{err}");
    }

    #[test]
    fn numpy_legacy_redraws_the_notebooks_choice_in_file_order() {
        // NumPy 2.4.6: np.random.seed(42); np.random.permutation(10) == [8 1 5 0 7 2 9 4 3 6],
        // so choice(arange(10), 2, replace=False) == [8, 1]: ids 1 and 8 validate.
        let file_order: Vec<String> =
            ["j", "i", "h", "g", "f", "e", "d", "c", "b", "a"].map(String::from).to_vec();
        let s = Split::numpy_legacy(&file_order, 0.2, 42).unwrap();
        assert_eq!(s.val, ["i", "b"].map(String::from).to_vec());
        assert_eq!(s.train, ["j", "h", "g", "f", "e", "d", "c", "a"].map(String::from).to_vec());
        assert_eq!((s.seed, s.val_size, s.test.len()), (42, 0.2, 0));
        // The ids are file positions: the same names in another order validate other images.
        let mut rotated = file_order.clone();
        rotated.rotate_left(1);
        assert_eq!(
            Split::numpy_legacy(&rotated, 0.2, 42).unwrap().val,
            ["h", "a"].map(String::from).to_vec()
        );
        // A repeated name counts once, at its first appearance.
        let mut repeated = file_order.clone();
        repeated.insert(3, "j".into());
        repeated.push("i".into());
        assert_eq!(Split::numpy_legacy(&repeated, 0.2, 42).unwrap(), s);
    }

    #[test]
    fn numpy_legacy_truncates_like_int_and_does_not_clamp() {
        // 0.29 * 100 == 28.999999999999996 in f64: int() gives 28, round() would give 29.
        let s = Split::numpy_legacy(&names(100), 0.29, 42).unwrap();
        assert_eq!((s.val.len(), s.train.len()), (28, 72));
        let s = Split::numpy_legacy(&names(1), 0.2, 42).unwrap();
        assert_eq!((s.val.len(), s.train.len()), (0, 1));
        let s = Split::numpy_legacy(&names(3), 0.0, 42).unwrap();
        assert_eq!((s.val.len(), s.train.len()), (0, 3));
    }

    #[test]
    fn numpy_legacy_refuses_seeds_numpy_refuses() {
        assert!(Split::numpy_legacy(&names(5), 0.2, u32::MAX as u64).is_ok());
        let err = Split::numpy_legacy(&names(5), 0.2, 1 << 32).unwrap_err().to_string();
        assert!(
            err.contains("data.seed") && err.contains("4294967296") && err.contains("2**32 - 1"),
            "{err}"
        );
    }

    #[test]
    fn a_predefined_split_keeps_its_sides_and_older_files_have_no_test_side() {
        let sides: Vec<(String, PredefinedSide)> = [
            ("c", PredefinedSide::Test),
            ("a", PredefinedSide::Train),
            ("b", PredefinedSide::Val),
            ("d", PredefinedSide::Train),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
        let s = Split::predefined(&sides, 7);
        assert_eq!(
            (s.train.clone(), s.val.clone(), s.test.clone()),
            (vec!["a".into(), "d".into()], vec!["b".to_string()], vec!["c".to_string()])
        );
        assert_eq!(s.side("test"), Some(&["c".to_string()][..]));
        assert!(s.side("holdout").is_none());
        let old: Split =
            serde_json::from_str(r#"{"seed": 1, "val_size": 0.5, "train": ["a"], "val": ["b"]}"#)
                .unwrap();
        assert!(old.test.is_empty());
        assert!(!serde_json::to_string(&old).unwrap().contains("test"));
    }
}
