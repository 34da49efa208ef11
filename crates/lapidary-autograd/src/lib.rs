//! lapidary-autograd: the reverse-mode tape every lapidary model and adapter runs on.
//!
//! - [`Tape`] records ops on [`Var`]s whose inputs require a gradient; leaves are explicitly
//!   trainable or frozen ([`Tape::param`]), and frozen leaves never get a gradient buffer.
//! - [`Tape::backward`] walks the tape in reverse, frees each intermediate gradient once used,
//!   and returns a [`GradStore`] with a [`GradReport`]: for every trainable leaf, by name, whether
//!   it got a gradient, whether it is finite, and its norm. A trainable leaf without a gradient,
//!   or with a non-finite one, is an error naming it, unless [`BackwardOptions`] allows it to
//!   miss one (a batch without images never reaches the vision tower). `Tape::backward_unread`
//!   makes the same structural check without reading anything back from the device (finiteness
//!   is then the optimizer's step guard's). [`Tape::no_grad`] records nothing while its guard
//!   lives (inference, held-out loss).
//! - [`checkpoint`] runs a segment without keeping its activations and recomputes it during
//!   backward. The segment receives the trainable parameters it uses as explicit inputs, so their
//!   gradients never depend on whether its activation input requires a gradient (the case in
//!   which reentrant checkpointing silently drops every vision-adapter gradient).
//! - [`ops`] wraps the kernels of `lapidary-kernels` as differentiable ops (each backward calls
//!   the kernel crate's backward entry); this crate launches nothing except through those entries.
//!   [`FrozenPanels`] keeps a frozen weight's packed forms (for its product and for the input's
//!   gradient) between steps, for [`ops::matmul_frozen`] and the fused head.
//! - [`gradcheck`] compares every op's backward with central finite differences
//!   ([`gradcheck::op_cases`] lists them; a new op adds a row there) — what `cargo xtask
//!   check-grad` prints first.
//!
//! ```
//! use lapidary_autograd::{ops, Tape, Trainable};
//! use lapidary_core::{Device, DType, Tensor};
//!
//! let dev = Device::cpu().unwrap();
//! let tape = Tape::new();
//! let x = tape.input(Tensor::from_f32(&dev, &[1., 2., 3., 4.], &[2, 2], DType::F32).unwrap());
//! let w = tape.param("w", Tensor::from_f32(&dev, &[0.5, -1., 1., 2.], &[2, 2], DType::F32).unwrap(), Trainable::Yes);
//! let frozen = tape.param("frozen", Tensor::from_f32(&dev, &[1., 1.], &[2], DType::F32).unwrap(), Trainable::No);
//! let y = ops::add(&ops::matmul(&x, &w, None, ops::Layout::AB).unwrap(), &frozen).unwrap();
//! let loss = ops::sum_all(&y).unwrap();
//! let (grads, report) = tape.backward(&loss).unwrap();
//! // d sum(x·w) / dw = xᵀ · 1
//! assert_eq!(grads.get(&w).unwrap().to_f32_vec().unwrap(), vec![4., 4., 6., 6.]);
//! assert!(grads.get(&frozen).is_none());
//! assert_eq!(report.rows.len(), 1);
//! ```
//!
//! Building: this crate runs kernels through CubeCL's CPU runtime, which links a local LLVM 22.
//! Once per machine, from a checkout of the repository: `cargo xtask setup --user` (Debian's
//! LLVM packages and the shim CubeCL's bundler looks for); then any project builds offline. Give
//! dependencies `opt-level = 3` in the dev profile, or kernels crawl. With `--features cuda`
//! (on `lapidary-core`) kernels also run on NVIDIA GPUs.

mod checkpoint;
mod frozen;
mod grad;
pub mod gradcheck;
pub mod ops;
mod tape;

pub use checkpoint::checkpoint;
pub use frozen::FrozenPanels;
pub use grad::{BackwardOptions, GradReport, GradStore, LeafReport};
pub use tape::{NoGradGuard, Tape, Trainable, Var, VarId};

#[cfg(test)]
mod tests;
