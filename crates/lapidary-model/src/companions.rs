//! Writing what an HF checkpoint carries besides its weights, once for every command that writes
//! weights (merge, full fine-tuning): `config.json` with the stored dtype, the family's companion
//! files copied from the source, and for a `.gguf` source the tokenizer it carries as
//! `tokenizer.json` + `tokenizer_config.json`; and the source's tensors that are no parameter
//! (buffers such as Gemma 4's clip bounds and layer scalars, weights of towers not loaded),
//! copied unchanged ([`untouched_tensors`]). Not the parameters.

use crate::family::Family;
use lapidary_core::{DType, Error, Result};
use std::path::Path;

/// torch's name of `dtype` (`config.json`'s `dtype`).
pub fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F32 => "float32",
    }
}

/// Writes `config.json` (the source's, `dtype` set to `stored`) and copies the family's
/// companion files that `source` has into `out` (a directory that exists). Returns the names
/// written.
pub fn write_companions(family: &dyn Family, source: &Path, out: &Path, stored: DType) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let mut config = family.hf_config(source)?;
    config["dtype"] = serde_json::Value::from(torch_dtype_name(stored));
    let dst = out.join("config.json");
    let pretty = serde_json::to_string_pretty(&config).map_err(|e| Error::invalid(e.to_string()))?;
    lapidary_core::fsio::write_atomic(&dst, pretty.as_bytes())?;
    written.push("config.json".to_string());
    if lapidary_nn::gguf::is_gguf_path(source) {
        written.extend(write_gguf_tokenizer(&lapidary_nn::gguf::GgufFile::open(source)?, out)?);
        return Ok(written);
    }
    for f in family.companion_files() {
        let src = source.join(f);
        if src.is_file() {
            std::fs::copy(&src, out.join(f)).map_err(|e| Error::io(&src, e))?;
            written.push(f.to_string());
        }
    }
    Ok(written)
}

/// The tensors of the HF checkpoint at `source` whose keys are not in `written` (the
/// parameters' keys, as [`crate::Model::hf_checkpoint_key`] gives them): the buffers and
/// whatever the model did not load, as stored (dtype and bytes unchanged), so that weights
/// written from the model make a whole checkpoint. None for a `.gguf` source (its tensors are
/// all parameters, under other names).
pub fn untouched_tensors(
    source: &Path,
    written: &std::collections::HashSet<String>,
) -> Result<Vec<lapidary_nn::safetensors::Entry>> {
    if lapidary_nn::gguf::is_gguf_path(source) {
        return Ok(Vec::new());
    }
    let files = lapidary_nn::safetensors::SafetensorsFiles::open(source)?;
    let mut out = Vec::new();
    for name in files.names().filter(|n| !written.contains(*n)) {
        let e = files.entry(name).expect("listed");
        out.push((name.to_string(), e.stored, e.shape.clone(), files.bytes(name)?.to_vec()));
    }
    Ok(out)
}

/// The tokenizer a GGUF carries, as `tokenizer.json` + `tokenizer_config.json`.
fn write_gguf_tokenizer(f: &lapidary_nn::gguf::GgufFile, out: &Path) -> Result<Vec<String>> {
    let tok = lapidary_data::gguf_tokenizer::from_gguf(f)?;
    let path = out.join("tokenizer.json");
    tok.save(&path, false).map_err(|e| Error::invalid(format!("{}: cannot write: {e}", path.display())))?;
    let cfg = serde_json::json!({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": true, "add_eos_token": false,
    });
    let path = out.join("tokenizer_config.json");
    std::fs::write(&path, cfg.to_string()).map_err(|e| Error::io(&path, e))?;
    Ok(vec!["tokenizer.json".into(), "tokenizer_config.json".into()])
}
