//! lapidary-siglip: the SigLIP vision encoder as HF transformers defines it (patch embedding,
//! learned positions, pre-LN layers with biases, gelu-tanh MLP, post-layernorm; no pooling
//! head), configured by HF field names and loaded with HF parameter names.
//!
//! Embed an image: one feature vector per patch (here with the tower of the tiny random-weight
//! model this repository bundles; the types the API needs are re-exported):
//!
//! ```
//! use lapidary_siglip::{
//!     Checkpointing, DType, Device, Scope, SiglipVisionConfig, SiglipVisionModel, Tape, Tensor, Trainable, Weights,
//! };
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/tiny-vlm");
//! let dev = Device::cpu().unwrap();
//! // A SigLIP config.json, or a VLM's whose `vision_config` is used.
//! let cfg = SiglipVisionConfig::from_file(format!("{dir}/config.json")).unwrap();
//! // HF checkpoints name the tower `vision_tower.vision_model.` or `vision_tower.`: either loads.
//! let w = Weights::open(dir, &dev, DType::F32).unwrap().with_alias("vision_tower.", "vision_tower.vision_model.");
//! let tape = Tape::new();
//! let scope = Scope::new(&w, &tape, Trainable::No).at("vision_tower");
//! let tower = SiglipVisionModel::load(&cfg, &scope).unwrap();
//!
//! let side = cfg.image_size;
//! let pixels: Vec<f32> = (0..3 * side * side).map(|i| ((i * 7) % 13) as f32 / 6.5 - 1.0).collect();
//! let pixels = tape.input(Tensor::from_f32(&dev, &pixels, &[1, 3, side, side], DType::F32).unwrap());
//! // Checkpointing::EachLayer recomputes each layer during backward instead of keeping it.
//! let features = tower.forward(&pixels, Checkpointing::Off).unwrap();
//! let patches = (side / cfg.patch_size) * (side / cfg.patch_size);
//! assert_eq!(features.value().shape(), &[1, patches, cfg.hidden_size]);
//! ```
//!
//! Building: this crate runs kernels through CubeCL's CPU runtime, which links a local LLVM 22.
//! Once per machine, from a checkout of the repository: `cargo xtask setup --user` (Debian's
//! LLVM packages and the shim CubeCL's bundler looks for); then any project builds offline. Give
//! dependencies `opt-level = 3` in the dev profile, or kernels crawl. With `--features cuda`
//! (on `lapidary-core`) kernels also run on NVIDIA GPUs.

mod config;
mod model;

pub use config::SiglipVisionConfig;
pub use model::{EncoderLayer, SiglipVisionModel};

// The types this crate's signatures use, so that it can be used on its own.
pub use lapidary_autograd::{Tape, Trainable, Var};
pub use lapidary_core::{DType, Device, Error, Result, Tensor};
pub use lapidary_nn::{Checkpointing, Scope, Weights};
