//! GGUF files (llama.cpp's format): memory-mapped, header, metadata (`general.*`, `gemma3.*`,
//! `tokenizer.ggml.*`) and tensor directory parsed once; tensors dequantized to f32 on request
//! (see [`dequant`]); files written by [`mod@write`]. Shapes are returned row-major (GGUF lists
//! dimensions innermost first).
//! Errors name the file and what was malformed. Not the mapping of names to a model.

pub mod dequant;
pub mod write;

use crate::{Error, Result};
use dequant::GgmlType;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer (non-negative signed ones too).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// As a float (integers too).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's directory entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset in the file.
    pub offset: usize,
    /// Bytes.
    pub size: usize,
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgufFile({}, {} tensors)", self.path.display(), self.tensors.len())
    }
}

/// Deepest nesting of metadata arrays accepted (GGUF writers use one level).
const MAX_ARRAY_DEPTH: usize = 4;
/// Most dimensions a tensor may have (GGML has 4).
const MAX_DIMS: usize = 8;
/// Longest string accepted in metadata or a tensor name.
const MAX_STRING: usize = 1 << 24;

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
    path: &'a Path,
    /// Bytes of parsed metadata values still allowed (bounds memory relative to the file).
    budget: usize,
}

impl Cursor<'_> {
    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::invalid(format!("{}: {what}", self.path.display()))
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if n > self.remaining() {
            return Err(self.err(format_args!(
                "truncated GGUF (needed {n} bytes at offset {}, file has {})",
                self.at,
                self.data.len()
            )));
        }
        let s = &self.data[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A count or length from the file, which must fit in what remains of it at `min` bytes each.
    fn count(&mut self, what: &str, min: usize) -> Result<usize> {
        let at = self.at;
        let n = self.u64()?;
        let fits =
            usize::try_from(n).ok().filter(|&n| n.checked_mul(min.max(1)).is_some_and(|b| b <= self.remaining()));
        fits.ok_or_else(|| {
            self.err(format_args!(
                "truncated or corrupt GGUF: {what} of {n} at offset {at} cannot fit in the {} bytes left in the file",
                self.remaining()
            ))
        })
    }

    fn charge(&mut self, bytes: usize) -> Result<()> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            self.err(format_args!("metadata at offset {} would need far more memory than the file's size", self.at))
        })?;
        Ok(())
    }

    fn string(&mut self) -> Result<String> {
        let at = self.at;
        let n = self.count("a string length", 1)?;
        if n > MAX_STRING {
            return Err(self.err(format_args!("a string of {n} bytes at offset {at} (at most {MAX_STRING})")));
        }
        self.charge(n)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::invalid(format!("{}: a GGUF string at offset {at} is not UTF-8", self.path.display())))
    }

    /// Smallest encoding of one value of type `ty` (for bounding array counts).
    fn min_size(ty: u32) -> usize {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => 1,
        }
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        self.charge(std::mem::size_of::<Value>())?;
        Ok(match ty {
            0 => Value::U64(self.take(1)?[0] as u64),
            1 => Value::I64(self.take(1)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_le_bytes(self.take(4)?.try_into().expect("4")) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format_args!(
                        "metadata arrays nested more than {MAX_ARRAY_DEPTH} deep at offset {}",
                        self.at
                    )));
                }
                let item = self.u32()?;
                let n = self.count("a metadata array", Self::min_size(item))?;
                let mut v = Vec::new();
                for _ in 0..n {
                    v.push(self.value(item, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            other => {
                return Err(self.err(format_args!("unknown GGUF metadata type {other} at offset {}", self.at - 4)));
            }
        })
    }
}

/// Whether `path` names a GGUF file (by its `.gguf` extension) rather than an HF model
/// directory: how every loader that takes either decides which it was given.
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl GgufFile {
    /// Opens and parses a GGUF file (version 2 or 3).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Safety: the file is only read; a concurrent writer would make the results garbage, not UB
        // in safe code that reads bytes.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (metadata, tensors) = Self::parse(&map, path)?;
        Ok(GgufFile { path: path.to_path_buf(), map, metadata, tensors })
    }

    /// Parses the header, metadata and tensor directory of GGUF bytes; `path` names them in
    /// errors. Never panics and never allocates much more than the input's size: every length,
    /// count, offset and shape is checked against the bytes before it is used.
    #[allow(clippy::type_complexity)]
    pub fn parse(data: &[u8], path: &Path) -> Result<(BTreeMap<String, Value>, BTreeMap<String, TensorInfo>)> {
        let budget = data.len().saturating_mul(4).saturating_add(64 << 20);
        let mut c = Cursor { data, at: 0, path, budget };
        if c.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(Error::invalid(format!("{}: not a GGUF file (no GGUF magic)", path.display())));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::invalid(format!("{}: GGUF version {version} (2 or 3 expected)", path.display())));
        }
        // A tensor entry takes at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset) bytes, a
        // metadata entry 8 (key) + 4 (type) + 1.
        let n_tensors = c.count("a tensor count", 24)?;
        let n_kv = c.count("a metadata count", 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.err(format_args!("metadata key {key} appears twice")));
            }
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format_args!("tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} expected)")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = c.u64()?;
                match usize::try_from(d) {
                    Ok(d) if d > 0 => dims.push(d),
                    _ => return Err(c.err(format_args!("tensor {name} has a dimension of {d}"))),
                }
            }
            let ty = c.u32()?;
            let offset = c.u64()?;
            raw.push((name, dims, ty, offset));
        }
        let align = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => return Err(c.err(format_args!("general.alignment is {v:?} (a power of two expected)"))),
            },
        };
        let base = c.at.div_ceil(align) * align;
        let mut tensors = BTreeMap::new();
        for (name, dims, ty, offset) in raw {
            let ggml_type = GgmlType::from_id(ty).ok_or_else(|| {
                Error::invalid(format!(
                    "{}: tensor {name} has GGML type {ty}, which this reader does not handle \
                     (F32, F16, BF16, Q8_0, Q5_0, Q4_K, Q6_K are)",
                    path.display()
                ))
            })?;
            let (per, _) = ggml_type.block();
            if dims[0] % per != 0 {
                return Err(
                    c.err(format_args!("tensor {name}: rows of {} values are not whole {per}-value blocks", dims[0]))
                );
            }
            let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let size = n.and_then(|n| ggml_type.checked_bytes_for(n));
            let start = usize::try_from(offset).ok().and_then(|o| o.checked_add(base));
            let end = start.zip(size).and_then(|(s, z)| s.checked_add(z));
            let (Some(start), Some(size), Some(end)) = (start, size, end) else {
                return Err(c.err(format_args!("tensor {name}: shape {dims:?} at offset {offset} overflows")));
            };
            if end > data.len() {
                return Err(c.err(format_args!(
                    "tensor {name} ({size} bytes at {start}) runs past the end of the file ({} bytes)",
                    data.len()
                )));
            }
            if !(offset as usize).is_multiple_of(align) {
                return Err(
                    c.err(format_args!("tensor {name}: offset {offset} is not a multiple of the alignment {align}"))
                );
            }
            let shape: Vec<usize> = dims.iter().rev().copied().collect();
            if tensors.insert(name.clone(), TensorInfo { shape, ggml_type, offset: start, size }).is_some() {
                return Err(c.err(format_args!("tensor {name} appears twice")));
            }
        }
        Ok((metadata, tensors))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, or an error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::invalid(format!("{}: metadata {key} is missing", self.path.display())))
    }

    /// A tensor's raw bytes.
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::invalid(format!("{}: no tensor named {name}", self.path.display())))?;
        Ok((info, &self.map[info.offset..info.offset + info.size]))
    }

    /// A tensor dequantized to f32 (row-major values, shape).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (info, bytes) = self.raw(name)?;
        let n = info.shape.iter().product();
        Ok((dequant::dequantize(info.ggml_type, bytes, n), info.shape.clone()))
    }
}

#[cfg(test)]
mod tests;
