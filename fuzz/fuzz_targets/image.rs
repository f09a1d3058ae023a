//! Encoded images (JPEG, PNG, and whatever the format guess lets through) decoded to RGB.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clip_data::imaging::decode_rgb_bytes(data.to_vec(), Path::new("fuzz-image"));
});
