//! lapidary-gemma3: Gemma 3's text decoder, multimodal projector and
//! Gemma3ForConditionalGeneration, matching HF transformers (logits and loss checked against
//! HF fixtures), configured from HF `config.json` in either schema and loaded with HF names; the
//! same type without a vision tower is the text-only model (Gemma3ForCausalLM, or a `.gguf` file,
//! see [`gguf`]). Generation with a KV cache.
//!
//! ```no_run
//! use lapidary_autograd::{Tape, Trainable};
//! use lapidary_core::{DType, Device};
//! use lapidary_gemma3::Gemma3ForConditionalGeneration;
//!
//! let dev = Device::cpu().unwrap();
//! let tape = Tape::new();
//! let model = Gemma3ForConditionalGeneration::open("model-dir", &dev, DType::BF16, &tape, Trainable::No).unwrap();
//! ```

mod config;
mod decoder;
mod generate;
pub mod gguf;
mod model;
mod projector;

pub use config::{Gemma3Config, Gemma3TextConfig, LayerKind, Rope};
pub use decoder::{DecoderContext, DecoderLayer, Gemma3TextModel, KvCache, LayerCache};
pub use generate::{GenerateOptions, Sampling, argmax};
pub use model::{Batch, Gemma3ForConditionalGeneration, Output, Parts, is_vision_side};
pub use projector::MultiModalProjector;
