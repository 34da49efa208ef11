//! lapidary-nn: the layers lapidary models are built from.
//!
//! Built so far: [`Linear`] with an adapter slot (its frozen base optionally packed as bf16 or
//! NF4), [`Weights`]: memory-mapped safetensors checkpoints (single or sharded) or GGUF files
//! ([`gguf`], which also writes GGUF files: F32, F16, BF16, Q8_0) loaded by name with strict key
//! accounting and prefix aliases. A model crate builds
//! its linears with the HF weight names; an adapter crate (LoRA) fills the slot by parameter
//! path afterwards, so model code never changes to gain adapters. Still to come here: norms, embeddings, patch embedding,
//! RoPE tables and attention layers.
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

pub mod gguf;
mod linear;
pub mod safetensors;
mod weights;

pub use linear::{Adapter, Linear, rebind_all};
pub use weights::Weights;
