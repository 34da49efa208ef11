//! B packed for the register matmul on the CPU: `B [K, N]` (or a weight `[N, K]` read
//! transposed) rewritten as panels two vectors wide, `[batch, panels, K, 2]` vectors, the
//! column vector past N's edge repeating the last one. The kernel then reads each step along K
//! from one contiguous run instead of rows `N` apart (which on a wide N miss the TLB and fall
//! into a handful of cache sets), and a transposed weight costs this one pass. Not a layout any
//! other op reads.

use cubecl::prelude::*;
use lapidary_core::{Result, Tensor, launch};

/// One step along K of one panel per iteration (its two vectors), each unit a run of `chunk`
/// consecutive steps, coordinates stepped rather than divided out for each vector.
#[cube(launch_unchecked)]
fn pack_b_kernel<F: Float>(
    b: &[F],
    out: &mut [F],
    #[comptime] lanes: usize,
    k: usize,
    n_vec: usize,
    panels: usize,
    row_stride: usize,
    col_stride: usize,
    batch_stride: usize,
    chunk: usize,
) {
    let steps = out.len() / (2 * lanes);
    let mut q = ABSOLUTE_POS * chunk;
    let end = min(q + chunk, steps);
    if q < end {
        let mut p = q % k;
        let mut panel = (q / k) % panels;
        let mut bi = q / k / panels;
        while q < end {
            let base = bi * batch_stride + p * row_stride;
            let c0 = base + min(panel * 2, n_vec - 1) * lanes * col_stride;
            let c1 = base + min(panel * 2 + 1, n_vec - 1) * lanes * col_stride;
            let o = q * 2 * lanes;
            #[unroll]
            for l in 0..lanes {
                out[o + l] = b[c0 + l * col_stride];
                out[o + lanes + l] = b[c1 + l * col_stride];
            }
            q += 1;
            p += 1;
            if p == k {
                p = 0;
                panel += 1;
                if panel == panels {
                    panel = 0;
                    bi += 1;
                }
            }
        }
    }
}

/// `b` (`[..., K, N]`, or `[..., N, K]` when `trans_b`) packed in panels of two `w`-lane vectors
/// along N: `[batches, ceil(N / w / 2), K, 2 * w]` values, as a flat tensor. `batches` is 1 for
/// a shared (rank-2) B.
pub(super) fn pack_b(b: &Tensor, trans_b: bool, k: usize, n: usize, w: usize) -> Result<Tensor> {
    let batches = b.numel() / (k * n).max(1);
    let n_vec = n / w;
    let panels = n_vec.div_ceil(2);
    let vectors = batches * panels * k * 2;
    let out = Tensor::uninit(b.device(), &[vectors * w], b.dtype())?;
    let (row_stride, col_stride) = if trans_b { (1, k) } else { (n, 1) };
    let dev = b.device();
    let steps = vectors / 2;
    let (count, dim) = launch::grid_tiles(dev, steps);
    let units = launch::units_of(&count, &dim);
    let chunk = steps.div_ceil(units).max(1);
    dispatch_float!(b.dtype(), F => unsafe {
        pack_b_kernel::launch_unchecked::<F>(
            dev.client(), count, dim,
            BufferArg::from_raw_parts(b.handle().clone(), b.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), vectors * w),
            w,
            k, n_vec, panels, row_stride, col_stride, k * n,
            chunk,
        )
    });
    Ok(out)
}
