//! lapidary-gemma3: Gemma 3's text decoder, multimodal projector and
//! Gemma3ForConditionalGeneration as a `lapidary_model::Model` (and the family as a
//! `lapidary_model::Family`, [`FAMILY`]), matching HF transformers (logits and loss checked against
//! HF fixtures), configured from HF `config.json` in either schema and loaded with HF names; the
//! same type without a vision tower is the text-only model (Gemma3ForCausalLM, or a `.gguf` file,
//! see [`gguf`]). Generation with a KV cache.
//!
//! Open a model and compute the logits of a prompt with an image (here the tiny random-weight
//! model this repository bundles; any HF Gemma 3 directory or `.gguf` file opens the same way).
//! The types the API needs are re-exported, so this crate is the only dependency:
//!
//! ```
//! use lapidary_gemma3::{Batch, DType, Device, ForwardOptions, Gemma3ForConditionalGeneration, Model, OpenOptions, Tensor};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/tiny-vlm");
//! let dev = Device::cpu().unwrap();
//! // The default options: f32, every part frozen (nothing is recorded for gradients).
//! let model = Gemma3ForConditionalGeneration::open(dir, &dev, &OpenOptions::default()).unwrap();
//! let cfg = model.config();
//! let vision = cfg.vision.as_ref().unwrap();
//!
//! // <bos> <start_of_image> image tokens <end_of_image> and a few text ids.
//! let mut ids = vec![2, cfg.boi_token_index as u32];
//! ids.extend(std::iter::repeat_n(cfg.image_token_index as u32, cfg.mm_tokens_per_image));
//! ids.extend([cfg.eoi_token_index as u32, 40, 41, 42]);
//! // One image, normalized as the processor does (here a synthetic gradient in [-1, 1]).
//! let side = vision.image_size;
//! let pixels: Vec<f32> = (0..3 * side * side).map(|i| (i % side) as f32 / side as f32 * 2.0 - 1.0).collect();
//! let pixels = Tensor::from_f32(&dev, &pixels, &[1, 3, side, side], DType::F32).unwrap();
//!
//! let batch = Batch::prompt(&ids, cfg.image_token_index, Some(pixels));
//! let out = model.forward(&batch, &ForwardOptions::default()).unwrap();
//! let logits = out.logits.value();
//! assert_eq!(logits.shape(), &[ids.len(), cfg.text.vocab_size]);
//! let last = &logits.to_f32_vec().unwrap()[(ids.len() - 1) * cfg.text.vocab_size..];
//! let next = lapidary_gemma3::argmax(last);
//! assert!((next as usize) < cfg.text.vocab_size);
//! ```
//!
//! Building: this crate runs kernels through CubeCL's CPU runtime, which links a local LLVM 22.
//! Once per machine, from a checkout of the repository: `cargo xtask setup --user` (Debian's
//! LLVM packages and the shim CubeCL's bundler looks for); then any project builds offline. Give
//! dependencies `opt-level = 3` in the dev profile, or kernels crawl. With `--features cuda`
//! (on `lapidary-core`) kernels also run on NVIDIA GPUs.

mod config;
mod decoder;
mod family;
pub mod gguf;
mod gguf_export;
mod model;
mod projector;

pub use config::{Gemma3Config, Gemma3TextConfig, LayerKind, Rope};
pub use decoder::{DecoderContext, DecoderLayer, Gemma3TextModel};
pub use family::{FAMILY, Gemma3Family};
pub use gguf_export::Gemma3Gguf;
pub use lapidary_model::{KvCache, LayerCache};
pub use model::{Gemma3ForConditionalGeneration, part_of};

// The types this crate's signatures use, so that it can be used on its own.
pub use lapidary_autograd::{Tape, Trainable, Var};
pub use lapidary_core::{DType, Device, Error, Result, Tensor};
pub use lapidary_kernels::quant::PackFormat;
pub use lapidary_model::{
    AdapterHost, Batch, Checkpointing, Family, ForwardOptions, GenerateOptions, Model, OpenOptions, Output, Part,
    Parts, Sampling, argmax,
};
pub use lapidary_nn::{Linear, Scope, Weights};
pub use lapidary_siglip::{SiglipVisionConfig, SiglipVisionModel};
pub use projector::MultiModalProjector;
