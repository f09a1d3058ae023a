//! WebDataset tar shards: the input is `shard.tar`; its samples are read as captions, then every
//! sample's image bytes through the `shard.tar/member` path that training uses.
#![no_main]

use clip_data::{formats::webdataset, shards};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let shard = clip_fuzz::scratch_file("shard.tar", data);
    // The same path holds a new shard each time: its cached index must go.
    shards::forget_index(&shard);
    let _ = shards::list_shards(&shard);
    if let Ok(parsed) = webdataset::read_samples(&shard) {
        for record in &parsed.records {
            let _ = shards::read_image_bytes(&clip_fuzz::scratch_dir().join(&record.image));
        }
    }
});
