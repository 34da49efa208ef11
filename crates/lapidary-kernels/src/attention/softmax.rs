//! Masked, scaled softmax over the last axis of attention scores `[B, H, T, S]`, forward and
//! backward. Statistics in f32; the mask is evaluated per score (see `mask.rs`). One unit per row.

use super::AttentionMask;
use super::flash_mask::{MaskFlags, id_at, visible};
use cubecl::prelude::*;
use lapidary_core::{Error, Result, Tensor, launch};

#[cube(launch_unchecked)]
fn softmax_forward_kernel<F: Float>(
    scores: &[F],
    probs: &mut [F],
    blocks: &[f32],
    keep: &[f32],
    segments: &[f32],
    rows: usize,
    heads: usize,
    t_len: usize,
    s_len: usize,
    q_offset: usize,
    window: usize,
    scale: f32,
    #[comptime] flags: MaskFlags,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut r = ABSOLUTE_POS;
    while r < rows {
        let t = r % t_len;
        let b = r / (t_len * heads);
        let q = t + q_offset;
        let base = r * s_len;
        let bq = id_at(blocks, b, q, s_len, 0.0);
        let sq = id_at(segments, b, q, s_len, -1.0);
        let mut mx = f32::new(-3.0e38);
        let mut seen = 0u32;
        for k in 0..s_len {
            if visible(blocks, keep, segments, b, q, k, bq, sq, s_len, window, flags) {
                mx = max(mx, f32::cast_from(scores[base + k]) * scale);
                seen += 1;
            }
        }
        if seen == 0 {
            // No visible key: a zero row, as torch's SDPA (HF's default attention) gives.
            for k in 0..s_len {
                probs[base + k] = F::cast_from(0.0f32);
            }
        } else {
            let mut sum = 0.0f32;
            for k in 0..s_len {
                if visible(blocks, keep, segments, b, q, k, bq, sq, s_len, window, flags) {
                    sum += f32::exp(f32::cast_from(scores[base + k]) * scale - mx);
                }
            }
            let inv = 1.0f32 / sum;
            for k in 0..s_len {
                let mut p = 0.0f32;
                if visible(blocks, keep, segments, b, q, k, bq, sq, s_len, window, flags) {
                    p = f32::exp(f32::cast_from(scores[base + k]) * scale - mx) * inv;
                }
                probs[base + k] = F::cast_from(p);
            }
        }
        r += stride;
    }
}

#[cube(launch_unchecked)]
fn softmax_backward_kernel<F: Float>(
    probs: &[F],
    dprobs: &[F],
    dscores: &mut [F],
    rows: usize,
    s_len: usize,
    scale: f32,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut r = ABSOLUTE_POS;
    while r < rows {
        let base = r * s_len;
        let mut dot = 0.0f32;
        for k in 0..s_len {
            dot += f32::cast_from(probs[base + k]) * f32::cast_from(dprobs[base + k]);
        }
        for k in 0..s_len {
            let p = f32::cast_from(probs[base + k]);
            dscores[base + k] = F::cast_from(p * (f32::cast_from(dprobs[base + k]) - dot) * scale);
        }
        r += stride;
    }
}

/// `softmax(scale * scores)` over the last axis of `[B, H, T, S]` with `mask` applied.
pub fn masked_softmax(scores: &Tensor, scale: f32, mask: &AttentionMask) -> Result<Tensor> {
    if scores.rank() != 4 {
        return Err(Error::shape("masked_softmax: scores", "[B, H, T, S]", scores.shape()));
    }
    let (b, h, t, s) = (scores.dim(0), scores.dim(1), scores.dim(2), scores.dim(3));
    mask.check(b, s)?;
    let rows = b * h * t;
    let probs = Tensor::uninit(scores.device(), scores.shape(), scores.dtype())?;
    let (count, dim) = launch::grid_1d(scores.device(), rows);
    let [blocks, keep, segments] = super::flash::mask_buffers(mask, scores);
    let aux_len = |t: &Tensor| t.numel();
    dispatch_float!(scores.dtype(), F => unsafe {
        softmax_forward_kernel::launch_unchecked::<F>(
            scores.device().client(), count, dim,
            BufferArg::from_raw_parts(scores.handle().clone(), scores.numel()),
            BufferArg::from_raw_parts(probs.handle().clone(), scores.numel()),
            BufferArg::from_raw_parts(blocks.handle().clone(), aux_len(blocks)),
            BufferArg::from_raw_parts(keep.handle().clone(), aux_len(keep)),
            BufferArg::from_raw_parts(segments.handle().clone(), aux_len(segments)),
            rows, h, t, s, mask.q_offset, mask.window.unwrap_or(0), scale,
            MaskFlags::of(mask),
        )
    });
    Ok(probs)
}

/// Backward of [`masked_softmax`]: `dscores = scale * P * (dP - Σ P·dP)` (masked entries have
/// `P = 0` and get no gradient).
pub fn masked_softmax_backward(probs: &Tensor, dprobs: &Tensor, scale: f32) -> Result<Tensor> {
    dprobs.expect_shape("masked_softmax_backward: dprobs", probs.shape())?;
    let s = probs.dim(-1);
    let rows = probs.numel() / s.max(1);
    let ds = Tensor::uninit(probs.device(), probs.shape(), probs.dtype())?;
    let (count, dim) = launch::grid_1d(probs.device(), rows);
    dispatch_float!(probs.dtype(), F => unsafe {
        softmax_backward_kernel::launch_unchecked::<F>(
            probs.device().client(), count, dim,
            BufferArg::from_raw_parts(probs.handle().clone(), probs.numel()),
            BufferArg::from_raw_parts(dprobs.handle().clone(), probs.numel()),
            BufferArg::from_raw_parts(ds.handle().clone(), probs.numel()),
            rows, s, scale,
        )
    });
    Ok(ds)
}
