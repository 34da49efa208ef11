//! Memory-mapped safetensors checkpoints: one `model.safetensors`, or the shards listed by
//! `model.safetensors.index.json`. Headers are parsed once; tensor bytes are read from the
//! mapping only when a tensor is loaded. Every error names the file (and the tensor). Not the
//! key accounting or name aliases of a model (see `weights.rs`). Writing is [`save`]: to a
//! temporary file, then renamed, so a reader never sees half a file. Host bytes only: uploading
//! a tensor to a device is `lapidary-nn`'s `LoadTensor`.

use crate::{DType, Error, Result};
use memmap2::Mmap;
use safetensors::SafeTensors;
pub use safetensors::tensor::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    file: usize,
    /// Storage dtype on disk, for float tensors (None for integer ones, e.g. token ids).
    pub dtype: Option<DType>,
    /// Storage dtype on disk as safetensors names it (`F32`, `I64`, ...).
    pub stored: Dtype,
    /// Shape on disk.
    pub shape: Vec<usize>,
    offsets: (usize, usize),
}

/// A set of memory-mapped safetensors files and the tensors they hold.
pub struct SafetensorsFiles {
    files: Vec<MappedFile>,
    entries: BTreeMap<String, TensorEntry>,
}

impl SafetensorsFiles {
    /// Opens a `.safetensors` file, or a model directory holding `model.safetensors` or
    /// `model.safetensors.index.json` with its shards.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_file() {
            return Self::from_files(&[path.to_path_buf()]);
        }
        let single = path.join("model.safetensors");
        let index = path.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::invalid(format!("{}: not valid JSON: {e}", index.display())))?;
            let map = json["weight_map"]
                .as_object()
                .ok_or_else(|| Error::invalid(format!("{}: no \"weight_map\" object", index.display())))?;
            let mut shards = Vec::new();
            for (name, v) in map {
                let shard = v.as_str().ok_or_else(|| {
                    Error::invalid(format!("{}: tensor {name} maps to {v}, not a file name", index.display()))
                })?;
                // Shards are files of the model directory itself: no directories, no way out of it.
                let plain = Path::new(shard).components().count() == 1
                    && matches!(Path::new(shard).components().next(), Some(std::path::Component::Normal(_)));
                if !plain {
                    return Err(Error::invalid(format!(
                        "{}: tensor {name} maps to {shard:?}; shards must be plain file names in the model directory",
                        index.display()
                    )));
                }
                shards.push(shard.to_string());
            }
            shards.sort();
            shards.dedup();
            let paths: Vec<PathBuf> = shards.iter().map(|s| path.join(s)).collect();
            let files = Self::from_files(&paths)?;
            for name in map.keys() {
                if !files.entries.contains_key(name) {
                    return Err(Error::invalid(format!(
                        "{}: lists tensor {name} in {}, which does not hold it",
                        index.display(),
                        map[name].as_str().unwrap_or("?")
                    )));
                }
            }
            Ok(files)
        } else if single.is_file() {
            Self::from_files(&[single])
        } else {
            Err(Error::invalid(format!(
                "{}: no model.safetensors or model.safetensors.index.json in this directory",
                path.display()
            )))
        }
    }

    /// Maps the given files; a tensor name in two files is an error.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for path in paths {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the mapping is read-only; a checkpoint modified while mapped is the
            // caller's concern, as with any memory-mapped loader.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| Error::invalid(format!("{}: not a valid safetensors file: {e}", path.display())))?;
            let idx = files.len();
            for (name, info) in meta.tensors() {
                let dtype = match info.dtype {
                    Dtype::F32 => Some(DType::F32),
                    Dtype::BF16 => Some(DType::BF16),
                    Dtype::F16 => Some(DType::F16),
                    _ => None,
                };
                let entry = TensorEntry {
                    file: idx,
                    dtype,
                    stored: info.dtype,
                    shape: info.shape.clone(),
                    offsets: info.data_offsets,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(Error::invalid(format!(
                        "{}: tensor {name} also appears in an earlier file",
                        path.display()
                    )));
                }
            }
            files.push(MappedFile { path: path.clone(), mmap, data_start: 8 + header_len });
        }
        Ok(SafetensorsFiles { files, entries })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Dtype and shape of a tensor on disk.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    /// The file holding `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.entries.get(name).map(|e| self.files[e.file].path.as_path())
    }

    /// Raw little-endian bytes of a tensor as stored.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let e = self.entries.get(name).ok_or_else(|| Error::invalid(format!("no tensor named {name}")))?;
        let f = &self.files[e.file];
        Ok(&f.mmap[f.data_start + e.offsets.0..f.data_start + e.offsets.1])
    }

    /// A float tensor's stored dtype, bytes and shape; an error naming the file when `name` is
    /// missing or not stored as F32, BF16 or F16.
    pub fn float(&self, name: &str) -> Result<(DType, &[u8], &[usize])> {
        let e = self.entries.get(name).ok_or_else(|| Error::invalid(format!("no tensor named {name}")))?;
        match e.dtype {
            Some(stored) => Ok((stored, self.bytes(name)?, &e.shape)),
            None => Err(Error::invalid(format!(
                "{}: tensor {name} is stored as {:?}; expected F32, BF16 or F16",
                self.files[e.file].path.display(),
                e.stored
            ))),
        }
    }

    /// Float tensor `name` as host f32 values with its shape.
    pub fn load_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (stored, bytes, shape) = self.float(name)?;
        Ok((stored.decode(bytes), shape.to_vec()))
    }

    /// Reads integer tensor `name` (I64, I32 or U8 on disk) as host `i64` values with its shape.
    pub fn load_i64(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let e = self.entries.get(name).ok_or_else(|| Error::invalid(format!("no tensor named {name}")))?;
        let b = self.bytes(name)?;
        let v = match e.stored {
            Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            Dtype::I32 => {
                b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect()
            }
            Dtype::U8 => b.iter().map(|&x| x as i64).collect(),
            other => {
                return Err(Error::invalid(format!(
                    "{}: tensor {name} is stored as {other:?}; expected an integer tensor (I64, I32 or U8)",
                    self.files[e.file].path.display()
                )));
            }
        };
        Ok((v, e.shape.clone()))
    }
}

/// One tensor to write: name, safetensors dtype, shape and little-endian bytes.
pub type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// The entry for host int64 values (token ids, masks, labels, positions of a batch file).
pub fn entry_i64(name: impl Into<String>, values: &[i64], shape: &[usize]) -> Entry {
    (name.into(), Dtype::I64, shape.to_vec(), values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Writes `entries` as a safetensors file at `path`, atomically (a temporary file in the same
/// directory, then a rename).
pub fn save(path: impl AsRef<Path>, entries: &[Entry]) -> Result<()> {
    let path = path.as_ref();
    let views = entries
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::invalid(format!("{}: tensor {n}: {e}", path.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    crate::fsio::write_atomic(path, &bytes)
}
