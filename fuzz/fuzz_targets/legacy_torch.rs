//! Legacy (pre-1.6, not zip) torch files as an import reads them (`read_weight_tensors`: clip's
//! own pickle machine since the fix of bug 4; burn-store's reader before), every tensor's bytes
//! read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = clip_fuzz::scratch_file("weights.pth", data);
    if let Ok(tensors) = clip_model::import::read_weight_tensors(&path) {
        for snapshot in tensors.values() {
            let _ = snapshot.to_data();
        }
    }
});
