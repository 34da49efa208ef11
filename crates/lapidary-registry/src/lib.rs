//! lapidary-registry: the model families lapidary knows ([`FAMILIES`]) and the one place that
//! picks a checkpoint's family, from its `config.json` (`model_type`) or a GGUF file's
//! `general.architecture`. The trainer and every command open models through [`open`] and never
//! name a family's types. Adding a family: a crate implementing `lapidary_model::Family` and
//! `Model`, and one line in [`FAMILIES`]. Not the families themselves.
//!
//! ```
//! use lapidary_registry::{Device, OpenOptions, family_of, open};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/tiny-vlm");
//! assert_eq!(family_of(dir.as_ref()).unwrap().name(), "gemma3");
//! let model = open(dir.as_ref(), &Device::cpu().unwrap(), &OpenOptions::default()).unwrap();
//! assert!(model.has_vision());
//! ```
//!
//! Building: this crate runs kernels through CubeCL's CPU runtime, which links a local LLVM 22:
//! once per machine, from a checkout of the repository, `cargo xtask setup --user`.

use lapidary_core::{Error, Result};
use std::path::Path;

pub use lapidary_core::Device;
pub use lapidary_model::{Family, Model, OpenOptions, Processor};

/// Every family lapidary knows, tried in order.
pub static FAMILIES: &[&dyn Family] = &[&lapidary_gemma3::FAMILY, &lapidary_gemma4::FAMILY];

/// The family of the checkpoint at `path`: an HF directory (by its `config.json`) or a `.gguf`
/// file (by `general.architecture`). An error names the file and what it found.
pub fn family_of(path: &Path) -> Result<&'static dyn Family> {
    let known = || FAMILIES.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
    if lapidary_nn::gguf::is_gguf_path(path) {
        let f = lapidary_nn::gguf::GgufFile::open(path)?;
        let arch = f.require("general.architecture")?.as_str().unwrap_or("").to_string();
        return FAMILIES.iter().copied().find(|fam| fam.reads_gguf(&arch)).ok_or_else(|| {
            Error::invalid(format!(
                "{}: GGUF architecture {arch:?} is not one lapidary reads ({})",
                path.display(),
                known()
            ))
        });
    }
    let config_path = path.join("config.json");
    if !config_path.is_file() {
        return Err(Error::invalid(format!(
            "{}: not a model directory (no config.json) nor a .gguf file",
            path.display()
        )));
    }
    let config = lapidary_data::processor::read_json(&config_path)?;
    FAMILIES.iter().copied().find(|fam| fam.reads_config(&config)).ok_or_else(|| {
        Error::invalid(format!(
            "{}: model_type {} is not one lapidary reads (families: {})",
            config_path.display(),
            config.get("model_type").map_or("(missing)".to_string(), |v| v.to_string()),
            known()
        ))
    })
}

/// Opens the checkpoint at `path` with its family ([`family_of`]).
pub fn open(path: &Path, device: &Device, opts: &OpenOptions) -> Result<Box<dyn Model>> {
    family_of(path)?.open(path, device, opts)
}

/// The processor (tokenizer, chat template, images) of the checkpoint at `path`.
pub fn processor(path: &Path) -> Result<Processor> {
    family_of(path)?.processor(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_comes_from_model_type_and_unknown_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |v: &str| std::fs::write(dir.path().join("config.json"), v).unwrap();
        write(r#"{"model_type": "gemma3"}"#);
        assert_eq!(family_of(dir.path()).unwrap().name(), "gemma3");
        write(r#"{"model_type": "gemma3_text"}"#);
        assert_eq!(family_of(dir.path()).unwrap().name(), "gemma3");
        write(r#"{"model_type": "gemma4"}"#);
        assert_eq!(family_of(dir.path()).unwrap().name(), "gemma4");
        write(r#"{"architectures": ["Gemma4ForCausalLM"]}"#);
        assert_eq!(family_of(dir.path()).unwrap().name(), "gemma4");
        write(r#"{"model_type": "llava"}"#);
        let e = family_of(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("\"llava\"") && e.contains("gemma3"), "{e}");
        write(r#"{"hidden_size": 8}"#);
        assert!(family_of(dir.path()).unwrap_err().to_string().contains("(missing)"));
        write("{not json");
        assert!(family_of(dir.path()).unwrap_err().to_string().contains("invalid JSON"));
        let e = family_of(&dir.path().join("nothing")).unwrap_err().to_string();
        assert!(e.contains("no config.json"), "{e}");
    }
}
