//! Where a model's tensors come from: the [`WeightSource`] trait and its two implementations,
//! safetensors checkpoints and a GGUF file seen under HF names. A third format is a third
//! implementation; [`Weights`](super::Weights) does the naming, shape checks and accounting for
//! all of them. Not the name aliases or the key accounting.

use crate::gguf::GgufFile;
use crate::safetensors::{LoadTensor, SafetensorsFiles};
use lapidary_core::{DType, Device, Error, Result, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A store of named tensors a model loads from.
pub trait WeightSource {
    /// Where the tensors are read from (a file or directory; named in errors).
    fn origin(&self) -> &Path;

    /// Every stored tensor name, sorted.
    fn names(&self) -> Vec<String>;

    /// The stored shape of `name`; `None` when the source does not hold it.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;

    /// The values of held tensor `name` as f32 on the host.
    fn values(&self, name: &str) -> Result<Vec<f32>>;

    /// Held tensor `name` on `device` as `dtype` (by default through [`Self::values`]).
    fn load(&self, name: &str, device: &Device, dtype: DType) -> Result<Tensor> {
        let shape = self.shape(name).ok_or_else(|| Error::invalid(format!("no tensor named {name}")))?;
        Tensor::from_f32(device, &self.values(name)?, &shape, dtype)
    }

    /// The file holding `name`, for errors (by default [`Self::origin`]).
    fn file_of(&self, _name: &str) -> &Path {
        self.origin()
    }

    /// What to add to the error for a tensor the model asks for and the source lacks (e.g. the
    /// name it would have in the file).
    fn missing_note(&self, _name: &str) -> Option<String> {
        None
    }
}

/// Memory-mapped safetensors files (one, or the shards of an index) at `origin`.
pub struct SafetensorsSource {
    /// The files.
    pub files: SafetensorsFiles,
    /// The file or directory they were opened from.
    pub origin: PathBuf,
}

impl WeightSource for SafetensorsSource {
    fn origin(&self) -> &Path {
        &self.origin
    }

    fn names(&self) -> Vec<String> {
        self.files.names().map(str::to_string).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.files.entry(name).map(|e| e.shape.clone())
    }

    fn values(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.files.load_f32(name)?.0)
    }

    fn load(&self, name: &str, device: &Device, dtype: DType) -> Result<Tensor> {
        LoadTensor::load(&self.files, name, device, dtype)
    }

    fn file_of(&self, name: &str) -> &Path {
        self.files.file_of(name).unwrap_or(&self.origin)
    }
}

/// A GGUF file seen under HF names.
pub struct GgufSource {
    file: Rc<GgufFile>,
    /// HF name -> GGUF tensor name, for the tensors the file holds.
    map: BTreeMap<String, String>,
    /// HF name -> GGUF tensor name, for the tensors the file lacks.
    absent: BTreeMap<String, String>,
    /// HF names stored as `1 + w` (Gemma's norms): 1 is subtracted on load.
    minus_one: BTreeSet<String>,
}

impl GgufSource {
    /// `file` under the HF names of `names` (HF name -> GGUF name); names in `minus_one` are
    /// stored as `1 + w` and get 1 subtracted. Names the file lacks are reported as missing
    /// tensors, with their GGUF name, when the model asks for them.
    pub fn new(file: Rc<GgufFile>, names: BTreeMap<String, String>, minus_one: BTreeSet<String>) -> Self {
        let (map, absent) = names.into_iter().partition(|(_, g)| file.tensors.contains_key(g));
        GgufSource { file, map, absent, minus_one }
    }
}

impl WeightSource for GgufSource {
    fn origin(&self) -> &Path {
        self.file.path()
    }

    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.map.get(name).map(|g| self.file.tensors[g].shape.clone())
    }

    fn values(&self, name: &str) -> Result<Vec<f32>> {
        let gguf = self.map.get(name).ok_or_else(|| Error::invalid(format!("no tensor named {name}")))?;
        let (mut v, _) = self.file.tensor_f32(gguf)?;
        if self.minus_one.contains(name) {
            v.iter_mut().for_each(|x| *x -= 1.0);
        }
        Ok(v)
    }

    fn missing_note(&self, name: &str) -> Option<String> {
        self.absent.get(name).map(|g| format!("GGUF name {g}"))
    }
}
