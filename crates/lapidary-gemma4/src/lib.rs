//! Gemma 4 for lapidary: the dense models (the 31B's architecture) and the E-series (E2B/E4B:
//! per-layer embeddings, KV sharing), text and vision. This crate reads and checks their
//! configuration ([`Gemma4Config`]: either `config.json` form resolves to the same per-layer
//! settings) and computes them as transformers 5.24 does: the decoder ([`Gemma4TextModel`]), the
//! vision tower with its embedder ([`Gemma4VisionModel`], clipped linears with adapters inside
//! the clamps) and the two together ([`Gemma4ForConditionalGeneration`], a
//! [`lapidary_model::Model`]). Audio towers and the mixture-of-experts block (26B-A4B) are not
//! supported: an audio config is noted and its weights are left out, an MoE config is refused.
//! [`FAMILY`] makes it a `lapidary_model::Family` (its processor: Gemma 4's chat format and
//! image patches, from lapidary-data). Generation runs after a KV cache ([`KvCache`]: layers that
//! reuse another's keys and values cache none). `export-gguf` writes it as llama.cpp's converter
//! does ([`Gemma4Gguf`]); GGUF files are not read.
//!
//! ```
//! use lapidary_gemma4::{Gemma4Config, KvSharing, LayerKind};
//! let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-gemma4-e");
//! let cfg = Gemma4Config::from_file(format!("{root}/model/config.json")).unwrap();
//! let last = cfg.text.layer(4);
//! assert_eq!((last.kind, last.head_dim, last.kv_sharing), (LayerKind::Full, 32, KvSharing::Reuse));
//! assert_eq!(cfg.text.kv_source(4), 1); // the full layer's K/V come from layer 1
//! ```

mod config;
mod decoder;
mod family;
mod gguf_export;
mod model;
mod text;
mod vision;

pub use config::{
    Bidirectional, Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig, KvSharing, LayerConfig, LayerKind, Rope,
};
pub use decoder::{DecoderContext, DecoderLayer, RopeTable};
pub use family::{FAMILY, Gemma4Family};
pub use gguf_export::Gemma4Gguf;
pub use lapidary_model::{KvCache, LayerCache};
pub use model::{Gemma4ForConditionalGeneration, part_of};
pub use text::Gemma4TextModel;
pub use vision::{ClippedLinear, Gemma4VisionModel, Pooling, VisionContext, VisionLayer};

#[cfg(test)]
mod config_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod text_tests;
#[cfg(test)]
mod vision_tests;
