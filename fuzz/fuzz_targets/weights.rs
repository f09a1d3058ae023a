//! Safetensors weight files as an import reads them (`read_weight_tensors`), every tensor's bytes
//! read. (Zip torch files have their own target, `torch_file`; legacy pickles `legacy_torch`.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = clip_fuzz::scratch_file("weights.safetensors", data);
    if let Ok(tensors) = clip_model::import::read_weight_tensors(&path) {
        for snapshot in tensors.values() {
            let _ = snapshot.to_data();
        }
    }
});
