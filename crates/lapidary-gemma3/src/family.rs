//! [`FAMILY`]: Gemma 3 as a [`Family`] — which checkpoints are Gemma 3 (`model_type` `gemma3` or
//! `gemma3_text`, GGUF architecture `gemma3`), opening one as a [`Model`], its processor
//! (Gemma3Processor's chat template and image preprocessing) and the files an HF Gemma 3
//! checkpoint carries. Not the model ([`crate::Gemma3ForConditionalGeneration`]).

use crate::model::Gemma3ForConditionalGeneration;
use lapidary_core::{Device, Result};
use lapidary_data::Processor;
use lapidary_model::{Family, GgufExport, Model, OpenOptions};
use std::path::Path;

/// Gemma 3: Gemma3ForConditionalGeneration (SigLIP + projector + decoder) and the text-only
/// Gemma3ForCausalLM, from HF directories or GGUF files.
#[derive(Debug)]
pub struct Gemma3Family;

/// The Gemma 3 family, as the registry lists it.
pub static FAMILY: Gemma3Family = Gemma3Family;

/// The files besides `config.json` and the weights that an HF Gemma 3 checkpoint carries.
const COMPANION_FILES: [&str; 8] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "preprocessor_config.json",
    "chat_template.jinja",
    "generation_config.json",
    "tokenizer.model",
];

impl Family for Gemma3Family {
    fn name(&self) -> &'static str {
        "gemma3"
    }

    /// `model_type` `gemma3` or `gemma3_text`; without a `model_type`, a Gemma 3 class first in
    /// `architectures`.
    fn reads_config(&self, config: &serde_json::Value) -> bool {
        match config["model_type"].as_str() {
            Some(t) => matches!(t, "gemma3" | "gemma3_text"),
            None => config["architectures"][0].as_str().is_some_and(|a| a.starts_with("Gemma3For")),
        }
    }

    fn reads_gguf(&self, architecture: &str) -> bool {
        architecture == "gemma3"
    }

    fn open(&self, path: &Path, device: &Device, opts: &OpenOptions) -> Result<Box<dyn Model>> {
        Ok(Box::new(Gemma3ForConditionalGeneration::open(path, device, opts)?))
    }

    fn processor(&self, path: &Path) -> Result<Processor> {
        Processor::from_model(path)
    }

    fn hf_config(&self, path: &Path) -> Result<serde_json::Value> {
        if lapidary_nn::gguf::is_gguf_path(path) {
            return crate::gguf::hf_config(&lapidary_nn::gguf::GgufFile::open(path)?);
        }
        lapidary_data::processor::read_json(&path.join("config.json"))
    }

    fn companion_files(&self) -> &'static [&'static str] {
        &COMPANION_FILES
    }

    fn gguf_export(&self, path: &Path) -> Result<Box<dyn GgufExport>> {
        let cfg = if lapidary_nn::gguf::is_gguf_path(path) {
            crate::gguf::config(&lapidary_nn::gguf::GgufFile::open(path)?)?
        } else {
            crate::Gemma3Config::from_file(path.join("config.json"))?
        };
        Ok(Box::new(crate::gguf_export::Gemma3Gguf::new(&cfg)))
    }
}
