//! The Flickr caption files: Flickr30k's `results.csv` (`image_name| comment_number| comment`,
//! `|`-separated with padded fields) and Flickr8k's `captions.txt` (`image,caption`,
//! comma-separated, captions sometimes quoted, sometimes holding unquoted commas).

use std::path::Path;

use crate::captions::{CaptionRecord, ColumnSpec, ParseReport, RowIssue};
use crate::error::{DataError, Result};

const FLICKR30K_HEADER: [&str; 3] = ["image_name", "comment_number", "comment"];

pub(super) fn parse_flickr30k(
    path: &Path,
    text: &str,
) -> Result<(Vec<CaptionRecord>, ParseReport)> {
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

/// Flickr8k's `captions.txt`: the delimited layout with fixed columns `image,caption`, where
/// unquoted commas in the last (caption) column are joined back.
pub(super) fn parse_flickr8k(path: &Path, text: &str) -> Result<(Vec<CaptionRecord>, ParseReport)> {
    super::csv::parse_delimited(
        path,
        text,
        &ColumnSpec { image: "image".into(), caption: "caption".into(), delimiter: b',' },
        true,
    )
}

#[cfg(test)]
mod tests {
    use crate::captions::CaptionFormat;
    use crate::formats::tests::parse;

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
}
