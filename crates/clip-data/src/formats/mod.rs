//! Caption-file parsing, one file per format: Flickr30k `results.csv` and Flickr8k
//! `captions.txt` (`flickr.rs`), plain CSV (`csv.rs`) and JSONL (`jsonl.rs`), Karpathy's split
//! files (`karpathy.rs`) and WebDataset tar shards ([`webdataset`]); this module picks the parser
//! `data.format` names. What they produce is in [`crate::captions`].
//!
//! Real caption files have damaged rows (Flickr30k's row 19999 has its caption merged into the
//! `comment_number` field). Each parser applies general rules: a row is repaired when the fix is
//! unambiguous, skipped otherwise, and every repaired or skipped row is reported with its line.

mod csv;
mod flickr;
mod jsonl;
mod karpathy;
pub mod webdataset;

use std::path::Path;

use crate::captions::{
    CaptionFormat, CaptionRecord, ColumnSpec, ParseReport, ParsedCaptions, PredefinedSide,
};
use crate::error::{DataError, Result};

/// Reads and parses a captions file in the given format.
pub fn read_captions(
    path: &Path,
    format: CaptionFormat,
    columns: &ColumnSpec,
) -> Result<ParsedCaptions> {
    if format == CaptionFormat::Webdataset {
        return webdataset::read_samples(path);
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
        CaptionFormat::Flickr30k => flickr::parse_flickr30k(path, text)?,
        CaptionFormat::Flickr8k => flickr::parse_flickr8k(path, text)?,
        CaptionFormat::Csv => self::csv::parse_delimited(path, text, columns, false)?,
        CaptionFormat::Jsonl => jsonl::parse_jsonl(path, text, columns)?,
        CaptionFormat::Webdataset => {
            return Err(DataError::CaptionsFormat {
                path: path.into(),
                line: 1,
                message: "WebDataset captions live in tar shards: read them with `read_captions`"
                    .into(),
            })
        }
        CaptionFormat::Karpathy => {
            let (records, report, splits) = karpathy::parse_karpathy(path, text)?;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Parses `text` as a file named `captions` in `format` with the default columns.
    pub(crate) fn parse(text: &str, format: CaptionFormat) -> Result<ParsedCaptions> {
        parse_captions(Path::new("captions"), text.as_bytes(), format, &ColumnSpec::default())
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
}
