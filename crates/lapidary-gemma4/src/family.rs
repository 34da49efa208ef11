//! [`FAMILY`]: Gemma 4 as a [`Family`] — which checkpoints are Gemma 4 (`model_type` `gemma4` or
//! `gemma4_text`), opening one as a [`Model`], its processor (Gemma4Processor's chat format and
//! Gemma4ImageProcessor's patches), the files an HF Gemma 4 checkpoint carries and its GGUF
//! layout for `export-gguf` ([`crate::Gemma4Gguf`]). GGUF files are not read. Not the model
//! ([`crate::Gemma4ForConditionalGeneration`]).

use crate::model::Gemma4ForConditionalGeneration;
use lapidary_core::{Device, Result};
use lapidary_data::Processor;
use lapidary_model::{Family, GgufExport, Model, OpenOptions};
use std::path::Path;

/// Gemma 4: Gemma4ForConditionalGeneration (vision tower + embedder + decoder) and the
/// text-only Gemma4ForCausalLM, from HF directories.
#[derive(Debug)]
pub struct Gemma4Family;

/// The Gemma 4 family, as the registry lists it.
pub static FAMILY: Gemma4Family = Gemma4Family;

/// The files besides `config.json` and the weights that an HF Gemma 4 checkpoint carries.
const COMPANION_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "preprocessor_config.json",
    "chat_template.jinja",
    "generation_config.json",
];

impl Family for Gemma4Family {
    fn name(&self) -> &'static str {
        "gemma4"
    }

    /// `model_type` `gemma4` or `gemma4_text`; without a `model_type`, a Gemma 4 class first in
    /// `architectures`.
    fn reads_config(&self, config: &serde_json::Value) -> bool {
        match config["model_type"].as_str() {
            Some(t) => matches!(t, "gemma4" | "gemma4_text"),
            None => config["architectures"][0].as_str().is_some_and(|a| a.starts_with("Gemma4For")),
        }
    }

    fn reads_gguf(&self, _architecture: &str) -> bool {
        false
    }

    fn open(&self, path: &Path, device: &Device, opts: &OpenOptions) -> Result<Box<dyn Model>> {
        Ok(Box::new(Gemma4ForConditionalGeneration::open(path, device, opts)?))
    }

    fn processor(&self, path: &Path) -> Result<Processor> {
        Processor::gemma4_from_model_dir(path)
    }

    fn hf_config(&self, path: &Path) -> Result<serde_json::Value> {
        lapidary_data::processor::read_json(&path.join("config.json"))
    }

    fn companion_files(&self) -> &'static [&'static str] {
        &COMPANION_FILES
    }

    fn gguf_export(&self, path: &Path) -> Result<Box<dyn GgufExport>> {
        let cfg = crate::Gemma4Config::from_file(path.join("config.json"))?;
        Ok(Box::new(crate::Gemma4Gguf::open(&cfg, path)?))
    }
}
