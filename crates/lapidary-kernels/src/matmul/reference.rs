//! Host reference for batched matmul, accumulated in f64. The specification the kernel is tested
//! against; slow on purpose.

/// `C[b] = op(A[b]) · op(B[b]) (+ bias)` with row-major inputs. `a` holds `batch` matrices of
/// `[m, k]` (`[k, m]` when `layout` transposes a); `b` holds `batch` (or 1, shared) matrices of
/// `[k, n]` (`[n, k]` when it transposes b). Returns `batch × m × n` values.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    layout: super::Layout,
    b_shared: bool,
) -> Vec<f32> {
    let (trans_a, trans_b) = (layout.transposes_a(), layout.transposes_b());
    let mut c = vec![0f32; batch * m * n];
    for bi in 0..batch {
        let a0 = bi * m * k;
        let b0 = if b_shared { 0 } else { bi * k * n };
        for i in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |bias| bias[j] as f64);
                for p in 0..k {
                    let av = if trans_a { a[a0 + p * m + i] } else { a[a0 + i * k + p] };
                    let bv = if trans_b { b[b0 + j * k + p] } else { b[b0 + p * n + j] };
                    s += av as f64 * bv as f64;
                }
                c[bi * m * n + i * n + j] = s as f32;
            }
        }
    }
    c
}
