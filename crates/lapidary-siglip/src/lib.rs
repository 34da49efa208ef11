//! lapidary-siglip: the SigLIP vision encoder as HF transformers defines it (patch embedding,
//! learned positions, pre-LN layers with biases, gelu-tanh MLP, post-layernorm; no pooling
//! head), configured by HF field names and loaded with HF parameter names.
//!
//! ```no_run
//! use lapidary_autograd::{Tape, Trainable};
//! use lapidary_core::{DType, Device};
//! use lapidary_nn::Weights;
//! use lapidary_siglip::{SiglipVisionConfig, SiglipVisionModel};
//!
//! let dev = Device::cpu().unwrap();
//! let cfg = SiglipVisionConfig::from_file("model/config.json").unwrap();
//! let w = Weights::open("model", &dev, DType::F32).unwrap();
//! let tape = Tape::new();
//! let tower = SiglipVisionModel::load(&cfg, &w, "vision_tower.", &tape, Trainable::No).unwrap();
//! ```

mod config;
mod model;

pub use config::SiglipVisionConfig;
pub use model::{EncoderLayer, SiglipVisionModel};
