//! Batched matrix multiplication `C = op(A) · op(B) (+ bias)` and the layout op it needs
//! (transpose). `op` is an optional transpose of the last two dims; B may be shared by every
//! batch (rank 2), as a weight is. Storage f32 / bf16 / f16, accumulation in f32.
//!
//! One register-blocked kernel (`kernel.rs`): each unit computes 8 rows × 2 vectors of C,
//! walking K with fused multiply-adds, B and C loaded along N in vectors. A transposed B (a
//! Linear's forward, W stored `[N, K]`) and a large B are first packed in panels along N
//! (`pack.rs`), so every step along K reads one contiguous run; with fewer than 32 rows of A
//! (generation) `A · Bᵀ` is read in place along K by its own kernel (`nt.rs`) instead. On GPUs
//! the same entry runs cubek-matmul's routines instead (`accelerated.rs`: tensor cores for
//! bf16/f16, every layout read in place). Backward is expressed with the same op (`dA = dC ·
//! Bᵀ`, `dB = Aᵀ · dC`) and a bias gradient by [`crate::reduce::sum_rows`].
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_kernels::matmul::{self, Layout, Needs};
//! let dev = Device::cpu().unwrap();
//! // x [2, 3] times a weight stored [out=2, in=3] (a Linear): x · Wᵀ + bias.
//! let x = Tensor::from_f32(&dev, &[1., 2., 3., 4., 5., 6.], &[2, 3], DType::F32).unwrap();
//! let w = Tensor::from_f32(&dev, &[1., 0., 0., 0., 1., 1.], &[2, 3], DType::F32).unwrap();
//! let b = Tensor::from_f32(&dev, &[0.5, -0.5], &[2], DType::F32).unwrap();
//! let y = matmul::matmul(&x, &w, Some(&b), Layout::ABt).unwrap();
//! assert_eq!(y.to_f32_vec().unwrap(), vec![1.5, 4.5, 4.5, 10.5]);
//! let dy = Tensor::from_f32(&dev, &[1.; 4], &[2, 2], DType::F32).unwrap();
//! let g = matmul::matmul_backward(&x, &w, &dy, Layout::ABt, Needs::ALL).unwrap();
//! assert_eq!(g.bias.unwrap().to_f32_vec().unwrap(), vec![2.0, 2.0]);
//! ```

pub mod accelerated;
mod blocking;
mod kernel;
mod layout;
pub use accelerated::matmul_mixed;
pub use blocking::CpuBlocking;
mod nt;
mod pack;
pub mod reference;
mod transpose;

pub use kernel::{MatmulGrads, PreparedB, matmul, matmul_add, matmul_backward, matmul_prepared};
pub use layout::{Layout, Needs};
pub use transpose::{swap_middle, transpose};
