//! Karpathy's split files (`dataset_flickr30k.json`, `dataset_coco.json`,
//! `dataset_flickr8k.json`): one JSON document listing every image with its sentences and the
//! side of the split it is on (train + restval, val, test).

use std::path::Path;

use crate::captions::{CaptionRecord, ParseReport, PredefinedSide, RowIssue};
use crate::error::{DataError, Result};

/// Each image's side (train, val or test) as Karpathy's file assigns it.
type Sides = Vec<(String, PredefinedSide)>;

/// Parses Karpathy's split file. A record's `line` is the line its image's `"filename"` key is
/// on (1 for the published one-line files).
pub(super) fn parse_karpathy(
    path: &Path,
    text: &str,
) -> Result<(Vec<CaptionRecord>, ParseReport, Sides)> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DataError::FileAtLine {
            path: path.into(),
            line: e.line(),
            what: "not JSON (Karpathy split files are one JSON document)".into(),
            source: e.into(),
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
    use crate::captions::{CaptionFormat, PredefinedSide};
    use crate::formats::tests::parse;

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
}
