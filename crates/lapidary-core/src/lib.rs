//! lapidary-core: the runtime, the device and the tensor type that every other lapidary crate
//! builds on.
//!
//! It is: device selection over CubeCL (the CPU runtime by default, CUDA with the `cuda`
//! feature), a [`Tensor`] (shape, contiguous strides, [`DType`] f32 / bf16 / f16, a device
//! buffer), host upload and download, launch-sizing helpers, and the one [`Error`] type.
//! It is not: kernels (see `lapidary-kernels`) or gradients (see `lapidary-autograd`).
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//!
//! let device = Device::cpu().unwrap();
//! let t = Tensor::from_f32(&device, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], DType::BF16).unwrap();
//! assert_eq!(t.shape(), &[2, 3]);
//! assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
//! ```
//!
//! Building: this crate runs kernels through CubeCL's CPU runtime, which links a local LLVM 22.
//! Once per machine, from a checkout of the repository: `cargo xtask setup --user` (Debian's
//! LLVM packages and the shim CubeCL's bundler looks for); then any project builds offline. Give
//! dependencies `opt-level = 3` in the dev profile, or kernels crawl. With `--features cuda`
//! (on `lapidary-core`) kernels also run on NVIDIA GPUs.

pub mod cpu;
mod device;
pub mod jit_builtins;
mod kernel_failure;
pub mod launch;
pub mod pacing;
pub mod settings;
mod tensor;

pub use device::{Device, DeviceKind, MemoryStats};
pub use kernel_failure::kernel_failure;
pub use lapidary_io::{DType, Error, Result, fsio, rng};
pub use settings::{Settings, set_settings, settings};
pub use tensor::{Tensor, host_reads, set_poison_outputs};

/// The CubeCL version this build links, re-exported so that dependants use the very same one.
pub use cubecl;
pub use half::{bf16, f16};
