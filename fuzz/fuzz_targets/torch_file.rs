//! PyTorch zip checkpoints through `read_torch_file`, every tensor's bytes read. An even first
//! byte: the rest is the whole file (zip parsing). An odd one: the rest is a pickle, then after
//! the first `\0\0\0\0` one storage's bytes, zipped here the way `torch.save` lays them out, so
//! that mutations reach the pickle machine instead of failing the zip's checksums. With bit 2
//! of the first byte set, the storage's last four bytes become the size the zip's central
//! directory claims for it (a file that lies about how much data it holds).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

/// `archive/data.pkl` and `archive/data/0`, stored uncompressed; `claim` replaces the sizes the
/// central directory gives `archive/data/0`.
fn torch_zip(pickle: &[u8], storage: &[u8], claim: Option<u32>) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/byteorder", stored).unwrap();
    zip.write_all(b"little").unwrap();
    zip.start_file("archive/data/0", stored).unwrap();
    zip.write_all(storage).unwrap();
    let mut bytes = zip.finish().unwrap().into_inner();
    if let Some(claim) = claim {
        // A central directory header: compressed size at 20, uncompressed at 24, name at 46.
        let name = b"archive/data/0";
        let at = (0..bytes.len().saturating_sub(46 + name.len())).rev().find(|&i| {
            bytes[i..i + 4] == *b"PK\x01\x02" && bytes[i + 46..i + 46 + name.len()] == *name
        });
        if let Some(at) = at {
            bytes[at + 20..at + 24].copy_from_slice(&claim.to_le_bytes());
            bytes[at + 24..at + 28].copy_from_slice(&claim.to_le_bytes());
        }
    }
    bytes
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let file = if pick % 2 == 0 {
        rest.to_vec()
    } else {
        let split = rest.windows(4).position(|w| w == [0; 4]).unwrap_or(rest.len());
        let storage = rest.get(split + 4..).unwrap_or(&[]);
        let claim = (pick & 4 != 0 && storage.len() >= 4)
            .then(|| u32::from_le_bytes(storage[storage.len() - 4..].try_into().unwrap()));
        torch_zip(&rest[..split], storage, claim)
    };
    let path = clip_fuzz::scratch_file("weights.ckpt", &file);
    let top_key = (pick & 2 != 0).then_some("state_dict");
    if let Ok(torch) = clip_model::torch_file::read_torch_file(&path, top_key) {
        for snapshot in torch.tensors.values() {
            let _ = snapshot.to_data();
        }
    }
});
