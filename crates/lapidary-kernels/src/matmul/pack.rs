//! B packed for the register matmul on the CPU: `B [K, N]` (or a weight `[N, K]` read
//! transposed) rewritten as panels two vectors wide, `[batch, panels, K, 2]` vectors, the
//! column vector past N's edge repeating the last one. The kernel then reads each step along K
//! from one contiguous run instead of rows `N` apart (which on a wide N miss the TLB and fall
//! into a handful of cache sets), and a transposed weight costs this one pass. Not a layout any
//! other op reads.

use cubecl::prelude::*;
use lapidary_core::{Result, Tensor, launch};

#[cube(launch_unchecked)]
fn pack_b_kernel<F: Float, N: Size>(
    b: &[F],
    out: &mut [Vector<F, N>],
    k: usize,
    n_vec: usize,
    panels: usize,
    row_stride: usize,
    col_stride: usize,
    batch_stride: usize,
    chunk: usize,
) {
    let total = out.len();
    let mut o = ABSOLUTE_POS * chunk;
    let end = min(o + chunk, total);
    while o < end {
        let pair = o / 2;
        let p = pair % k;
        let panel = pair / k;
        let j = min((panel % panels) * 2 + o % 2, n_vec - 1);
        let base = (panel / panels) * batch_stride + p * row_stride + j * N::value() * col_stride;
        let mut v = Vector::<F, N>::new(F::new(0.0));
        #[unroll]
        for l in 0..N::value() {
            v.insert(l, b[base + l * col_stride]);
        }
        out[o] = v;
        o += 1;
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
    let (count, dim) = launch::grid_tiles(dev, vectors.div_ceil(4));
    let chunk = vectors.div_ceil(dim.x as usize).next_multiple_of(4).max(4);
    dispatch_float!(b.dtype(), F => unsafe {
        pack_b_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, w,
            BufferArg::from_raw_parts(b.handle().clone(), b.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), vectors * w),
            k, n_vec, panels, row_stride, col_stride, k * n,
            chunk,
        )
    });
    Ok(out)
}
