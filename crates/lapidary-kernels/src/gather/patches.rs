//! Patch extraction for a convolution whose stride equals its kernel (SigLIP's patch embedding,
//! done as im2col + matmul), and the projector's 2-D average pool over a square token grid.
//! Both are pure index maps; their backward passes are the transposed maps.

use cubecl::prelude::*;
use lapidary_core::{Error, Result, Tensor, launch};

/// Patch layout `[N, P, C*p*p]` with features ordered (channel, ky, kx) like a conv weight
/// `[out, C, p, p]` flattened; `backward` writes pixels from patches instead.
#[cube(launch_unchecked)]
fn im2col_kernel<F: Float>(
    pixels: &[F],
    patches: &mut [F],
    channels: usize,
    height: usize,
    width: usize,
    patch: usize,
    #[comptime] backward: bool,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let feat = channels * patch * patch;
    let gw = width / patch;
    let per_image = (height / patch) * gw;
    let mut i = ABSOLUTE_POS;
    while i < patches.len() {
        let f = i % feat;
        let pi = (i / feat) % per_image;
        let n = i / (feat * per_image);
        let c = f / (patch * patch);
        let ky = (f / patch) % patch;
        let kx = f % patch;
        let y = (pi / gw) * patch + ky;
        let x = (pi % gw) * patch + kx;
        let src = ((n * channels + c) * height + y) * width + x;
        if backward {
            // Non-overlapping patches: the map is a bijection, so writing back is exact.
            patches[src] = pixels[i];
        } else {
            patches[i] = pixels[src];
        }
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn avg_pool_kernel<F: Float>(x: &[F], out: &mut [F], side: usize, k: usize, channels: usize) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let os = side / k;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        let c = i % channels;
        let o = (i / channels) % (os * os);
        let b = i / (channels * os * os);
        let (oy, ox) = (o / os, o % os);
        let mut acc = 0.0f32;
        for ky in 0..k {
            for kx in 0..k {
                let pos = (oy * k + ky) * side + ox * k + kx;
                acc += f32::cast_from(x[(b * side * side + pos) * channels + c]);
            }
        }
        out[i] = F::cast_from(acc / f32::cast_from((k * k) as u32));
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn avg_pool_backward_kernel<F: Float>(dy: &[F], dx: &mut [F], side: usize, k: usize, channels: usize) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let os = side / k;
    let mut i = ABSOLUTE_POS;
    while i < dx.len() {
        let c = i % channels;
        let pos = (i / channels) % (side * side);
        let b = i / (channels * side * side);
        let o = ((pos / side) / k) * os + (pos % side) / k;
        dx[i] = F::cast_from(f32::cast_from(dy[(b * os * os + o) * channels + c]) / f32::cast_from((k * k) as u32));
        i += stride;
    }
}

fn check_pixels(op: &str, pixels_shape: &[usize], patch: usize) -> Result<()> {
    if pixels_shape.len() != 4
        || patch == 0
        || !pixels_shape[2].is_multiple_of(patch)
        || !pixels_shape[3].is_multiple_of(patch)
    {
        return Err(Error::shape(
            format!("{op}: pixels (patch {patch})"),
            format!("[N, C, H, W] with H and W multiples of {patch}"),
            pixels_shape,
        ));
    }
    Ok(())
}

/// `[N, C, H, W]` pixels -> `[N, (H/p)·(W/p), C·p·p]` patches (row-major patch grid).
pub fn im2col(pixels: &Tensor, patch: usize) -> Result<Tensor> {
    check_pixels("im2col", pixels.shape(), patch)?;
    let (n, c, h, w) = (pixels.dim(0), pixels.dim(1), pixels.dim(2), pixels.dim(3));
    let out = Tensor::uninit(pixels.device(), &[n, (h / patch) * (w / patch), c * patch * patch], pixels.dtype())?;
    let (count, dim) = launch::grid_1d(pixels.device(), out.numel());
    dispatch_float!(pixels.dtype(), F => unsafe {
        im2col_kernel::launch_unchecked::<F>(
            pixels.device().client(), count, dim,
            BufferArg::from_raw_parts(pixels.handle().clone(), pixels.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), out.numel()),
            c, h, w, patch, false,
        )
    });
    Ok(out)
}

/// Backward of [`im2col`]: patch gradients back to a `pixels_shape` gradient.
pub fn im2col_backward(dpatches: &Tensor, pixels_shape: &[usize], patch: usize) -> Result<Tensor> {
    check_pixels("im2col_backward", pixels_shape, patch)?;
    let (n, c, h, w) = (pixels_shape[0], pixels_shape[1], pixels_shape[2], pixels_shape[3]);
    dpatches.expect_shape("im2col_backward: dpatches", &[n, (h / patch) * (w / patch), c * patch * patch])?;
    let out = Tensor::uninit(dpatches.device(), pixels_shape, dpatches.dtype())?;
    let (count, dim) = launch::grid_1d(dpatches.device(), dpatches.numel());
    dispatch_float!(dpatches.dtype(), F => unsafe {
        im2col_kernel::launch_unchecked::<F>(
            dpatches.device().client(), count, dim,
            BufferArg::from_raw_parts(dpatches.handle().clone(), dpatches.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), out.numel()),
            c, h, w, patch, true,
        )
    });
    Ok(out)
}

fn pool_dims(op: &str, x_shape: &[usize], k: usize) -> Result<(usize, usize, usize)> {
    let side = (x_shape.get(1).copied().unwrap_or(0) as f64).sqrt() as usize;
    if x_shape.len() != 3 || side * side != x_shape[1] || k == 0 || !side.is_multiple_of(k) {
        return Err(Error::shape(
            format!("{op}: x (kernel {k})"),
            format!("[B, side², C] with side a multiple of {k}"),
            x_shape,
        ));
    }
    Ok((x_shape[0], side, x_shape[2]))
}

/// Average pool with kernel = stride = `k` over tokens laid out as a square grid:
/// `[B, side², C] -> [B, (side/k)², C]` (HF's Gemma 3 projector pooling, channels last).
pub fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, side, c) = pool_dims("avg_pool", x.shape(), k)?;
    let os = side / k;
    let out = Tensor::uninit(x.device(), &[b, os * os, c], x.dtype())?;
    let (count, dim) = launch::grid_1d(x.device(), out.numel());
    dispatch_float!(x.dtype(), F => unsafe {
        avg_pool_kernel::launch_unchecked::<F>(
            x.device().client(), count, dim,
            BufferArg::from_raw_parts(x.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), out.numel()),
            side, k, c,
        )
    });
    Ok(out)
}

/// Backward of [`avg_pool`]: each input token gets its pooled token's gradient over k².
pub fn avg_pool_backward(dy: &Tensor, x_shape: &[usize], k: usize) -> Result<Tensor> {
    let (b, side, c) = pool_dims("avg_pool_backward", x_shape, k)?;
    let os = side / k;
    dy.expect_shape("avg_pool_backward: dy", &[b, os * os, c])?;
    let dx = Tensor::uninit(dy.device(), x_shape, dy.dtype())?;
    let (count, dim) = launch::grid_1d(dy.device(), dx.numel());
    dispatch_float!(dy.dtype(), F => unsafe {
        avg_pool_backward_kernel::launch_unchecked::<F>(
            dy.device().client(), count, dim,
            BufferArg::from_raw_parts(dy.handle().clone(), dy.numel()),
            BufferArg::from_raw_parts(dx.handle().clone(), dx.numel()),
            side, k, c,
        )
    });
    Ok(dx)
}
