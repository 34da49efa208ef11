//! GGUF files (llama.cpp's format): memory-mapped, header, metadata (`general.*`, `gemma3.*`,
//! `tokenizer.ggml.*`) and tensor directory parsed once; tensors dequantized to f32 on request
//! (see [`dequant`]). Shapes are returned row-major (GGUF lists dimensions innermost first).
//! Errors name the file and what was malformed. Not the mapping of names to a model.

pub mod dequant;

use dequant::GgmlType;
use lapidary_core::{Error, Result};
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

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.at + n > self.data.len() {
            return Err(Error::invalid(format!(
                "{}: truncated GGUF (needed {n} bytes at offset {}, file has {})",
                self.path.display(),
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

    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::invalid(format!("{}: a GGUF string at offset {} is not UTF-8", self.path.display(), self.at))
        })
    }

    fn value(&mut self, ty: u32) -> Result<Value> {
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
                let item = self.u32()?;
                let n = self.u64()? as usize;
                if n > self.data.len() {
                    return Err(Error::invalid(format!(
                        "{}: GGUF array of {n} items is longer than the file",
                        self.path.display()
                    )));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(item)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            other => {
                return Err(Error::invalid(format!("{}: unknown GGUF metadata type {other}", self.path.display())));
            }
        })
    }
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

    #[allow(clippy::type_complexity)]
    fn parse(data: &[u8], path: &Path) -> Result<(BTreeMap<String, Value>, BTreeMap<String, TensorInfo>)> {
        let mut c = Cursor { data, at: 0, path };
        if c.take(4)? != b"GGUF" {
            return Err(Error::invalid(format!("{}: not a GGUF file (no GGUF magic)", path.display())));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::invalid(format!("{}: GGUF version {version} (2 or 3 expected)", path.display())));
        }
        let n_tensors = c.u64()? as usize;
        let n_kv = c.u64()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            metadata.insert(key, c.value(ty)?);
        }
        let mut raw = Vec::with_capacity(n_tensors.min(1 << 20));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > 8 {
                return Err(Error::invalid(format!("{}: tensor {name} has {n_dims} dimensions", path.display())));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64()? as usize);
            }
            let ty = c.u32()?;
            let offset = c.u64()? as usize;
            raw.push((name, dims, ty, offset));
        }
        let align = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32) as usize;
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
            let n: usize = dims.iter().product();
            let (per, _) = ggml_type.block();
            if dims.first().is_some_and(|d0| d0 % per != 0) {
                return Err(Error::invalid(format!(
                    "{}: tensor {name}: rows of {} values are not whole {per}-value blocks",
                    path.display(),
                    dims[0]
                )));
            }
            let size = ggml_type.bytes_for(n);
            let start = base + offset;
            if start + size > data.len() {
                return Err(Error::invalid(format!(
                    "{}: tensor {name} ({size} bytes at {start}) runs past the end of the file ({} bytes)",
                    path.display(),
                    data.len()
                )));
            }
            let shape: Vec<usize> = dims.iter().rev().copied().collect();
            tensors.insert(name, TensorInfo { shape, ggml_type, offset: start, size });
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
