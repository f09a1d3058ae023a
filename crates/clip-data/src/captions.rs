//! What every caption-file format has in common: the format names (`data.format`), the column
//! settings of the generic formats, the records and damaged-row reports parsers produce, and an
//! image with all its captions. The parsers themselves are in [`crate::formats`], one file each.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which layout a captions file has; chosen in the config (`data.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptionFormat {
    /// `image_name| comment_number| comment`, `|`-separated with padded fields.
    Flickr30k,
    /// `image,caption`, comma-separated (captions may be quoted).
    Flickr8k,
    /// A delimited file with a header naming an image column and a caption column.
    Csv,
    /// One JSON object per line with an image field and a caption field.
    Jsonl,
    /// WebDataset tar shards (`data.captions` = `data.images` = their folder, or one `.tar`):
    /// each sample's image with its `.txt` caption (or a `.json` with `"caption"`).
    Webdataset,
    /// Karpathy's `dataset_flickr30k.json` / `dataset_coco.json` / `dataset_flickr8k.json`:
    /// `{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}`. Its splits
    /// (train + restval, val, test: the 1k-image test set published results use) replace the
    /// random one.
    Karpathy,
}

/// Column names and delimiter for the generic `csv` / `jsonl` formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub image: String,
    pub caption: String,
    pub delimiter: u8,
}

impl Default for ColumnSpec {
    fn default() -> Self {
        Self { image: "image".into(), caption: "caption".into(), delimiter: b',' }
    }
}

/// One usable caption row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionRecord {
    /// 1-based line in the captions file (the header is line 1).
    pub line: usize,
    pub image: String,
    pub caption: String,
}

/// A row that was repaired or skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowIssue {
    pub line: usize,
    pub reason: String,
}

/// What parsing a captions file produced besides the records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ParseReport {
    pub repaired: Vec<RowIssue>,
    pub skipped: Vec<RowIssue>,
}

/// The records of a captions file and the report of damaged rows.
#[derive(Debug, Clone)]
pub struct ParsedCaptions {
    pub path: PathBuf,
    pub records: Vec<CaptionRecord>,
    pub report: ParseReport,
    /// The split each image belongs to, when the file defines one (Karpathy's): image name →
    /// `train`, `val` or `test` (`restval` counts as `train`).
    pub splits: Vec<(String, PredefinedSide)>,
}

/// A side of a split that a captions file defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredefinedSide {
    Train,
    Val,
    Test,
}

/// One image and every caption that describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCaptions {
    /// The name used in the captions file (and in saved splits).
    pub name: String,
    pub path: PathBuf,
    pub captions: Vec<String>,
}
