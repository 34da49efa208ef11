//! Writing GGUF files (version 3, llama.cpp's layout): typed metadata in insertion order, then the
//! tensor directory, then the tensors, each aligned to 32 bytes. Tensors are given as f32 values
//! and stored as F32, F16, BF16 or Q8_0 with ggml's rounding (Q8_0: per 32 values an f16 scale
//! `max|x| / 127` and codes rounded half away from zero), so that [`super::dequant`] reads back
//! what ggml would. The file is written through a temporary file and renamed. Not a model's names
//! or metadata keys (the exporter chooses those).

use super::dequant::GgmlType;
use crate::{Error, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// Alignment of the tensor data (GGUF's default, `general.alignment` unset).
pub const ALIGNMENT: usize = 32;

/// A typed metadata value, as GGUF stores it (readers such as llama.cpp check the type of each
/// key, so the width matters).
#[derive(Clone, Debug, PartialEq)]
pub enum Meta {
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 7.
    Bool(bool),
    /// GGUF type 8.
    Str(String),
    /// GGUF type 9: an array of one item type (given, so that an empty array is typed too).
    Array(MetaItem, Vec<Meta>),
}

/// Item type of a metadata array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaItem {
    /// u32 items.
    U32,
    /// i32 items.
    I32,
    /// f32 items.
    F32,
    /// bool items.
    Bool,
    /// string items.
    Str,
}

impl MetaItem {
    fn id(self) -> u32 {
        match self {
            MetaItem::U32 => 4,
            MetaItem::I32 => 5,
            MetaItem::F32 => 6,
            MetaItem::Bool => 7,
            MetaItem::Str => 8,
        }
    }
}

impl Meta {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Self {
        Meta::Str(s.into())
    }

    /// An array of f32.
    pub fn f32s(v: &[f32]) -> Self {
        Meta::Array(MetaItem::F32, v.iter().map(|&x| Meta::F32(x)).collect())
    }

    /// An array of i32.
    pub fn i32s(v: &[i32]) -> Self {
        Meta::Array(MetaItem::I32, v.iter().map(|&x| Meta::I32(x)).collect())
    }

    /// An array of strings.
    pub fn strs<S: AsRef<str>>(v: &[S]) -> Self {
        Meta::Array(MetaItem::Str, v.iter().map(|s| Meta::Str(s.as_ref().to_string())).collect())
    }

    fn type_id(&self) -> u32 {
        match self {
            Meta::U32(_) => 4,
            Meta::I32(_) => 5,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => 8,
            Meta::Array(..) => 9,
            Meta::U64(_) => 10,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        match self {
            Meta::U32(v) => out.extend(v.to_le_bytes()),
            Meta::I32(v) => out.extend(v.to_le_bytes()),
            Meta::U64(v) => out.extend(v.to_le_bytes()),
            Meta::F32(v) => out.extend(v.to_le_bytes()),
            Meta::Bool(v) => out.push(*v as u8),
            Meta::Str(s) => put_string(out, s),
            Meta::Array(item, items) => {
                out.extend(item.id().to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for (i, v) in items.iter().enumerate() {
                    if v.type_id() != item.id() {
                        return Err(format!("item {i} is {v:?}, not of the array's type {item:?}"));
                    }
                    v.encode(out)?;
                }
            }
        }
        Ok(())
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

struct PendingTensor {
    name: String,
    /// Row-major shape.
    shape: Vec<usize>,
    ggml_type: GgmlType,
    bytes: Vec<u8>,
}

/// A GGUF file being assembled in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Meta)>,
    keys: BTreeSet<String>,
    tensors: Vec<PendingTensor>,
    names: BTreeSet<String>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry; a key given twice is an error.
    pub fn set(&mut self, key: &str, value: Meta) -> Result<()> {
        if !self.keys.insert(key.to_string()) {
            return Err(Error::invalid(format!("GGUF metadata key {key} set twice")));
        }
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Adds a tensor of row-major `shape` from f32 `values`, stored as `ggml_type` (F32, F16, BF16
    /// or Q8_0; a Q8_0 tensor's rows must be whole 32-value blocks).
    pub fn add_tensor(&mut self, name: &str, shape: &[usize], values: &[f32], ggml_type: GgmlType) -> Result<()> {
        let n: usize = shape.iter().product();
        if shape.is_empty() || n != values.len() {
            return Err(Error::invalid(format!(
                "GGUF tensor {name}: shape {shape:?} does not hold the {} values given",
                values.len()
            )));
        }
        let (per, _) = ggml_type.block();
        if !shape[shape.len() - 1].is_multiple_of(per) {
            return Err(Error::invalid(format!(
                "GGUF tensor {name}: rows of {} values are not whole {per}-value {ggml_type:?} blocks",
                shape[shape.len() - 1]
            )));
        }
        if !self.names.insert(name.to_string()) {
            return Err(Error::invalid(format!("GGUF tensor {name} added twice")));
        }
        let bytes = quantize(ggml_type, values)?;
        self.tensors.push(PendingTensor { name: name.to_string(), shape: shape.to_vec(), ggml_type, bytes });
        Ok(())
    }

    /// Moves the tensors of `other` after this file's own (its metadata is dropped); names
    /// already here are an error.
    pub fn take_tensors(&mut self, other: GgufWriter) -> Result<()> {
        for t in other.tensors {
            if !self.names.insert(t.name.clone()) {
                return Err(Error::invalid(format!("GGUF tensor {} added twice", t.name)));
            }
            self.tensors.push(t);
        }
        Ok(())
    }

    /// The header: magic, version, counts, metadata and tensor directory (tensor data follows
    /// from the next multiple of [`ALIGNMENT`]).
    fn header(&self) -> Result<Vec<u8>> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend(value.type_id().to_le_bytes());
            value.encode(&mut out).map_err(|e| Error::invalid(format!("GGUF metadata {key}: {e}")))?;
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend((t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                out.extend((d as u64).to_le_bytes());
            }
            out.extend(t.ggml_type.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += t.bytes.len().div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        Ok(out)
    }

    /// Writes the file's bytes to `w`: the header, then each tensor at its aligned offset.
    fn write_to(&self, header: &[u8], w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let pad = |len: usize| vec![0u8; len.div_ceil(ALIGNMENT) * ALIGNMENT - len];
        w.write_all(header)?;
        w.write_all(&pad(header.len()))?;
        for t in &self.tensors {
            w.write_all(&t.bytes)?;
            w.write_all(&pad(t.bytes.len()))?;
        }
        Ok(())
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = self.header()?;
        let mut out = Vec::new();
        self.write_to(&header, &mut out).expect("writing to memory");
        Ok(out)
    }

    /// Writes the file to `path` through a temporary file renamed into place, streamed (the
    /// file is never held whole in memory).
    pub fn write(&self, path: &Path) -> Result<()> {
        let header = self.header().map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        crate::fsio::write_atomic_with(path, |w| self.write_to(&header, w))
    }
}

/// Encodes f32 `values` as `t` (F32, F16, BF16, Q8_0), rounding as ggml does.
pub fn quantize(t: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    Ok(match t {
        GgmlType::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        GgmlType::Bf16 => values.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        GgmlType::Q8_0 => {
            if !values.len().is_multiple_of(32) {
                return Err(Error::invalid(format!("Q8_0 needs whole 32-value blocks, got {} values", values.len())));
            }
            let mut out = Vec::with_capacity(values.len() / 32 * 34);
            for block in values.chunks_exact(32) {
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend(half::f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|&x| (x * inv).round() as i8 as u8));
            }
            out
        }
        other => {
            return Err(Error::invalid(format!(
                "writing {other:?} tensors is not supported (F32, F16, BF16, Q8_0 are)"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    //! Files written here read back through the parser (names, shapes, types, metadata, values),
    //! and Q8_0 codes equal ggml's formula on random blocks.
    use super::super::{GgufFile, Value, dequant::dequantize};
    use super::*;
    use crate::rng::SplitMix64;
    use proptest::prelude::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| (rng.next_u64() % 20001) as f32 / 10000.0 - 1.0).collect()
    }

    #[test]
    fn a_written_file_reads_back() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Meta::str("gemma3")).unwrap();
        w.set("gemma3.block_count", Meta::U32(4)).unwrap();
        w.set("x.eps", Meta::F32(1e-6)).unwrap();
        w.set("x.flag", Meta::Bool(true)).unwrap();
        w.set("x.mean", Meta::f32s(&[0.5, 0.25])).unwrap();
        w.set("x.types", Meta::i32s(&[1, 3, 6])).unwrap();
        w.set("x.tokens", Meta::strs(&["<pad>", "\u{2581}a"])).unwrap();
        w.set("x.empty", Meta::Array(MetaItem::Str, vec![])).unwrap();
        let a = random(3 * 64, 1);
        let b = random(5, 2);
        w.add_tensor("a", &[3, 64], &a, GgmlType::Q8_0).unwrap();
        w.add_tensor("b", &[5], &b, GgmlType::F32).unwrap();
        w.add_tensor("c", &[2, 3, 4], &random(24, 3), GgmlType::F16).unwrap();
        w.add_tensor("d", &[24], &random(24, 4), GgmlType::Bf16).unwrap();
        let bytes = w.to_bytes().unwrap();
        let (meta, tensors) = GgufFile::parse(&bytes, Path::new("mem.gguf")).unwrap();
        assert_eq!(meta["general.architecture"], Value::Str("gemma3".into()));
        assert_eq!(meta["gemma3.block_count"], Value::U64(4));
        assert_eq!(meta["x.eps"], Value::F64(1e-6f32 as f64));
        assert_eq!(meta["x.flag"], Value::Bool(true));
        assert_eq!(meta["x.mean"], Value::Array(vec![Value::F64(0.5), Value::F64(0.25)]));
        assert_eq!(meta["x.types"], Value::Array(vec![Value::I64(1), Value::I64(3), Value::I64(6)]));
        assert_eq!(meta["x.tokens"].as_array().unwrap()[1], Value::Str("\u{2581}a".into()));
        assert_eq!(meta["x.empty"], Value::Array(vec![]));
        assert_eq!(tensors["a"].shape, vec![3, 64]);
        assert_eq!(tensors["a"].ggml_type, GgmlType::Q8_0);
        assert_eq!(tensors["c"].shape, vec![2, 3, 4]);
        assert_eq!(tensors["d"].ggml_type, GgmlType::Bf16);
        let read = |name: &str| {
            let t = &tensors[name];
            dequantize(t.ggml_type, &bytes[t.offset..t.offset + t.size], t.shape.iter().product())
        };
        assert_eq!(read("b"), b);
        let back = read("a");
        for (block, got) in a.chunks(32).zip(back.chunks(32)) {
            let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (x, y) in block.iter().zip(got) {
                // Half a step, plus up to 127 codes times the f16 rounding of the step.
                let d = amax / 127.0;
                assert!((x - y).abs() <= d * (0.5 + 127.0 / 2048.0) * 1.001, "{x} vs {y}");
            }
        }
        for t in tensors.values() {
            assert_eq!(t.offset % ALIGNMENT, 0);
        }
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        let mut w = GgufWriter::new();
        w.set("k", Meta::U32(1)).unwrap();
        assert!(w.set("k", Meta::U32(2)).unwrap_err().to_string().contains("k set twice"));
        let e = w.add_tensor("t", &[2, 40], &[0.0; 80], GgmlType::Q8_0).unwrap_err().to_string();
        assert!(e.contains("t") && e.contains("32-value"), "{e}");
        let e = w.add_tensor("u", &[2, 3], &[0.0; 5], GgmlType::F32).unwrap_err().to_string();
        assert!(e.contains("u") && e.contains("[2, 3]"), "{e}");
        w.add_tensor("v", &[2], &[1.0, 2.0], GgmlType::F32).unwrap();
        assert!(w.add_tensor("v", &[2], &[1.0, 2.0], GgmlType::F32).is_err());
        let mut w = GgufWriter::new();
        w.set("mixed", Meta::Array(MetaItem::F32, vec![Meta::U32(1)])).unwrap();
        assert!(w.to_bytes().unwrap_err().to_string().contains("mixed"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Q8_0 as ggml defines it: d = max|x|/127 stored as f16, codes round(x/d) half away
        /// from zero; the reader gives back d·code.
        #[test]
        fn q8_0_matches_ggml(seed in any::<u64>(), scale in 1e-3f32..1e3) {
            let x: Vec<f32> = random(64, seed).iter().map(|v| v * scale).collect();
            let bytes = quantize(GgmlType::Q8_0, &x).unwrap();
            prop_assert_eq!(bytes.len(), 68);
            let back = dequantize(GgmlType::Q8_0, &bytes, 64);
            for (b, block) in x.chunks(32).enumerate() {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let stored = half::f16::from_f32(d).to_f32();
                for (j, v) in block.iter().enumerate() {
                    let code = (v * (1.0 / d)).round() as i8;
                    prop_assert_eq!(bytes[34 * b + 2 + j] as i8, code);
                    prop_assert_eq!(back[32 * b + j], stored * code as f32);
                }
            }
        }
    }
}
