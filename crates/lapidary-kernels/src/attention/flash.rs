//! Fused (flash) attention forward: `O = softmax(scale · Q·Kᵀ, mask) · V` without the scores
//! ever leaving the unit. Each unit owns a tile of four query rows of one (batch, head), reads
//! the key/value head they share in place (grouped-query heads by indexing, no repeat_kv copy),
//! and walks the visible keys (see `flash_mask.rs`) in blocks of [`KEY_BLOCK`] with an online
//! softmax: scores of a block, the running max and sum rescaled once per block, then `P·V`
//! accumulated in f32. Saves only `O` and the log-sum-exp per row, O(T·D) memory. The backward
//! is `flash_backward.rs`; the materialized path (`mod.rs`) is the reference it is tested against.

use super::AttentionMask;
use super::flash_mask::{MaskFlags, key_hi, key_lo, tile, visible};
use crate::norm::hsum;
use cubecl::prelude::*;
use lapidary_core::{DType, Result, Tensor, launch};

/// Keys scored per online-softmax step.
pub(super) const KEY_BLOCK: usize = 16;
/// Stand-in for minus infinity (max of no score yet); `lse` of a row that sees no key is `-NONE`.
pub(super) const NONE: f32 = -3.0e38;

/// Copies row `base` of `x` (`d_vec` vectors) into `dst` as f32.
#[cube]
pub(super) fn load_row<F: Float, N: Size>(
    x: &[Vector<F, N>],
    base: usize,
    dst: &mut Array<Vector<f32, N>>,
    #[comptime] d_vec: usize,
) {
    for p in 0..d_vec {
        dst[p] = Vector::<f32, N>::cast_from(x[base + p]);
    }
}

/// Sets the first `d_vec` vectors of `dst` to zero.
#[cube]
pub(super) fn zero_row<N: Size>(dst: &mut Array<Vector<f32, N>>, #[comptime] d_vec: usize) {
    for p in 0..d_vec {
        dst[p] = Vector::<f32, N>::new(0.0f32);
    }
}

/// The largest of the first `n` scores.
#[cube]
fn block_max(s: &Array<f32>, n: usize) -> f32 {
    let mut m = f32::new(NONE);
    for j in 0..n {
        m = max(m, s[j]);
    }
    m
}

/// Turns the first `n` scores (masked ones at `NONE`) into `exp(score - m)` in place (0 for
/// masked ones) and returns their sum. `N` scores at a time through one vector exponential (on
/// the CPU runtime a scalar one is a library call); a masked score, or a lane past `n`, enters
/// it as `NONE` and leaves as 0.
#[cube]
fn exp_block<N: Size>(s: &mut Array<f32>, n: usize, m: f32) -> f32 {
    let mut sum = 0.0f32;
    let mut j0 = 0;
    while j0 < n {
        let mut x = Vector::<f32, N>::new(f32::new(NONE));
        #[unroll]
        for l in 0..N::value() {
            if j0 + l < n && s[j0 + l] > f32::new(NONE) {
                x.insert(l, s[j0 + l] - m);
            }
        }
        let e = x.exp();
        #[unroll]
        for l in 0..N::value() {
            if j0 + l < n {
                s[j0 + l] = e.extract(l);
                sum += e.extract(l);
            }
        }
        j0 += N::value();
    }
    sum
}

/// Multiplies the accumulator row by `alpha` (the online softmax's rescale to a new max).
#[cube]
fn rescale<N: Size>(o: &mut Array<Vector<f32, N>>, alpha: f32, #[comptime] d_vec: usize) {
    if alpha < 1.0 {
        let av = Vector::<f32, N>::new(alpha);
        for p in 0..d_vec {
            o[p] *= av;
        }
    }
}

/// Writes a finished row: `o / l` (zero when no key was visible) and its log-sum-exp.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_row<F: Float, N: Size>(
    out: &mut [Vector<F, N>],
    lse: &mut [f32],
    o: &Array<Vector<f32, N>>,
    m: f32,
    l: f32,
    row: usize,
    #[comptime] d_vec: usize,
) {
    let mut inv = 0.0f32;
    let mut stat = f32::new(-NONE);
    if l > 0.0 {
        inv = 1.0f32 / l;
        stat = m + f32::ln(l);
    }
    let iv = Vector::<f32, N>::new(inv);
    for p in 0..d_vec {
        out[row * d_vec + p] = Vector::cast_from(o[p] * iv);
    }
    lse[row] = stat;
}

// Kernel code: `div_ceil` is not in the cube language.
#[allow(clippy::manual_div_ceil, clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn flash_forward_kernel<F: Float, N: Size>(
    q: &[Vector<F, N>],
    k: &[Vector<F, N>],
    v: &[Vector<F, N>],
    out: &mut [Vector<F, N>],
    lse: &mut [f32],
    blocks: &[f32],
    keep: &[f32],
    segments: &[f32],
    batch: usize,
    heads: usize,
    groups: usize,
    t_len: usize,
    s_len: usize,
    q_offset: usize,
    window: usize,
    scale: f32,
    #[comptime] d_vec: usize,
    #[comptime] flags: MaskFlags,
) {
    let tiles = (t_len + 3) / 4;
    let total = batch * heads * tiles;
    let kv_heads = heads / groups;
    let mut q0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut q1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut q2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut q3 = Array::<Vector<f32, N>>::new(d_vec);
    let mut o0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut o1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut o2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut o3 = Array::<Vector<f32, N>>::new(d_vec);
    let mut s0 = Array::<f32>::new(KEY_BLOCK);
    let mut s1 = Array::<f32>::new(KEY_BLOCK);
    let mut s2 = Array::<f32>::new(KEY_BLOCK);
    let mut s3 = Array::<f32>::new(KEY_BLOCK);
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut w = ABSOLUTE_POS;
    while w < total {
        let bh = w / tiles;
        let t0 = (w % tiles) * 4;
        let b = bh / heads;
        let kv_row0 = (b * kv_heads + (bh % heads) / groups) * s_len;
        let qt = tile(blocks, segments, b, bh * t_len, t0, t_len, q_offset, s_len);
        load_row(q, qt.r0 * d_vec, &mut q0, d_vec);
        load_row(q, qt.r1 * d_vec, &mut q1, d_vec);
        load_row(q, qt.r2 * d_vec, &mut q2, d_vec);
        load_row(q, qt.r3 * d_vec, &mut q3, d_vec);
        zero_row(&mut o0, d_vec);
        zero_row(&mut o1, d_vec);
        zero_row(&mut o2, d_vec);
        zero_row(&mut o3, d_vec);
        let mut m0 = f32::new(NONE);
        let mut m1 = f32::new(NONE);
        let mut m2 = f32::new(NONE);
        let mut m3 = f32::new(NONE);
        let mut l0 = 0.0f32;
        let mut l1 = 0.0f32;
        let mut l2 = 0.0f32;
        let mut l3 = 0.0f32;
        let lo = key_lo(blocks, segments, b, s_len, window, &qt, flags);
        let hi = key_hi(blocks, segments, b, s_len, &qt, flags);
        let mut kb = lo;
        while kb < hi {
            let n = min(KEY_BLOCK, hi - kb);
            for j in 0..n {
                let kk = kb + j;
                let kr = (kv_row0 + kk) * d_vec;
                let mut a0 = Vector::<f32, N>::new(0.0f32);
                let mut a1 = Vector::<f32, N>::new(0.0f32);
                let mut a2 = Vector::<f32, N>::new(0.0f32);
                let mut a3 = Vector::<f32, N>::new(0.0f32);
                for p in 0..d_vec {
                    let y = Vector::<f32, N>::cast_from(k[kr + p]);
                    a0 = fma(q0[p], y, a0);
                    a1 = fma(q1[p], y, a1);
                    a2 = fma(q2[p], y, a2);
                    a3 = fma(q3[p], y, a3);
                }
                s0[j] = select(
                    visible(blocks, keep, segments, b, qt.p0, kk, qt.b0, qt.s0, s_len, window, flags),
                    hsum(a0) * scale,
                    f32::new(NONE),
                );
                s1[j] = select(
                    visible(blocks, keep, segments, b, qt.p1, kk, qt.b1, qt.s1, s_len, window, flags),
                    hsum(a1) * scale,
                    f32::new(NONE),
                );
                s2[j] = select(
                    visible(blocks, keep, segments, b, qt.p2, kk, qt.b2, qt.s2, s_len, window, flags),
                    hsum(a2) * scale,
                    f32::new(NONE),
                );
                s3[j] = select(
                    visible(blocks, keep, segments, b, qt.p3, kk, qt.b3, qt.s3, s_len, window, flags),
                    hsum(a3) * scale,
                    f32::new(NONE),
                );
            }
            // Online softmax: move each row to its new max, rescaling what is accumulated.
            let n0 = max(m0, block_max(&s0, n));
            let n1 = max(m1, block_max(&s1, n));
            let n2 = max(m2, block_max(&s2, n));
            let n3 = max(m3, block_max(&s3, n));
            let c0 = f32::exp(m0 - n0);
            let c1 = f32::exp(m1 - n1);
            let c2 = f32::exp(m2 - n2);
            let c3 = f32::exp(m3 - n3);
            rescale(&mut o0, c0, d_vec);
            rescale(&mut o1, c1, d_vec);
            rescale(&mut o2, c2, d_vec);
            rescale(&mut o3, c3, d_vec);
            l0 = l0 * c0 + exp_block::<N>(&mut s0, n, n0);
            l1 = l1 * c1 + exp_block::<N>(&mut s1, n, n1);
            l2 = l2 * c2 + exp_block::<N>(&mut s2, n, n2);
            l3 = l3 * c3 + exp_block::<N>(&mut s3, n, n3);
            m0 = n0;
            m1 = n1;
            m2 = n2;
            m3 = n3;
            for j in 0..n {
                let vr = (kv_row0 + kb + j) * d_vec;
                let e0 = Vector::<f32, N>::new(s0[j]);
                let e1 = Vector::<f32, N>::new(s1[j]);
                let e2 = Vector::<f32, N>::new(s2[j]);
                let e3 = Vector::<f32, N>::new(s3[j]);
                for p in 0..d_vec {
                    let y = Vector::<f32, N>::cast_from(v[vr + p]);
                    o0[p] = fma(e0, y, o0[p]);
                    o1[p] = fma(e1, y, o1[p]);
                    o2[p] = fma(e2, y, o2[p]);
                    o3[p] = fma(e3, y, o3[p]);
                }
            }
            kb += KEY_BLOCK;
        }
        store_row(out, lse, &o0, m0, l0, qt.r0, d_vec);
        if t0 + 1 < t_len {
            store_row(out, lse, &o1, m1, l1, qt.r1, d_vec);
        }
        if t0 + 2 < t_len {
            store_row(out, lse, &o2, m2, l2, qt.r2, d_vec);
        }
        if t0 + 3 < t_len {
            store_row(out, lse, &o3, m3, l3, qt.r3, d_vec);
        }
        w += stride;
    }
}

/// A tensor as a kernel argument, all of it.
pub(super) fn buf(t: &Tensor) -> BufferArg {
    unsafe { BufferArg::from_raw_parts(t.handle().clone(), t.numel()) }
}

/// The mask's block, padding and segment buffers; `fallback` (any f32 tensor) stands in for an
/// absent one, which the kernel never reads since its flag is off.
pub(super) fn mask_buffers<'a>(mask: &'a AttentionMask, fallback: &'a Tensor) -> [&'a Tensor; 3] {
    [
        mask.blocks.as_ref().unwrap_or(fallback),
        mask.key_padding.as_ref().unwrap_or(fallback),
        mask.segments.as_ref().unwrap_or(fallback),
    ]
}

/// Fused forward. `q: [B, H, T, D]`, `k, v: [B, Hkv, S, D]` (shapes checked by the caller).
/// Returns the output `[B, H, T, D]` and the log-sum-exp per row `[B, H, T]` (f32).
pub(super) fn flash_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: &AttentionMask,
) -> Result<(Tensor, Tensor)> {
    let (b, h, t, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let (hkv, s) = (k.dim(1), k.dim(2));
    let dev = q.device();
    if q.numel() == 0 || s == 0 {
        return Ok((Tensor::zeros(dev, q.shape(), q.dtype())?, Tensor::full(dev, &[b, h, t], -NONE, DType::F32)?));
    }
    let out = Tensor::uninit(dev, q.shape(), q.dtype())?;
    let lse = Tensor::uninit(dev, &[b, h, t], DType::F32)?;
    let vw = launch::vector_width(&[d]);
    let tiles = b * h * t.div_ceil(4);
    let (count, dim) = launch::grid_1d(dev, tiles);
    let [blocks, keep, segments] = mask_buffers(mask, &lse);
    dispatch_float!(q.dtype(), F => unsafe {
        flash_forward_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, vw,
            buf(q),
            buf(k),
            buf(v),
            buf(&out),
            buf(&lse),
            buf(blocks),
            buf(keep),
            buf(segments),
            b, h, h / hkv, t, s, mask.q_offset, mask.window.unwrap_or(0), scale,
            d / vw, MaskFlags::of(mask),
        )
    });
    Ok((out, lse))
}
