//! Grouped-query attention support: repeat each key/value head for the query heads that share it
//! (`[B, Hkv, S, D] -> [B, Hkv * groups, S, D]`), and the backward that sums the groups.

use cubecl::prelude::*;
use lapidary_core::{Error, Result, Tensor, launch};

#[cube(launch_unchecked)]
fn repeat_kv_kernel<F: Float>(x: &[F], out: &mut [F], groups: usize, block: usize) {
    // out head h reads kv head h / groups; block = S * D elements per head.
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        let head = i / block;
        out[i] = x[(head / groups) * block + i % block];
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn sum_groups_kernel<F: Float>(dy: &[F], dx: &mut [F], groups: usize, block: usize) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < dx.len() {
        let head = i / block;
        let off = i % block;
        let mut s = 0.0f32;
        for g in 0..groups {
            s += f32::cast_from(dy[(head * groups + g) * block + off]);
        }
        dx[i] = F::cast_from(s);
        i += stride;
    }
}

/// Repeats each of the `Hkv` heads of `x: [B, Hkv, S, D]` `groups` times.
pub fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if x.rank() != 4 || groups == 0 {
        return Err(Error::shape(format!("repeat_kv (groups {groups})"), "[B, Hkv, S, D] and groups >= 1", x.shape()));
    }
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let out = Tensor::uninit(x.device(), &[b, h * groups, s, d], x.dtype())?;
    let (count, dim) = launch::grid_1d(x.device(), out.numel());
    dispatch_float!(x.dtype(), F => unsafe {
        repeat_kv_kernel::launch_unchecked::<F>(
            x.device().client(), count, dim,
            BufferArg::from_raw_parts(x.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), out.numel()),
            groups, s * d,
        )
    });
    Ok(out)
}

/// Backward of [`repeat_kv`]: sums the gradient of each group of `groups` heads.
pub fn repeat_kv_backward(dy: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(dy.clone());
    }
    if dy.rank() != 4 || !dy.dim(1).is_multiple_of(groups) {
        return Err(Error::shape(
            format!("repeat_kv_backward (groups {groups})"),
            "[B, Hkv * groups, S, D]",
            dy.shape(),
        ));
    }
    let (b, h, s, d) = (dy.dim(0), dy.dim(1) / groups, dy.dim(2), dy.dim(3));
    let dx = Tensor::uninit(dy.device(), &[b, h, s, d], dy.dtype())?;
    let (count, dim) = launch::grid_1d(dy.device(), dx.numel());
    dispatch_float!(dy.dtype(), F => unsafe {
        sum_groups_kernel::launch_unchecked::<F>(
            dy.device().client(), count, dim,
            BufferArg::from_raw_parts(dy.handle().clone(), dy.numel()),
            BufferArg::from_raw_parts(dx.handle().clone(), dx.numel()),
            groups, s * d,
        )
    });
    Ok(dx)
}
