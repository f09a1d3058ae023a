//! Embedding indexes: `index.json`, then after the first NUL byte the `.npy` matrix it names
//! (written as `embeddings.npy`). A loaded index must hold every row it claims.
#![no_main]

use clip_infer::index::{read_npy_f32, EmbeddingIndex, IndexEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let json = clip_fuzz::scratch_file("index.json", &data[..split]);
    let npy = clip_fuzz::scratch_file("embeddings.npy", data.get(split + 1..).unwrap_or(&[]));
    if let Ok((shape, rows)) = read_npy_f32(&npy) {
        assert_eq!(shape[0] * shape[1], rows.len(), "the shape read matches the data read");
    }
    let _ = IndexEntry::of(&json);
    if let Ok(index) = EmbeddingIndex::load(clip_fuzz::scratch_dir()) {
        for i in 0..index.len() {
            let _ = index.row(i);
        }
    }
});
