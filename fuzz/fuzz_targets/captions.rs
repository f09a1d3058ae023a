//! Caption files in every text format: the first byte picks the format (and, for CSV, the
//! delimiter), the rest is the file.
#![no_main]

use std::path::Path;

use clip_data::captions::{CaptionFormat, ColumnSpec};
use libfuzzer_sys::fuzz_target;

const FORMATS: [CaptionFormat; 6] = [
    CaptionFormat::Flickr30k,
    CaptionFormat::Flickr8k,
    CaptionFormat::Csv,
    CaptionFormat::Jsonl,
    CaptionFormat::Karpathy,
    CaptionFormat::Webdataset,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else { return };
    let format = FORMATS[pick as usize % FORMATS.len()];
    let delimiter = [b',', b'\t', b'|', b';'][(pick as usize / FORMATS.len()) % 4];
    let columns = ColumnSpec { delimiter, ..ColumnSpec::default() };
    if let Ok(parsed) =
        clip_data::formats::parse_captions(Path::new("captions"), text, format, &columns)
    {
        assert!(!parsed.records.is_empty(), "a parse that succeeds has captions");
    }
});
