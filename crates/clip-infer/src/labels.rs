//! Image labels from a CSV (`image` column + a label column), for zero-shot ground truth and
//! class-level retrieval. Images are matched by file name, or by their name in the dataset.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{InferError, Result};

/// Each image's label, keyed by the `image` column (trimmed).
#[derive(Debug, Clone, Default)]
pub struct ImageLabels {
    pub by_image: HashMap<String, String>,
}

impl ImageLabels {
    /// Reads `path`; it must have an `image` column and `column`.
    pub fn read(path: &Path, column: &str) -> Result<Self> {
        let bad = |message: String| InferError::Run { path: path.into(), message };
        let unreadable = |what: String, e: csv::Error| InferError::unreadable(path, what, e);
        let mut reader =
            csv::Reader::from_path(path).map_err(|e| unreadable("cannot read".into(), e))?;
        let headers = reader.headers().map_err(|e| unreadable("no header".into(), e))?.clone();
        let find = |name: &str| headers.iter().position(|h| h.trim() == name);
        let (Some(ic), Some(lc)) = (find("image"), find(column)) else {
            return Err(bad(format!(
                "needs columns `image` and `{column}`; found {:?}",
                headers.iter().collect::<Vec<_>>()
            )));
        };
        let mut by_image = HashMap::new();
        for (i, row) in reader.records().enumerate() {
            let row = row.map_err(|e| unreadable(format!("line {}", i + 2), e))?;
            if let (Some(img), Some(label)) = (row.get(ic), row.get(lc)) {
                by_image.insert(img.trim().to_string(), label.trim().to_string());
            }
        }
        Ok(Self { by_image })
    }

    /// The label of an image named `name` (a path or file name).
    pub fn get(&self, name: &str) -> Option<&str> {
        let file = Path::new(name).file_name().and_then(|f| f.to_str()).unwrap_or(name);
        self.by_image.get(file).or_else(|| self.by_image.get(name)).map(String::as_str)
    }

    /// The distinct labels, sorted.
    pub fn classes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_image.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    /// The index into `classes` of each named image's label; an image without a label, or with
    /// a label not in `classes`, is an error naming it (`source` names the labels file).
    pub fn indices<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        classes: &[String],
        source: &Path,
    ) -> Result<Vec<usize>> {
        names
            .into_iter()
            .map(|name| {
                let label = self.get(name).ok_or_else(|| InferError::Run { path: source.into(), message: format!("no label for image {name}") })?;
                classes.iter().position(|c| c == label).ok_or_else(|| InferError::Run {
                    path: source.into(),
                    message: format!("image {name} has label {label:?}, which is not one of the classes {classes:?}"),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_by_file_name_with_errors_that_name_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels.csv");
        std::fs::write(&p, "image,label,class\ntest-0.png,9,ankle boot\ntest-1.png,0,t-shirt\n")
            .unwrap();
        let l = ImageLabels::read(&p, "class").unwrap();
        assert_eq!(l.get("test/test-0.png"), Some("ankle boot"));
        let classes = l.classes();
        assert_eq!(classes, ["ankle boot", "t-shirt"]);
        assert_eq!(l.indices(["test/test-1.png", "test-0.png"], &classes, &p).unwrap(), [1, 0]);
        let e = l.indices(["test-2.png"], &classes, &p).unwrap_err().to_string();
        assert!(e.contains("labels.csv") && e.contains("test-2.png"), "{e}");
        let e = l.indices(["test-0.png"], &["t-shirt".to_string()], &p).unwrap_err().to_string();
        assert!(e.contains("ankle boot"), "{e}");
        let e = ImageLabels::read(&p, "colour").unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("labels.csv"), "{e}");
    }
}
