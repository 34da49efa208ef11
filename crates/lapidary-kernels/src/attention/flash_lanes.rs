//! The fused attention kernels' second layout: rows of one head (keys, values, queries or output
//! gradients, `[heads, len, D]`) regrouped so that `L` consecutive rows share a vector,
//! `[heads, ceil(len / L), D, L]`, zero past `len`. A tile then scores `L` keys (or queries) at
//! once with one vector multiply-add per dimension, instead of a dot product and a sum across
//! lanes per pair. Also the lane-wise helpers those kernels share. Not the row layout the
//! attention op returns (that stays `[B, H, T, D]`).

use super::flash_mask::TILE_ROWS;
use cubecl::prelude::*;
use lapidary_core::{Result, Tensor, launch};

/// Regroups rows: one output vector (the `L` rows of one block at one dimension) per step.
// Kernel code: `div_ceil` is not in the cube language.
#[allow(clippy::manual_div_ceil)]
#[cube(launch_unchecked)]
fn rows_to_lanes_kernel<F: Float>(x: &[F], out: &mut [F], len: usize, d: usize, #[comptime] lanes: usize) {
    let blocks = (len + lanes - 1) / lanes;
    let total = out.len() / lanes;
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < total {
        let dd = i % d;
        let blk = (i / d) % blocks;
        let head = i / d / blocks;
        #[unroll]
        for l in 0..lanes {
            let row = blk * lanes + l;
            let mut v = F::new(0.0);
            if row < len {
                v = x[(head * len + row) * d + dd];
            }
            out[i * lanes + l] = v;
        }
        i += stride;
    }
}

/// The rows of `x` (`[..., len, D]`, contiguous) regrouped `lanes` at a time:
/// `[..., ceil(len / lanes), D, lanes]` as a flat tensor.
pub(super) fn rows_to_lanes(x: &Tensor, lanes: usize) -> Result<Tensor> {
    let (len, d) = (x.dim(-2), x.dim(-1));
    let heads = x.numel() / (len * d).max(1);
    let values = heads * len.div_ceil(lanes) * d * lanes;
    let out = Tensor::uninit(x.device(), &[values], x.dtype())?;
    if values == 0 {
        return Ok(out);
    }
    let dev = x.device();
    let (count, dim) = launch::grid_1d(dev, values / lanes);
    dispatch_float!(x.dtype(), F => unsafe {
        rows_to_lanes_kernel::launch_unchecked::<F>(
            dev.client(), count, dim,
            BufferArg::from_raw_parts(x.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), values),
            len, d, lanes,
        )
    });
    Ok(out)
}

/// Rows scored together by the fused kernels: one of the CPU's registers of f32 (16 with
/// AVX-512, 8 with AVX2), 4 on GPUs.
pub(super) fn lanes_for(x: &Tensor) -> usize {
    if x.device().is_cpu() { launch::cpu_register_lanes() } else { 4 }
}

/// The largest lane of `v`.
#[cube]
pub(super) fn lane_max<L: Size>(v: Vector<f32, L>) -> f32 {
    let mut m = v.extract(0usize);
    #[unroll]
    for l in 1..L::value() {
        m = max(m, v.extract(l));
    }
    m
}

/// Copies the lanes of `v` into `dst` (so that a loop can read them one by one).
#[cube]
pub(super) fn spill<L: Size>(v: Vector<f32, L>, dst: &mut Array<f32>) {
    #[unroll]
    for l in 0..L::value() {
        dst[l] = v.extract(l);
    }
}

/// One array of `L` lanes per tile row.
#[cube]
pub(super) fn lane_arrays<L: Size>() -> Sequence<Array<f32>> {
    let mut rows = Sequence::<Array<f32>>::new();
    #[unroll]
    for _ in 0..TILE_ROWS {
        rows.push(Array::<f32>::new(L::value()));
    }
    rows
}

/// Copies row `base` of `x` (`d` scalars) into `dst` from `at` as f32, times `factor`.
#[cube]
pub(super) fn load_scaled<F: Float>(
    x: &[F],
    base: usize,
    dst: &mut Array<f32>,
    at: usize,
    factor: f32,
    #[comptime] d: usize,
) {
    for p in 0..d {
        dst[at + p] = f32::cast_from(x[base + p]) * factor;
    }
}
