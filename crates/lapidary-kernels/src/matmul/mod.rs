//! Batched matrix multiplication `C = op(A) · op(B) (+ bias)` and the layout op it needs
//! (transpose). `op` is an optional transpose of the last two dims; B may be shared by every
//! batch (rank 2), as a weight is. Storage f32 / bf16 / f16, accumulation in f32.
//!
//! One register-blocked kernel (`kernel.rs`): each unit computes 4 rows × 2 vectors of C,
//! walking K with fused multiply-adds, B and C loaded along N in vectors. A transposed B is first
//! made contiguous along N by the transpose kernel. Backward is expressed with the same op
//! (`dA = dC · Bᵀ`, `dB = Aᵀ · dC`) and a bias gradient by [`crate::reduce::sum_rows`].

mod kernel;
pub mod reference;
mod transpose;

pub use kernel::{MatmulGrads, matmul, matmul_backward};
pub use transpose::transpose;
