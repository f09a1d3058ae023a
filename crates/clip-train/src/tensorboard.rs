//! Scalars in TensorBoard's event-file format, so `tensorboard --logdir runs/` shows and compares
//! runs as it does for PyTorch trainers. An event file is a sequence of TFRecords (length, masked
//! CRC-32C of the length, data, masked CRC-32C of the data), each holding one `Event` protocol
//! buffer; the few fields written here are encoded directly.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, TrainError};

/// Appends scalar events to a new event file in a directory.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir`. A run resumed from the checkpoint of step `resumed_at` says so
    /// in a session-start event at the next step: TensorBoard then hides what an interrupted
    /// process logged after the checkpoint, so the curves continue without a doubled stretch.
    pub fn create(dir: &Path, resumed_at: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let now = wall_time();
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".into());
        let path =
            dir.join(format!("events.out.tfevents.{}.{host}.{}", now as u64, std::process::id()));
        let out = BufWriter::new(File::create(&path).map_err(|e| TrainError::io(&path, e))?);
        let mut w = Self { path, out };
        w.record(&version_event(now))?;
        if resumed_at > 0 {
            w.record(&session_start_event(now, resumed_at + 1))?;
        }
        w.flush()?;
        Ok(w)
    }

    /// One event holding `scalars` (tag, value) at `step`; non-finite values are left out.
    pub fn scalars(&mut self, step: usize, scalars: &[(&str, f64)]) -> Result<()> {
        self.record(&scalars_event(wall_time(), step, scalars))
    }

    /// Makes everything written so far visible to a reader.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| TrainError::io(&self.path, e))
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(&framed(data)).map_err(|e| TrainError::io(&self.path, e))
    }
}

/// A TFRecord: length, its masked CRC, the data, its masked CRC.
fn framed(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut rec = Vec::with_capacity(data.len() + 16);
    rec.extend_from_slice(&len);
    rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
    rec.extend_from_slice(data);
    rec.extend_from_slice(&masked_crc(data).to_le_bytes());
    rec
}

/// The first event of a file: `file_version` (field 3).
fn version_event(wall_time: f64) -> Vec<u8> {
    let mut e = event_header(wall_time, 0);
    bytes_field(&mut e, 3, b"brain.Event:2");
    e
}

/// `session_log` (field 7) with status START: a restart from `step`.
fn session_start_event(wall_time: f64, step: usize) -> Vec<u8> {
    let mut e = event_header(wall_time, step);
    let mut log = Vec::new();
    varint_field(&mut log, 1, 1);
    bytes_field(&mut e, 7, &log);
    e
}

/// `summary` (field 5) of `Value { tag = 1, simple_value = 2 }`s.
fn scalars_event(wall_time: f64, step: usize, scalars: &[(&str, f64)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in scalars.iter().filter(|(_, v)| v.is_finite()) {
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        v.push(2 << 3 | 5); // a float: fixed 32 bits
        v.extend_from_slice(&(*value as f32).to_le_bytes());
        bytes_field(&mut summary, 1, &v);
    }
    let mut e = event_header(wall_time, step);
    bytes_field(&mut e, 5, &summary);
    e
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `Event.wall_time` (field 1, double) and `Event.step` (field 2, int64; omitted when 0, as
/// protocol buffers omit defaults).
fn event_header(wall_time: f64, step: usize) -> Vec<u8> {
    let mut e = vec![1 << 3 | 1];
    e.extend_from_slice(&wall_time.to_le_bytes());
    if step > 0 {
        varint_field(&mut e, 2, step as u64);
    }
    e
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

/// A length-delimited field (string, bytes or nested message).
fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// TFRecord's checksum: CRC-32C, rotated and offset.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits an event file into its records, checking both checksums of each.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()),
                masked_crc(len_bytes)
            );
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(
                u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()),
                masked_crc(data)
            );
            out.push(data.to_vec());
            at += 16 + len;
        }
        out
    }

    #[test]
    fn events_match_tensorboard_s_own_encoding_byte_for_byte() {
        // tests/fixtures/tensorboard_events.py wrote these with tensorboard's protos and writer.
        let want = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tensorboard_events.bin"
        ))
        .unwrap();
        let mut got = framed(&version_event(1.5));
        got.extend(framed(&session_start_event(1.5, 8)));
        got.extend(framed(&scalars_event(2.25, 9, &[("train/loss", 2.5), ("val/rsum", 123.25)])));
        assert_eq!(got, want);
    }

    #[test]
    fn crc32c_and_its_mask_match_tensorflow() {
        // CRC-32C of "123456789" is 0xe3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn events_are_checksummed_records_with_tags_steps_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), 7).unwrap();
        w.scalars(8, &[("train/loss", 2.5), ("train/lr", f64::NAN)]).unwrap();
        w.flush().unwrap();
        let file = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        assert!(file.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
        let recs = records(&std::fs::read(&file).unwrap());
        assert_eq!(recs.len(), 3, "version, session start, scalars");
        assert!(recs[0].windows(13).any(|w| w == b"brain.Event:2"));
        // Resumed after step 7: a session start at step 8 (field 2 varint), then the SessionLog
        // (field 7) with status START (1).
        assert_eq!(&recs[1][9..11], &[2 << 3, 8]);
        assert_eq!(&recs[1][11..], &[7 << 3 | 2, 2, 1 << 3, 1]);
        let scalars = &recs[2];
        assert_eq!(&scalars[9..11], &[2 << 3, 8]);
        assert!(scalars.windows(10).any(|w| w == b"train/loss"));
        assert!(scalars.windows(4).any(|w| w == 2.5f32.to_le_bytes()));
        assert!(!scalars.windows(8).any(|w| w == b"train/lr"), "non-finite values are left out");
    }
}
