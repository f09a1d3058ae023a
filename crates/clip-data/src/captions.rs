//! Caption-file parsing: Flickr30k `results.csv`, Flickr8k `captions.txt`, and plain CSV/JSONL.
//!
//! Real caption files have damaged rows (Flickr30k's row 19999 has its caption merged into the
//! `comment_number` field). Each parser applies general rules: a row is repaired when the fix is
//! unambiguous, skipped otherwise, and every repaired or skipped row is reported with its line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

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

/// Reads and parses a captions file in the given format.
pub fn read_captions(
    path: &Path,
    format: CaptionFormat,
    columns: &ColumnSpec,
) -> Result<ParsedCaptions> {
    if format == CaptionFormat::Webdataset {
        return crate::shards::read_samples(path);
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_captions(path, &bytes, format, columns)
}

/// Parses caption-file contents; `path` is only used in messages.
pub fn parse_captions(
    path: &Path,
    bytes: &[u8],
    format: CaptionFormat,
    columns: &ColumnSpec,
) -> Result<ParsedCaptions> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        DataError::CaptionsFormat { path: path.into(), line, message: "not valid UTF-8".into() }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(DataError::EmptyCaptions { path: path.into() });
    }
    let (records, report) = match format {
        CaptionFormat::Flickr30k => parse_flickr30k(path, text)?,
        CaptionFormat::Flickr8k => parse_delimited(
            path,
            text,
            &ColumnSpec { image: "image".into(), caption: "caption".into(), delimiter: b',' },
            true,
        )?,
        CaptionFormat::Csv => parse_delimited(path, text, columns, false)?,
        CaptionFormat::Jsonl => parse_jsonl(path, text, columns)?,
        CaptionFormat::Webdataset => {
            return Err(DataError::CaptionsFormat {
                path: path.into(),
                line: 1,
                message: "WebDataset captions live in tar shards: read them with `read_captions`"
                    .into(),
            })
        }
        CaptionFormat::Karpathy => {
            let (records, report, splits) = parse_karpathy(path, text)?;
            return finish(path, records, report, splits);
        }
    };
    finish(path, records, report, Vec::new())
}

fn finish(
    path: &Path,
    records: Vec<CaptionRecord>,
    report: ParseReport,
    splits: Vec<(String, PredefinedSide)>,
) -> Result<ParsedCaptions> {
    if records.is_empty() {
        return Err(DataError::NoCaptions { path: path.into(), skipped: report.skipped.len() });
    }
    Ok(ParsedCaptions { path: path.into(), records, report, splits })
}

const FLICKR30K_HEADER: [&str; 3] = ["image_name", "comment_number", "comment"];

fn parse_flickr30k(path: &Path, text: &str) -> Result<(Vec<CaptionRecord>, ParseReport)> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
    let (_, header) = lines.next().ok_or_else(|| DataError::EmptyCaptions { path: path.into() })?;
    let fields: Vec<&str> = header.split('|').map(str::trim).collect();
    if fields.len() == 1 {
        let hint = [',', '\t', ';']
            .into_iter()
            .find(|c| header.contains(*c))
            .map(|c| format!(" (it looks {:?}-separated; is `data.format` right?)", c))
            .unwrap_or_default();
        return Err(DataError::CaptionsFormat {
            path: path.into(),
            line: 1,
            message: format!("expected a `|`-separated Flickr30k header `image_name| comment_number| comment`, found {header:?}{hint}"),
        });
    }
    if fields != FLICKR30K_HEADER {
        return Err(DataError::CaptionsFormat {
            path: path.into(),
            line: 1,
            message: format!("expected the Flickr30k header `image_name| comment_number| comment`, found {header:?}"),
        });
    }

    let mut records = Vec::new();
    let mut report = ParseReport::default();
    for (line, row) in lines {
        if row.trim().is_empty() {
            report.skipped.push(RowIssue { line, reason: "empty line".into() });
            continue;
        }
        match flickr30k_row(row) {
            Ok((image, caption, repair)) => {
                if let Some(reason) = repair {
                    report.repaired.push(RowIssue { line, reason });
                }
                records.push(CaptionRecord { line, image, caption });
            }
            Err(reason) => report.skipped.push(RowIssue { line, reason }),
        }
    }
    Ok((records, report))
}

/// Interprets one Flickr30k data row: `(image, caption, Some(repair) if repaired)` or why it is skipped.
///
/// Rules, in order:
/// - three fields: taken as they are (the number must be an integer, the caption non-empty);
/// - more than three fields: the caption held `|`; the extra fields are joined back into it;
/// - two fields whose second is `<integer><spaces><text>`: the caption was merged into the number
///   field (Flickr30k's row 19999); split them apart;
/// - anything else is ambiguous and skipped.
fn flickr30k_row(row: &str) -> std::result::Result<(String, String, Option<String>), String> {
    let fields: Vec<&str> = row.split('|').collect();
    let image = fields[0].trim();
    if image.is_empty() {
        return Err("empty image name".into());
    }
    let (number, caption, repair) = match fields.len() {
        1 => return Err("no `|` separator in the row".into()),
        2 => {
            let merged = fields[1].trim();
            let digits =
                merged.len() - merged.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let rest = &merged[digits..];
            if digits == 0 || !rest.starts_with(char::is_whitespace) || rest.trim().is_empty() {
                return Err(format!(
                    "two fields and the second ({merged:?}) is not `<number> <caption>`; cannot tell the caption apart"
                ));
            }
            (
                &merged[..digits],
                rest.trim().to_string(),
                Some("caption was merged into the comment_number field; split it off".to_string()),
            )
        }
        3 => (fields[1].trim(), fields[2].trim().to_string(), None),
        n => (
            fields[1].trim(),
            fields[2..].join("|").trim().to_string(),
            Some(format!("{n} fields: the caption contained `|`; joined the extra fields back")),
        ),
    };
    if number.parse::<u32>().is_err() {
        return Err(format!("comment_number {number:?} is not a number"));
    }
    if caption.is_empty() {
        return Err("empty caption".into());
    }
    Ok((image.to_string(), caption, repair))
}

fn parse_delimited(
    path: &Path,
    text: &str,
    columns: &ColumnSpec,
    join_extra_fields: bool,
) -> Result<(Vec<CaptionRecord>, ParseReport)> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(columns.delimiter)
        .flexible(true)
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut rows = reader.records();
    let header = match rows.next() {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            return Err(DataError::CaptionsFormat {
                path: path.into(),
                line: 1,
                message: e.to_string(),
            })
        }
        None => return Err(DataError::EmptyCaptions { path: path.into() }),
    };
    let names: Vec<&str> = header.iter().map(str::trim).collect();
    let find = |want: &str| names.iter().position(|n| *n == want);
    let (Some(image_col), Some(caption_col)) = (find(&columns.image), find(&columns.caption))
    else {
        let delimiter = columns.delimiter as char;
        let hint = if names.len() == 1
            && ['|', '\t', ';', ','].iter().any(|c| *c != delimiter && names[0].contains(*c))
        {
            format!(" (the header has no {delimiter:?}; is the separator right?)")
        } else {
            String::new()
        };
        return Err(DataError::CaptionsFormat {
            path: path.into(),
            line: 1,
            message: format!(
                "the header must name columns {:?} and {:?}; found {:?}{hint}",
                columns.image, columns.caption, names
            ),
        });
    };
    let width = names.len();
    let mut records = Vec::new();
    let mut report = ParseReport::default();
    for row in rows {
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                report.skipped.push(RowIssue { line, reason: e.to_string() });
                continue;
            }
        };
        let line = row.position().map(|p| p.line() as usize).unwrap_or(0);
        if row.iter().all(|f| f.trim().is_empty()) {
            report.skipped.push(RowIssue { line, reason: "empty line".into() });
            continue;
        }
        let mut caption = row.get(caption_col).map(|s| s.trim().to_string());
        if row.len() != width {
            // Unquoted delimiters inside the last (caption) column: join them back when the
            // caption is the last column, otherwise the row is ambiguous.
            if join_extra_fields && row.len() > width && caption_col == width - 1 {
                let sep = (columns.delimiter as char).to_string();
                caption = Some(
                    row.iter().skip(caption_col).collect::<Vec<_>>().join(&sep).trim().to_string(),
                );
                report.repaired.push(RowIssue {
                    line,
                    reason: format!(
                        "{} fields instead of {width}: the caption contained {sep:?}; joined back",
                        row.len()
                    ),
                });
            } else {
                report.skipped.push(RowIssue {
                    line,
                    reason: format!("{} fields instead of {width}", row.len()),
                });
                continue;
            }
        }
        let image = row.get(image_col).unwrap_or("").trim().to_string();
        let caption = caption.unwrap_or_default();
        if image.is_empty() || caption.is_empty() {
            report.skipped.push(RowIssue {
                line,
                reason: if image.is_empty() { "empty image name" } else { "empty caption" }.into(),
            });
            continue;
        }
        records.push(CaptionRecord { line, image, caption });
    }
    Ok((records, report))
}

fn parse_jsonl(
    path: &Path,
    text: &str,
    columns: &ColumnSpec,
) -> Result<(Vec<CaptionRecord>, ParseReport)> {
    let mut records = Vec::new();
    let mut report = ParseReport::default();
    for (i, row) in text.lines().enumerate() {
        let line = i + 1;
        if row.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(row) {
            Ok(v) => v,
            Err(e) if records.is_empty() && report.skipped.is_empty() => {
                return Err(DataError::CaptionsFormat {
                    path: path.into(),
                    line,
                    message: format!("not a JSON object per line (JSONL): {e}"),
                })
            }
            Err(e) => {
                report.skipped.push(RowIssue { line, reason: format!("invalid JSON: {e}") });
                continue;
            }
        };
        let field =
            |name: &str| value.get(name).and_then(|v| v.as_str()).map(|s| s.trim().to_string());
        match (field(&columns.image), field(&columns.caption)) {
            (Some(image), Some(caption)) if !image.is_empty() && !caption.is_empty() => {
                records.push(CaptionRecord { line, image, caption })
            }
            _ => report.skipped.push(RowIssue {
                line,
                reason: format!(
                    "needs non-empty string fields {:?} and {:?}",
                    columns.image, columns.caption
                ),
            }),
        }
    }
    Ok((records, report))
}

/// Parses Karpathy's split file. A record's `line` is the line its image's `"filename"` key is
/// on (1 for the published one-line files).
fn parse_karpathy(
    path: &Path,
    text: &str,
) -> Result<(Vec<CaptionRecord>, ParseReport, Vec<(String, PredefinedSide)>)> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DataError::CaptionsFormat {
            path: path.into(),
            line: e.line(),
            message: format!("not JSON (Karpathy split files are one JSON document): {e}"),
        })?;
    let images = value.get("images").and_then(|v| v.as_array()).ok_or_else(|| {
        DataError::CaptionsFormat {
            path: path.into(),
            line: 1,
            message: "expected Karpathy's layout, an object with an `images` array".into(),
        }
    })?;
    // The line of each image's "filename" key, in document order (keys are never inside strings,
    // where quotes are escaped).
    let mut key_lines = Vec::with_capacity(images.len());
    let (mut line, mut last) = (1, 0);
    for (at, _) in text.match_indices("\"filename\"") {
        line += text[last..at].bytes().filter(|&b| b == b'\n').count();
        last = at;
        key_lines.push(line);
    }
    let line_of = |i: usize| if key_lines.len() == images.len() { key_lines[i] } else { 1 };

    let mut records = Vec::new();
    let mut report = ParseReport::default();
    let mut splits = Vec::new();
    let mut seen: std::collections::HashMap<String, (PredefinedSide, usize)> =
        std::collections::HashMap::new();
    for (i, entry) in images.iter().enumerate() {
        let line = line_of(i);
        let text_field = |name: &str| {
            entry.get(name).and_then(|v| v.as_str()).map(str::trim).filter(|s| !s.is_empty())
        };
        let Some(file) = text_field("filename") else {
            report.skipped.push(RowIssue {
                line,
                reason: format!("image entry {} has no `filename`", i + 1),
            });
            continue;
        };
        // COCO's entries name their folder (`val2014`); Flickr's do not.
        let image = match text_field("filepath") {
            Some(dir) => format!("{dir}/{file}"),
            None => file.to_string(),
        };
        let side = match text_field("split") {
            Some("train") | Some("restval") => PredefinedSide::Train,
            Some("val") => PredefinedSide::Val,
            Some("test") => PredefinedSide::Test,
            other => {
                report.skipped.push(RowIssue {
                    line,
                    reason: format!("{image}: split {other:?} is not train, restval, val or test"),
                });
                continue;
            }
        };
        // An image listed twice: on two sides it would be trained on and tested; on one side its
        // captions would count twice.
        if let Some(&(first_side, first_entry)) = seen.get(&image) {
            if first_side != side {
                return Err(DataError::CaptionsFormat {
                    path: path.into(),
                    line,
                    message: format!("image {image} is listed as {side:?} (entry {}) and as {first_side:?} (entry {first_entry})", i + 1),
                });
            }
            report.skipped.push(RowIssue {
                line,
                reason: format!(
                    "{image}: listed again (entry {}, first at entry {first_entry})",
                    i + 1
                ),
            });
            continue;
        }
        seen.insert(image.clone(), (side, i + 1));
        let sentences = entry
            .get("sentences")
            .and_then(|v| v.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut kept = 0;
        for sentence in sentences {
            let raw = sentence.get("raw").and_then(|v| v.as_str()).map(|s| s.trim().to_string());
            let tokens = || {
                let words: Vec<&str> =
                    sentence.get("tokens")?.as_array()?.iter().filter_map(|t| t.as_str()).collect();
                Some(words.join(" "))
            };
            match raw.filter(|r| !r.is_empty()).or_else(tokens).filter(|c| !c.is_empty()) {
                Some(caption) => {
                    records.push(CaptionRecord { line, image: image.clone(), caption });
                    kept += 1;
                }
                None => report.skipped.push(RowIssue {
                    line,
                    reason: format!("{image}: a sentence without `raw` text or `tokens`"),
                }),
            }
        }
        if kept == 0 {
            report.skipped.push(RowIssue { line, reason: format!("{image}: no sentences") });
            continue;
        }
        splits.push((image, side));
    }
    Ok((records, report, splits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, format: CaptionFormat) -> Result<ParsedCaptions> {
        parse_captions(Path::new("captions"), text.as_bytes(), format, &ColumnSpec::default())
    }

    #[test]
    fn flickr30k_rows_are_trimmed() {
        let p = parse(
            "image_name| comment_number| comment\n1000092795.jpg| 0| Two young guys with shaggy hair .\n1000092795.jpg| 1| Two young , White males are outside .\n",
            CaptionFormat::Flickr30k,
        )
        .unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.records[0].image, "1000092795.jpg");
        assert_eq!(p.records[0].caption, "Two young guys with shaggy hair .");
        assert_eq!(p.records[1].line, 3);
        assert!(p.report.repaired.is_empty() && p.report.skipped.is_empty());
    }

    #[test]
    fn karpathy_files_give_captions_and_their_split() {
        let text = r#"{"dataset": "coco", "images": [
  {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "A cat.", "tokens": ["a", "cat"]}, {"tokens": ["a", "small", "cat"]}]},
  {"filename": "b.jpg", "split": "restval", "sentences": [{"raw": "A dog."}]},
  {"filename": "c.jpg", "split": "val", "sentences": [{"raw": "A bird."}]},
  {"filename": "d.jpg", "split": "holdout", "sentences": [{"raw": "A fish."}]},
  {"filename": "e.jpg", "split": "train", "sentences": []}
]}"#;
        let p = parse(text, CaptionFormat::Karpathy).unwrap();
        let captions: Vec<(&str, &str, usize)> =
            p.records.iter().map(|r| (r.image.as_str(), r.caption.as_str(), r.line)).collect();
        assert_eq!(
            captions,
            vec![
                ("val2014/a.jpg", "A cat.", 2),
                ("val2014/a.jpg", "a small cat", 2),
                ("b.jpg", "A dog.", 3),
                ("c.jpg", "A bird.", 4)
            ]
        );
        assert_eq!(
            p.splits,
            vec![
                ("val2014/a.jpg".into(), PredefinedSide::Test),
                ("b.jpg".into(), PredefinedSide::Train),
                ("c.jpg".into(), PredefinedSide::Val)
            ]
        );
        let skipped: Vec<(usize, &str)> =
            p.report.skipped.iter().map(|r| (r.line, r.reason.as_str())).collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].0 == 5 && skipped[0].1.contains("holdout"), "{skipped:?}");
        assert!(skipped[1].0 == 6 && skipped[1].1.contains("e.jpg: no sentences"), "{skipped:?}");
        // An entry without a file name is skipped (lines are then not told apart: 1).
        let p = parse(r#"{"images": [{"split": "train", "sentences": [{"raw": "x"}]}, {"filename": "f.jpg", "split": "train", "sentences": [{"raw": "y"}]}]}"#, CaptionFormat::Karpathy).unwrap();
        assert!(p.report.skipped[0].reason.contains("entry 1") && p.records.len() == 1);
        // Listed twice: on one side the repeat is skipped; on two sides it is an error.
        let twice = |second: &str| {
            format!(
                r#"{{"images": [{{"filename": "f.jpg", "split": "train", "sentences": [{{"raw": "y"}}]}}, {{"filename": "f.jpg", "split": "{second}", "sentences": [{{"raw": "z"}}]}}]}}"#
            )
        };
        let p = parse(&twice("restval"), CaptionFormat::Karpathy).unwrap();
        assert_eq!((p.records.len(), p.splits.len()), (1, 1));
        assert!(p.report.skipped[0].reason.contains("listed again"), "{:?}", p.report.skipped);
        let err = parse(&twice("test"), CaptionFormat::Karpathy).unwrap_err().to_string();
        assert!(err.contains("f.jpg") && err.contains("Test") && err.contains("entry 1"), "{err}");

        let err = parse("{\"images\": [\n{\"filename\": }", CaptionFormat::Karpathy)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("not JSON"), "{err}");
        let err = parse("[1, 2]", CaptionFormat::Karpathy).unwrap_err().to_string();
        assert!(err.contains("`images` array"), "{err}");
    }

    /// The real file's row 19999 (line 20001 with the header) has this exact shape.
    #[test]
    fn flickr30k_merged_caption_row_is_repaired_by_rule() {
        let text = "image_name| comment_number| comment\n\
                    2199200615.jpg| 3| A dog running on grass .\n\
                    2199200615.jpg| 4   A dog runs across the grass .\n\
                    2199200616.jpg| 0| Another dog .\n";
        let p = parse(text, CaptionFormat::Flickr30k).unwrap();
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.records[1].caption, "A dog runs across the grass .");
        assert_eq!(p.records[1].image, "2199200615.jpg");
        assert_eq!(p.report.repaired.len(), 1);
        assert_eq!(p.report.repaired[0].line, 3);
        assert!(p.report.skipped.is_empty());
    }

    #[test]
    fn flickr30k_ambiguous_rows_are_skipped_with_their_line() {
        let text = "image_name| comment_number| comment\n\
                    a.jpg| 0| fine caption\n\
                    b.jpg| just words no number\n\
                    c.jpg| 4\n\
                    d.jpg\n\
                    e.jpg| x| caption with a bad number\n\
                    \n\
                    f.jpg| 1| a | caption with a pipe\n";
        let p = parse(text, CaptionFormat::Flickr30k).unwrap();
        let skipped: Vec<usize> = p.report.skipped.iter().map(|r| r.line).collect();
        assert_eq!(skipped, vec![3, 4, 5, 6, 7]);
        assert_eq!(p.report.repaired.len(), 1);
        assert_eq!(p.records.last().unwrap().caption, "a | caption with a pipe");
        assert_eq!(p.records.len(), 2);
    }

    #[test]
    fn flickr30k_wrong_separator_is_a_clear_error() {
        let err = parse("image,caption\na.jpg,a dog\n", CaptionFormat::Flickr30k).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("captions:1:"), "{msg}");
        assert!(msg.contains("','-separated"), "{msg}");
    }

    #[test]
    fn empty_file_is_an_error() {
        assert!(matches!(
            parse("", CaptionFormat::Flickr30k),
            Err(DataError::EmptyCaptions { .. })
        ));
        assert!(matches!(parse(" \n\n", CaptionFormat::Csv), Err(DataError::EmptyCaptions { .. })));
        assert!(matches!(
            parse("image_name| comment_number| comment\n", CaptionFormat::Flickr30k),
            Err(DataError::NoCaptions { .. })
        ));
    }

    #[test]
    fn flickr8k_quoted_and_unquoted_commas() {
        let text = "image,caption\n\
                    1000268201_693b08cb0e.jpg,A child in a pink dress is climbing up a set of stairs .\n\
                    1001773457_577c3a7d70.jpg,\"A black dog and a spotted dog are fighting , maybe\"\n\
                    1002674143_1b742ab4b8.jpg,A little girl , covered in paint , sits .\n";
        let p = parse(text, CaptionFormat::Flickr8k).unwrap();
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.records[1].caption, "A black dog and a spotted dog are fighting , maybe");
        assert_eq!(p.records[2].caption, "A little girl , covered in paint , sits .");
        assert_eq!(p.report.repaired.len(), 1);
        assert_eq!(p.report.repaired[0].line, 4);
    }

    #[test]
    fn csv_with_named_columns_in_any_order() {
        let text = "id,caption,image\n7,a red square,x.png\n8,,y.png\n";
        let p = parse(text, CaptionFormat::Csv).unwrap();
        assert_eq!(
            p.records,
            vec![CaptionRecord { line: 2, image: "x.png".into(), caption: "a red square".into() }]
        );
        assert_eq!(p.report.skipped[0].line, 3);
    }

    #[test]
    fn csv_missing_column_names_what_was_found() {
        let err = parse("file|text\nx.png|a cat\n", CaptionFormat::Csv).unwrap_err().to_string();
        assert!(
            err.contains("\"image\"") && err.contains("file|text") && err.contains("separator"),
            "{err}"
        );
    }

    #[test]
    fn jsonl_rows() {
        let text =
            "{\"image\": \"a.jpg\", \"caption\": \"a cat\"}\n{\"image\": \"b.jpg\"}\nnot json\n";
        let p = parse(text, CaptionFormat::Jsonl).unwrap();
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.report.skipped.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 3]);
        assert!(parse("image,caption\n", CaptionFormat::Jsonl).is_err());
    }
}
