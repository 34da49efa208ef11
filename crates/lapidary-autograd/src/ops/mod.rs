//! Differentiable ops: each computes its forward with a `lapidary-kernels` entry function and,
//! when an input requires a gradient, records a backward that calls the matching backward
//! kernels, computing only the input gradients that are needed. Shapes and dtypes are checked by
//! the kernels, whose errors name the op.

mod index;
mod linear;
mod loss;
mod nn;
mod pointwise;

pub use index::{avg_pool, gather_rows, im2col, scatter_rows};
pub use lapidary_kernels::matmul::Layout;
pub use linear::{matmul, matmul_add, matmul_frozen, matmul_packed, reshape, swap_middle, transpose};
pub use loss::{HeadLoss, cross_entropy, linear_cross_entropy, sum_all};
pub use nn::{attention, gemma_rms_norm, layer_norm, rms_norm, rope, rope_parts};
pub use pointwise::{add, clamp, geglu, gelu_tanh, mul, scale, softcap};

use lapidary_core::Tensor;

/// The single upstream gradient of a one-output node (present: nodes without any are skipped).
pub(crate) fn upstream(outs: &[Option<Tensor>]) -> Tensor {
    outs[0].clone().expect("a node is only run with an upstream gradient")
}
