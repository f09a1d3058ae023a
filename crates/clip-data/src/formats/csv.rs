//! The generic delimited format (`data.format = "csv"`): a header naming an image column and a
//! caption column (`data.image_column`, `data.caption_column`), any one-byte separator
//! (`data.delimiter`). Flickr8k's file is read by the same parser (`flickr.rs`).

use std::path::Path;

use crate::captions::{CaptionRecord, ColumnSpec, ParseReport, RowIssue};
use crate::error::{DataError, Result};

// `::csv` below is the csv crate, not this module.
pub(super) fn parse_delimited(
    path: &Path,
    text: &str,
    columns: &ColumnSpec,
    join_extra_fields: bool,
) -> Result<(Vec<CaptionRecord>, ParseReport)> {
    let mut reader = ::csv::ReaderBuilder::new()
        .delimiter(columns.delimiter)
        .flexible(true)
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut rows = reader.records();
    let header = match rows.next() {
        Some(Ok(h)) => h,
        Some(Err(source)) => return Err(DataError::Csv { path: path.into(), line: 1, source }),
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

#[cfg(test)]
mod tests {
    use crate::captions::{CaptionFormat, CaptionRecord};
    use crate::formats::tests::parse;

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
}
