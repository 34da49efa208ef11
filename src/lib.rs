//! lapidary: fine-tune Gemma 3 vision-language models (SigLIP encoder + projector + Gemma 3
//! decoder) with LoRA, QLoRA or full fine-tuning, on kernels written once in CubeCL.
//!
//! This crate is the facade: it re-exports the workspace crates under short names and hosts the
//! `lapidary` command-line tool. Each crate can also be used on its own.
//!
//! ```
//! use lapidary::core::{Device, DType, Tensor};
//! let dev = Device::cpu().unwrap();
//! let x = Tensor::from_f32(&dev, &[0.5, -0.5], &[2], DType::F32).unwrap();
//! let y = lapidary::kernels::elementwise::gelu_tanh(&x).unwrap();
//! assert_eq!(y.shape(), &[2]);
//! ```

pub use lapidary_autograd as autograd;
pub use lapidary_core as core;
pub use lapidary_data as data;
pub use lapidary_gemma3 as gemma3;
pub use lapidary_kernels as kernels;
pub use lapidary_lora as lora;
pub use lapidary_model as model;
pub use lapidary_nn as nn;
pub use lapidary_registry as registry;
pub use lapidary_siglip as siglip;
pub use lapidary_train as train;

pub mod bench_step;
pub mod cli;
pub mod demo;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod merge;
pub mod profile;

/// A path inside this repository (its assets and test fixtures): under `LAPIDARY_REPO_DIR` when
/// set (a binary run away from the checkout it was built in, as the GPU bundle's are), else under
/// that checkout. `""` is the root.
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    let root = std::env::var_os("LAPIDARY_REPO_DIR")
        .map_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), std::path::PathBuf::from);
    if rel.is_empty() { root } else { root.join(rel) }
}
