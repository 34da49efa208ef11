//! [`Family`]: what a model family supplies before (and besides) an opened model — whether a
//! checkpoint is one of its own, opening it, its processor (tokenizer, chat template, image
//! preprocessing), its HF config and the companion files an HF checkpoint of it carries. One
//! static value per family crate; the registry (lapidary-registry) lists them and picks one. Not
//! an opened model ([`crate::Model`]).

use crate::gguf_export::GgufExport;
use crate::model::Model;
use crate::options::OpenOptions;
use lapidary_core::{Device, Error, Result};
use lapidary_data::Processor;
use std::path::Path;

/// A model family (Gemma 3, ...).
pub trait Family: Sync {
    /// Short name, as GGUF's `general.architecture` spells it (`gemma3`).
    fn name(&self) -> &'static str;

    /// Whether an HF `config.json` (its parsed contents) describes a model of this family.
    fn reads_config(&self, config: &serde_json::Value) -> bool;

    /// Whether a GGUF file of architecture `architecture` (`general.architecture`) is one.
    fn reads_gguf(&self, architecture: &str) -> bool;

    /// Opens the model at `path` (an HF directory, or a `.gguf` file where the family reads them).
    fn open(&self, path: &Path, device: &Device, opts: &OpenOptions) -> Result<Box<dyn Model>>;

    /// The processor of the model at `path`: tokenizer, chat template and image preprocessing.
    fn processor(&self, path: &Path) -> Result<Processor>;

    /// The HF `config.json` of the model at `path` (read, or for a `.gguf` file built from its
    /// metadata as transformers' GGUF loader builds it).
    fn hf_config(&self, path: &Path) -> Result<serde_json::Value>;

    /// The files besides `config.json` and the weights that an HF checkpoint of this family
    /// carries (tokenizer, processor, chat template, generation settings), copied beside weights
    /// written from it (merged or fully fine-tuned) where the source has them.
    fn companion_files(&self) -> &'static [&'static str];

    /// The GGUF layout of the model at `path` for `export-gguf`; by default an error saying the
    /// family has none.
    fn gguf_export(&self, path: &Path) -> Result<Box<dyn GgufExport>> {
        Err(Error::invalid(format!("{}: export-gguf does not write {} models", path.display(), self.name())))
    }
}

impl std::fmt::Debug for dyn Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Family({})", self.name())
    }
}
