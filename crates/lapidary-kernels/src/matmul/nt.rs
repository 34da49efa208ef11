//! `A · Bᵀ` with B read in place: the product of `x [.., M, K]` and a weight stored `[N, K]`
//! (every Linear's forward) without transposing the weight first. Each unit owns tiles of 4 rows
//! of A × 4 rows of B and walks K in vectors, both operands contiguous; 16 accumulators are
//! summed across lanes at the end. Used by [`super::kernel::matmul`] when `trans_b` is set,
//! `trans_a` is not, A has fewer than 32 rows (too few to repay packing B) and a vector of at
//! least 4 divides K; B is packed otherwise.

use crate::norm::hsum;
use cubecl::prelude::*;

/// Super-block of tiles (4 x 4 each): 32 rows of A x 32 rows of B.
pub(super) const SB: usize = 8;

/// Writes one output element when it lies inside `m x n`, adding the bias of column `j`.
#[cube]
fn store<F: Float, N: Size>(
    c: &mut [F],
    bias: &[F],
    acc: Vector<f32, N>,
    row_base: usize,
    i: usize,
    j: usize,
    m: usize,
    n: usize,
    #[comptime] has_bias: bool,
) {
    if i < m && j < n {
        let mut v = hsum(acc);
        if has_bias {
            v += f32::cast_from(bias[j]);
        }
        c[(row_base + i) * n + j] = F::cast_from(v);
    }
}

// Kernel code: `div_ceil` is not in the cube language.
#[allow(clippy::manual_div_ceil)]
#[cube(launch_unchecked)]
pub(super) fn matmul_nt_kernel<F: Float, N: Size>(
    a: &[Vector<F, N>],
    b: &[Vector<F, N>],
    bias: &[F],
    c: &mut [F],
    batches: usize,
    m: usize,
    n: usize,
    k_vec: usize,
    b_batch_stride: usize,
    #[comptime] has_bias: bool,
) {
    let tiles_m = (m + 3) / 4;
    let tiles_n = (n + 3) / 4;
    let sb_rows = (tiles_m + SB - 1) / SB;
    let sb_cols = (tiles_n + SB - 1) / SB;
    let per_sb = SB * SB;
    let total = batches * sb_rows * sb_cols * per_sb;
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut t = ABSOLUTE_POS;
    while t < total {
        let local = t % per_sb;
        let sb = t / per_sb;
        let tm = (sb % sb_rows) * SB + local % SB;
        let tn = ((sb / sb_rows) % sb_cols) * SB + local / SB;
        let bi = sb / (sb_rows * sb_cols);
        if tm < tiles_m && tn < tiles_n {
            let r0 = tm * 4;
            let j0 = tn * 4;
            // Rows past the edge are clamped for loads and skipped for stores.
            let row_base = bi * m;
            let a0 = (row_base + r0) * k_vec;
            let a1 = (row_base + min(r0 + 1, m - 1)) * k_vec;
            let a2 = (row_base + min(r0 + 2, m - 1)) * k_vec;
            let a3 = (row_base + min(r0 + 3, m - 1)) * k_vec;
            let b_base = bi * b_batch_stride;
            let b0 = b_base + j0 * k_vec;
            let b1 = b_base + min(j0 + 1, n - 1) * k_vec;
            let b2 = b_base + min(j0 + 2, n - 1) * k_vec;
            let b3 = b_base + min(j0 + 3, n - 1) * k_vec;

            let zero = Vector::<f32, N>::new(0.0f32);
            let mut c00 = zero;
            let mut c01 = zero;
            let mut c02 = zero;
            let mut c03 = zero;
            let mut c10 = zero;
            let mut c11 = zero;
            let mut c12 = zero;
            let mut c13 = zero;
            let mut c20 = zero;
            let mut c21 = zero;
            let mut c22 = zero;
            let mut c23 = zero;
            let mut c30 = zero;
            let mut c31 = zero;
            let mut c32 = zero;
            let mut c33 = zero;
            for p in 0..k_vec {
                let x0 = Vector::<f32, N>::cast_from(a[a0 + p]);
                let x1 = Vector::<f32, N>::cast_from(a[a1 + p]);
                let x2 = Vector::<f32, N>::cast_from(a[a2 + p]);
                let x3 = Vector::<f32, N>::cast_from(a[a3 + p]);
                let y0 = Vector::<f32, N>::cast_from(b[b0 + p]);
                let y1 = Vector::<f32, N>::cast_from(b[b1 + p]);
                let y2 = Vector::<f32, N>::cast_from(b[b2 + p]);
                let y3 = Vector::<f32, N>::cast_from(b[b3 + p]);
                c00 = fma(x0, y0, c00);
                c01 = fma(x0, y1, c01);
                c02 = fma(x0, y2, c02);
                c03 = fma(x0, y3, c03);
                c10 = fma(x1, y0, c10);
                c11 = fma(x1, y1, c11);
                c12 = fma(x1, y2, c12);
                c13 = fma(x1, y3, c13);
                c20 = fma(x2, y0, c20);
                c21 = fma(x2, y1, c21);
                c22 = fma(x2, y2, c22);
                c23 = fma(x2, y3, c23);
                c30 = fma(x3, y0, c30);
                c31 = fma(x3, y1, c31);
                c32 = fma(x3, y2, c32);
                c33 = fma(x3, y3, c33);
            }
            store::<F, N>(c, bias, c00, row_base, r0, j0, m, n, has_bias);
            store::<F, N>(c, bias, c01, row_base, r0, j0 + 1, m, n, has_bias);
            store::<F, N>(c, bias, c02, row_base, r0, j0 + 2, m, n, has_bias);
            store::<F, N>(c, bias, c03, row_base, r0, j0 + 3, m, n, has_bias);
            store::<F, N>(c, bias, c10, row_base, r0 + 1, j0, m, n, has_bias);
            store::<F, N>(c, bias, c11, row_base, r0 + 1, j0 + 1, m, n, has_bias);
            store::<F, N>(c, bias, c12, row_base, r0 + 1, j0 + 2, m, n, has_bias);
            store::<F, N>(c, bias, c13, row_base, r0 + 1, j0 + 3, m, n, has_bias);
            store::<F, N>(c, bias, c20, row_base, r0 + 2, j0, m, n, has_bias);
            store::<F, N>(c, bias, c21, row_base, r0 + 2, j0 + 1, m, n, has_bias);
            store::<F, N>(c, bias, c22, row_base, r0 + 2, j0 + 2, m, n, has_bias);
            store::<F, N>(c, bias, c23, row_base, r0 + 2, j0 + 3, m, n, has_bias);
            store::<F, N>(c, bias, c30, row_base, r0 + 3, j0, m, n, has_bias);
            store::<F, N>(c, bias, c31, row_base, r0 + 3, j0 + 1, m, n, has_bias);
            store::<F, N>(c, bias, c32, row_base, r0 + 3, j0 + 2, m, n, has_bias);
            store::<F, N>(c, bias, c33, row_base, r0 + 3, j0 + 3, m, n, has_bias);
        }
        t += stride;
    }
}
