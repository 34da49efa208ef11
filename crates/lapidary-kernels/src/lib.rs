//! lapidary-kernels: the CubeCL kernels a Gemma 3 vision-language model needs, forward and
//! backward, written once and run by CubeCL's CPU runtime or compiled to CUDA.
//!
//! Each op family is a module with one public entry function per op. An entry function checks
//! shapes and dtypes and returns a clear [`Error`], picks launch sizes for
//! the device, then launches. Beside each kernel lives a plain host reference (`reference`
//! modules, f64 where it matters) that the tests compare against on random shapes.
//! Storage may be f32, bf16 or f16; arithmetic is always f32.
//!
//! This crate knows nothing about gradients: a backward kernel is just another op, called by
//! `lapidary-autograd`.
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_kernels::elementwise;
//!
//! let dev = Device::cpu().unwrap();
//! let x = Tensor::from_f32(&dev, &[-1.0, 0.0, 0.5, 2.0], &[4], DType::F32).unwrap();
//! let y = elementwise::gelu_tanh(&x).unwrap();
//! let dy = Tensor::from_f32(&dev, &[1.0; 4], &[4], DType::F32).unwrap();
//! let dx = elementwise::gelu_tanh_backward(&x, &dy).unwrap();
//! let want = elementwise::reference::gelu_tanh(&[-1.0, 0.0, 0.5, 2.0]);
//! for (a, b) in y.to_f32_vec().unwrap().iter().zip(&want) {
//!     assert!((a - b).abs() < 1e-6);
//! }
//! assert_eq!(dx.shape(), &[4]);
//! ```
//!
//! See `KERNELS.md` in this crate for how to add a kernel.
//!
//! Building: this crate runs kernels through CubeCL's CPU runtime, which links a local LLVM 22.
//! Once per machine, from a checkout of the repository: `cargo xtask setup --user` (Debian's
//! LLVM packages and the shim CubeCL's bundler looks for); then any project builds offline. Give
//! dependencies `opt-level = 3` in the dev profile, or kernels crawl. With `--features cuda`
//! (on `lapidary-core`) kernels also run on NVIDIA GPUs.

#[macro_use]
mod dispatch;
pub mod attention;
pub mod elementwise;
pub mod gather;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod quant;
pub mod reduce;
pub mod rope;
mod rows;

pub use lapidary_core::{DType, Device, Error, Result, Tensor};

#[cfg(test)]
mod test_util;
