//! Loading a model's parameters by name with strict key accounting: a tensor the model asks for
//! and the checkpoint lacks is an error naming it and its expected shape; a wrong shape names
//! both shapes; tensors the model never asked for are listed by [`Weights::unused`] (and are an
//! error in [`Weights::finish`]). Prefix aliases let one model load several naming schemes (e.g.
//! `vision_tower.vision_model.` and `vision_tower.`). Sources: safetensors, or a GGUF file seen
//! under HF names. Frozen linears can be packed as they are read. Not the building of layers.

use crate::gguf::GgufFile;
use crate::safetensors::{LoadTensor, SafetensorsFiles};
use lapidary_autograd::{Tape, Trainable, Var};
use lapidary_core::{DType, Device, Error, Result, Tensor};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A checkpoint opened for loading a model's parameters.
pub struct Weights {
    files: Rc<SafetensorsFiles>,
    /// A GGUF file in place of safetensors: HF names map to GGUF tensors (see `gguf_names`).
    gguf: Option<GgufSource>,
    source: PathBuf,
    aliases: Vec<(String, String)>,
    used: RefCell<BTreeSet<String>>,
    stored_names: RefCell<BTreeMap<String, String>>,
    /// Name asked for -> the shape the checkpoint stores it in.
    stored_shapes: RefCell<BTreeMap<String, Vec<usize>>>,
    device: Device,
    dtype: DType,
    packing: Option<lapidary_kernels::quant::PackFormat>,
}

impl Weights {
    /// Weights read from a GGUF file: each HF name in `names` maps to a GGUF tensor, dequantized
    /// on load; names in `minus_one` are stored as `1 + w` in GGUF (Gemma's norms) and get 1
    /// subtracted.
    pub fn from_gguf(
        file: Rc<GgufFile>,
        names: BTreeMap<String, String>,
        minus_one: BTreeSet<String>,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let source = file.path().to_path_buf();
        // Names the file lacks are missing tensors, reported as such when the model asks for them.
        let (map, absent) = names.into_iter().partition(|(_, g)| file.tensors.contains_key(g));
        let gguf = GgufSource { file, map, absent, minus_one };
        Self::with_source(SafetensorsFiles::empty(), Some(gguf), source, device, dtype)
    }

    /// Opens `path` (a `.safetensors` file or a model directory); tensors load onto `device` as
    /// `dtype`.
    pub fn open(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let path = path.as_ref();
        Ok(Self::with_source(SafetensorsFiles::open(path)?, None, path.to_path_buf(), device, dtype))
    }

    fn with_source(
        files: SafetensorsFiles,
        gguf: Option<GgufSource>,
        source: PathBuf,
        device: &Device,
        dtype: DType,
    ) -> Self {
        Weights {
            files: Rc::new(files),
            gguf,
            source,
            aliases: Vec::new(),
            used: RefCell::default(),
            stored_names: RefCell::default(),
            stored_shapes: RefCell::default(),
            device: device.clone(),
            dtype,
            packing: None,
        }
    }

    /// Also accepts names where `canonical` prefix is spelled `alternative` in the file (tried in
    /// the order added, after the canonical name).
    pub fn with_alias(mut self, canonical: impl Into<String>, alternative: impl Into<String>) -> Self {
        self.aliases.push((canonical.into(), alternative.into()));
        self
    }

    /// The underlying files.
    /// Frozen linear weights loaded through these weights are packed in `format` straight from
    /// the file (bf16, NF4: QLoRA), never held in full precision on the device.
    pub fn with_packing(mut self, format: Option<lapidary_kernels::quant::PackFormat>) -> Self {
        self.packing = format;
        self
    }

    /// The packing of frozen linear weights, if any.
    pub fn packing(&self) -> Option<lapidary_kernels::quant::PackFormat> {
        self.packing
    }

    /// A tensor's values on the host as f32 (same checks and accounting as [`Weights::tensor`]).
    pub fn host_values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let stored = self.checked(name, shape)?;
        if let Some(g) = &self.gguf {
            return g.values(&stored);
        }
        let entry = self.files.entry(&stored).expect("resolved");
        let dtype = entry.dtype.ok_or_else(|| {
            Error::invalid(format!("{}: tensor {stored} is not stored as f32, bf16 or f16", self.source.display()))
        })?;
        Ok(dtype.decode(self.files.bytes(&stored)?))
    }

    pub fn files(&self) -> &SafetensorsFiles {
        &self.files
    }

    /// The name under which `name` is stored, trying the aliases.
    pub fn resolve(&self, name: &str) -> Option<String> {
        if let Some(g) = &self.gguf {
            return g.map.contains_key(name).then(|| name.to_string()).or_else(|| {
                self.aliases.iter().find_map(|(canon, alt)| {
                    let candidate = format!("{alt}{}", name.strip_prefix(canon.as_str())?);
                    g.map.contains_key(&candidate).then_some(candidate)
                })
            });
        }
        if self.files.entry(name).is_some() {
            return Some(name.to_string());
        }
        self.aliases.iter().find_map(|(canon, alt)| {
            let rest = name.strip_prefix(canon.as_str())?;
            let candidate = format!("{alt}{rest}");
            self.files.entry(&candidate).map(|_| candidate)
        })
    }

    /// Whether the checkpoint holds `name` (under any alias).
    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    /// Loads `name`, which must have `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let stored = self.checked(name, shape)?;
        if let Some(g) = &self.gguf {
            return Tensor::from_f32(&self.device, &g.values(&stored)?, shape, self.dtype);
        }
        self.files.load(&stored, &self.device, self.dtype)
    }

    /// Resolves `name`, checks its shape and records it as used; returns the stored name.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<String> {
        let stored = self.resolve(name).ok_or_else(|| {
            let gguf_name = self.gguf.as_ref().and_then(|g| g.absent.get(name)).map(|g| format!(", GGUF name {g}"));
            Error::invalid(format!(
                "{}: missing tensor {name} (expected shape {shape:?}{})",
                self.source.display(),
                gguf_name.unwrap_or_default()
            ))
        })?;
        let stored_shape = match &self.gguf {
            Some(g) => g.shape(&stored),
            None => self.files.entry(&stored).expect("resolved").shape.clone(),
        };
        if stored_shape != shape {
            return Err(Error::invalid(format!(
                "{}: tensor {stored} has shape {:?}, expected {shape:?}",
                self.files.file_of(&stored).unwrap_or(&self.source).display(),
                stored_shape
            )));
        }
        self.used.borrow_mut().insert(stored.clone());
        self.stored_names.borrow_mut().insert(name.to_string(), stored.clone());
        self.stored_shapes.borrow_mut().insert(name.to_string(), stored_shape);
        Ok(stored)
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Loads `name` (which must have `shape`) as a parameter leaf of `tape` under that name.
    pub fn param(&self, tape: &Tape, name: &str, shape: &[usize], trainable: Trainable) -> Result<Var> {
        Ok(tape.param(name, self.tensor(name, shape)?, trainable))
    }

    /// For every tensor loaded so far: the name asked for and the name it is stored under.
    pub fn stored_names(&self) -> BTreeMap<String, String> {
        self.stored_names.borrow().clone()
    }

    /// For every tensor loaded so far: the name asked for and the shape it is stored in (a
    /// layer may use it in another, e.g. a conv kernel as a matrix).
    pub fn stored_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.stored_shapes.borrow().clone()
    }

    /// Stored names never loaded so far, sorted.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        match &self.gguf {
            Some(g) => g.map.keys().filter(|n| !used.contains(*n)).cloned().collect(),
            None => self.files.names().filter(|n| !used.contains(*n)).map(str::to_string).collect(),
        }
    }

    /// Ends loading: an error listing every stored tensor the model did not use, unless each
    /// matches one of `ignore` (prefixes of tensors known to be unused).
    pub fn finish(&self, ignore: &[&str]) -> Result<()> {
        let extra: Vec<String> =
            self.unused().into_iter().filter(|n| !ignore.iter().any(|p| n.starts_with(p))).collect();
        if extra.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "{}: {} unexpected tensor(s) the model does not use: {}",
            self.source.display(),
            extra.len(),
            extra.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests;

/// A GGUF file seen under HF names.
struct GgufSource {
    file: Rc<GgufFile>,
    /// HF name -> GGUF tensor name, for the tensors the file holds.
    map: BTreeMap<String, String>,
    /// HF name -> GGUF tensor name, for the tensors the file lacks.
    absent: BTreeMap<String, String>,
    minus_one: BTreeSet<String>,
}

impl GgufSource {
    fn shape(&self, hf: &str) -> Vec<usize> {
        self.file.tensors[&self.map[hf]].shape.clone()
    }

    fn values(&self, hf: &str) -> Result<Vec<f32>> {
        let (mut v, _) = self.file.tensor_f32(&self.map[hf])?;
        if self.minus_one.contains(hf) {
            v.iter_mut().for_each(|x| *x -= 1.0);
        }
        Ok(v)
    }
}
