//! TensorBoard event files: the scalars of a training run (`train/loss`, `eval/loss`, …) in the
//! format TensorBoard reads — TFRecord framing (length, masked CRC-32C of the length, an
//! `Event` protocol buffer, masked CRC-32C of it) around `Event { wall_time, step, summary {
//! value { tag, simple_value } } }`, the first record naming the format (`brain.Event:2`).
//! Written as HF's Trainer writes them, under `<output_dir>/runs/`, one file per process, each
//! record flushed when written. A resumed run starts a new file with a `SessionLog` START at
//! its first new step, which makes TensorBoard drop the earlier files' points from that step on
//! (as `metrics.jsonl` is cut there). Not a reader, not images or histograms.

use lapidary_core::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One event file being written.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.<host>.<pid>` and writes the file-version record;
    /// `resumed_at` (a resumed run's first new step) adds a `SessionLog` START there, so that
    /// TensorBoard drops what earlier files hold from that step on.
    pub fn create(dir: &Path, resumed_at: Option<usize>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let now = wall_time();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains(['/', '\\']))
            .unwrap_or_else(|| "localhost".into());
        let path = dir.join(format!("events.out.tfevents.{}.{host}.{}", now as u64, std::process::id()));
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { path, file };
        let mut version = event_header(now, 0);
        field_bytes(&mut version, 3, b"brain.Event:2");
        w.write_record(&version)?;
        if let Some(step) = resumed_at {
            // SessionLog { status: START (1) } as Event field 7.
            let mut session = Vec::new();
            field_varint(&mut session, 1, 1);
            let mut event = event_header(wall_time(), step as i64);
            field_bytes(&mut event, 7, &session);
            w.write_record(&event)?;
        }
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the scalars `(tag, value)` of one step as one event (non-finite values included,
    /// as TensorBoard shows them).
    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            field_bytes(&mut v, 1, tag.as_bytes());
            // simple_value: float, field 2, wire type 5 (32-bit).
            v.push((2 << 3) | 5);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &v);
        }
        let mut event = event_header(wall_time(), step as i64);
        field_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    /// One TFRecord, flushed.
    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        record.extend_from_slice(data);
        record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        // One write per record, so a crash never leaves half of one behind a whole one.
        self.file.write_all(&record).and_then(|_| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// `Event { wall_time (1, double), step (2, int64) }`.
fn event_header(wall_time: f64, step: i64) -> Vec<u8> {
    let mut e = vec![(1 << 3) | 1];
    e.extend_from_slice(&wall_time.to_le_bytes());
    field_varint(&mut e, 2, step as u64);
    e
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

/// A length-delimited field (string, bytes, message).
fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli), as TFRecord frames use it.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_the_published_values() {
        // The check value of CRC-32C (RFC 3720, B.4) and of 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(masked_crc32c(b""), 0u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn records_are_framed_and_scalars_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), Some(7)).unwrap();
        w.scalars(8, &[("train/loss", 2.5), ("train/learning_rate", 1e-4)]).unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        // Walk the frames: every length and payload checks out, three records in all.
        let (mut at, mut payloads) = (0, Vec::new());
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()),
                masked_crc32c(&bytes[at..at + 8])
            );
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(data));
            payloads.push(data.to_vec());
            at += 16 + len;
        }
        assert_eq!(payloads.len(), 3);
        assert!(payloads[0].windows(13).any(|w| w == b"brain.Event:2"));
        // The scalar event: step 8 as a varint after field 2's key, the tag, 2.5 as a float.
        let p = &payloads[2];
        assert_eq!(&p[9..11], &[0x10, 8]);
        assert!(p.windows(10).any(|w| w == b"train/loss"));
        assert!(p.windows(5).any(|w| w == [0x15, 0, 0, 0x20, 0x40]));
        // The resumed run's START at step 7: Event.session_log (field 7) = { status: 1 }.
        assert_eq!(&payloads[1][9..], &[0x10, 7, 0x3a, 2, 0x08, 1]);
    }
}
