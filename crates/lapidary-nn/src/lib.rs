//! lapidary-nn: the layers lapidary models are built from.
//!
//! It is: [`Linear`] with an adapter slot (its frozen base optionally packed as bf16 or NF4), [`Layer`] (parameters walked by name,
//! rebinding, [`checkpointed`]), [`Scope`] (weight names built level by level) and
//! [`Weights`]: a model's tensors loaded by name from memory-mapped safetensors checkpoints
//! (single or sharded) or GGUF files, with strict key accounting and prefix aliases. A model
//! crate builds its linears with the HF weight names; an adapter crate (LoRA) fills the slot by
//! parameter path afterwards, so model code never changes to gain adapters. The file formats
//! themselves ([`safetensors`], [`gguf`]) are the kernel-free `lapidary-io`'s, re-exported here
//! with the device upload added ([`safetensors::LoadTensor`]). It is not: norms, attention or
//! embeddings (each model crate has its own).
//!
//! ```
//! use lapidary_autograd::{ops, Tape, Trainable};
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_nn::Linear;
//!
//! let dev = Device::cpu().unwrap();
//! let tape = Tape::new();
//! // HF layout: weight [out, in].
//! let w = tape.param("fc.weight", Tensor::from_f32(&dev, &[1., 0., 0., 1., 1., 1.], &[3, 2], DType::F32).unwrap(), Trainable::No);
//! let fc = Linear::new("fc", w, None);
//! let x = tape.input(Tensor::from_f32(&dev, &[2., 3.], &[1, 2], DType::F32).unwrap());
//! assert_eq!(fc.forward(&x).unwrap().value().to_f32_vec().unwrap(), vec![2., 3., 5.]);
//! ```
//!
//! Building: this crate runs kernels through CubeCL's CPU runtime, which links a local LLVM 22.
//! Once per machine, from a checkout of the repository: `cargo xtask setup --user` (Debian's
//! LLVM packages and the shim CubeCL's bundler looks for); then any project builds offline. Give
//! dependencies `opt-level = 3` in the dev profile, or kernels crawl. With `--features cuda`
//! (on `lapidary-core`) kernels also run on NVIDIA GPUs.

/// GGUF files, read and written: from the kernel-free `lapidary-io`.
pub use lapidary_io::gguf;
mod host;
mod layer;
mod linear;
mod part;
pub mod safetensors;
mod scope;
mod weights;

pub use host::{AdapterHost, Naming};
pub use layer::{Checkpointing, Layer, ParamFn, checkpointed, checkpointed_many, map_within};
pub use linear::{Adapter, Linear};
pub use part::Part;
pub use scope::Scope;
pub use weights::{GgufSource, SafetensorsSource, WeightSource, Weights};
