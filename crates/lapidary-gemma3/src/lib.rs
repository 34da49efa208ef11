//! lapidary-gemma3: Gemma 3's text decoder, multimodal projector and
//! Gemma3ForConditionalGeneration, matching HF transformers (logits and loss checked against
//! HF fixtures), configured from HF `config.json` in either schema and loaded with HF names; the
//! same type without a vision tower is the text-only model (Gemma3ForCausalLM, or a `.gguf` file,
//! see [`gguf`]). Generation with a KV cache.
//!
//! Open a model and compute the logits of a prompt with an image (here the tiny random-weight
//! model this repository bundles; any HF Gemma 3 directory or `.gguf` file opens the same way).
//! The types the API needs are re-exported, so this crate is the only dependency:
//!
//! ```
//! use lapidary_gemma3::{Batch, DType, Device, Gemma3ForConditionalGeneration, Tape, Tensor, Trainable};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/tiny-vlm");
//! let dev = Device::cpu().unwrap();
//! let tape = Tape::new(); // holds the weights; nothing is recorded for gradients when frozen
//! let model = Gemma3ForConditionalGeneration::open(dir, &dev, DType::F32, &tape, Trainable::No).unwrap();
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
//! let out = model.forward(&tape, &batch, false).unwrap();
//! let logits = out.logits.value();
//! assert_eq!(logits.shape(), &[ids.len(), cfg.text.vocab_size]);
//! let last = &logits.to_f32_vec().unwrap()[(ids.len() - 1) * cfg.text.vocab_size..];
//! let next = lapidary_gemma3::argmax(last);
//! assert!((next as usize) < cfg.text.vocab_size);
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

// The types this crate's signatures use, so that it can be used on its own.
pub use lapidary_autograd::{Tape, Trainable, Var};
pub use lapidary_core::{DType, Device, Error, Result, Tensor};
pub use lapidary_nn::{Linear, Weights};
pub use lapidary_siglip::{SiglipVisionConfig, SiglipVisionModel};
pub use projector::MultiModalProjector;
