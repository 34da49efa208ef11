//! Loading a model's parameters by name with strict key accounting: a tensor the model asks for
//! and the checkpoint lacks is an error naming it and its expected shape; a wrong shape names
//! both shapes; tensors the model never asked for are listed by [`Weights::unused`] (and are an
//! error in [`Weights::finish`]). Prefix aliases let one model load several naming schemes (e.g.
//! `vision_tower.vision_model.` and `vision_tower.`). Sources are [`WeightSource`]s
//! (safetensors, a GGUF file seen under HF names; see `weights/source.rs`). Frozen linears can be
//! packed as they are read. Not the building of layers.

mod source;

pub use source::{GgufSource, SafetensorsSource, WeightSource};

use crate::gguf::GgufFile;
use crate::safetensors::SafetensorsFiles;
use lapidary_autograd::{Tape, Trainable, Var};
use lapidary_core::{DType, Device, Error, Result, Tensor};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;

/// A checkpoint opened for loading a model's parameters.
pub struct Weights {
    source: Box<dyn WeightSource>,
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
        Self::from_source(GgufSource::new(file, names, minus_one), device, dtype)
    }

    /// Opens `path` (a `.safetensors` file or a model directory); tensors load onto `device` as
    /// `dtype`.
    pub fn open(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let path = path.as_ref();
        let source = SafetensorsSource { files: SafetensorsFiles::open(path)?, origin: path.to_path_buf() };
        Ok(Self::from_source(source, device, dtype))
    }

    /// Weights read from any [`WeightSource`]; tensors load onto `device` as `dtype`.
    pub fn from_source(source: impl WeightSource + 'static, device: &Device, dtype: DType) -> Self {
        Weights {
            source: Box::new(source),
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
        self.source.values(&stored)
    }

    /// Where the tensors come from.
    pub fn source(&self) -> &dyn WeightSource {
        self.source.as_ref()
    }

    /// The name under which `name` is stored, trying the aliases.
    pub fn resolve(&self, name: &str) -> Option<String> {
        if self.source.shape(name).is_some() {
            return Some(name.to_string());
        }
        self.aliases.iter().find_map(|(canon, alt)| {
            let candidate = format!("{alt}{}", name.strip_prefix(canon.as_str())?);
            self.source.shape(&candidate).map(|_| candidate)
        })
    }

    /// Whether the checkpoint holds `name` (under any alias).
    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    /// Loads `name`, which must have `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let stored = self.checked(name, shape)?;
        self.source.load(&stored, &self.device, self.dtype)
    }

    /// Resolves `name`, checks its shape and records it as used; returns the stored name.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<String> {
        let stored = self.resolve(name).ok_or_else(|| {
            let note = self.source.missing_note(name).map(|n| format!(", {n}"));
            Error::invalid(format!(
                "{}: missing tensor {name} (expected shape {shape:?}{})",
                self.source.origin().display(),
                note.unwrap_or_default()
            ))
        })?;
        let stored_shape = self.source.shape(&stored).expect("resolved");
        if stored_shape != shape {
            return Err(Error::invalid(format!(
                "{}: tensor {stored} has shape {:?}, expected {shape:?}",
                self.source.file_of(&stored).display(),
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
        self.source.names().into_iter().filter(|n| !used.contains(n)).collect()
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
            self.source.origin().display(),
            extra.len(),
            extra.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests;
