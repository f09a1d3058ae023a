//! JSON Lines (`data.format = "jsonl"`): one object per line with an image field and a caption
//! field (`data.image_column`, `data.caption_column`).

use std::path::Path;

use crate::captions::{CaptionRecord, ColumnSpec, ParseReport, RowIssue};
use crate::error::{DataError, Result};

pub(super) fn parse_jsonl(
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
                return Err(DataError::FileAtLine {
                    path: path.into(),
                    line,
                    what: "not a JSON object per line (JSONL)".into(),
                    source: e.into(),
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

#[cfg(test)]
mod tests {
    use crate::captions::CaptionFormat;
    use crate::formats::tests::parse;

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
