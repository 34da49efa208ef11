//! Fused (flash) attention forward: `O = softmax(scale · Q·Kᵀ, mask) · V` without the scores
//! ever leaving the unit. Each unit owns a tile of four query rows of one (batch, head) and walks
//! the visible keys (see `flash_mask.rs`) of the key/value head they share (grouped-query heads
//! by indexing, no repeat_kv copy) in blocks of one vector of keys, read from K regrouped with
//! keys in lanes (`flash_lanes.rs`): a block's scores are one vector multiply-add per dimension
//! and row, masked lane by lane only where the block is not seen whole. Online softmax: the
//! running max and sum rescaled once per block, then `P·V` accumulated in f32 from V in place.
//! Saves only `O` and the log-sum-exp per row, O(T·D) memory. The backward is
//! `flash_backward.rs`; the materialized path (`mod.rs`) is the reference it is tested against.

use super::AttentionMask;
use super::flash_lanes::{lane_max, lanes_for, load_scaled, rows_to_lanes, spill};
use super::flash_mask::{MaskFlags, Scores4, block_seen_by_all, key_hi, key_lo, mask_keys, tile};
use crate::norm::hsum;
use cubecl::prelude::*;
use lapidary_core::{DType, Result, Tensor, launch};

/// Stand-in for minus infinity (max of no score yet); `lse` of a row that sees no key is `-NONE`.
pub(super) const NONE: f32 = -3.0e38;

/// Sets the first `d_vec` vectors of `dst` to zero.
#[cube]
pub(super) fn zero_row<N: Size>(dst: &mut Array<Vector<f32, N>>, #[comptime] d_vec: usize) {
    for p in 0..d_vec {
        dst[p] = Vector::<f32, N>::new(0.0f32);
    }
}

/// `exp(s - m)` lane by lane: 0 for masked lanes (`NONE`), and for every lane while the row has
/// seen no key (`m` still `NONE`).
#[cube]
fn exp_from<L: Size>(s: Vector<f32, L>, m: f32) -> Vector<f32, L> {
    let mut e = Vector::<f32, L>::new(0.0f32);
    if m > f32::new(NONE) {
        e = (s - Vector::<f32, L>::new(m)).exp();
    }
    e
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

/// Scores of four query rows (scalars `q0..q3`, already scaled) against the `L` keys of one block
/// of `kt` (keys in lanes, from `base`): one vector multiply-add per dimension and row.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn score4<F: Float, L: Size>(
    kt: &[Vector<F, L>],
    base: usize,
    q0: &Array<f32>,
    q1: &Array<f32>,
    q2: &Array<f32>,
    q3: &Array<f32>,
    #[comptime] d: usize,
) -> Scores4<L> {
    let mut s0 = Vector::<f32, L>::new(0.0f32);
    let mut s1 = Vector::<f32, L>::new(0.0f32);
    let mut s2 = Vector::<f32, L>::new(0.0f32);
    let mut s3 = Vector::<f32, L>::new(0.0f32);
    for dd in 0..d {
        let y = Vector::<f32, L>::cast_from(kt[base + dd]);
        s0 = fma(Vector::new(q0[dd]), y, s0);
        s1 = fma(Vector::new(q1[dd]), y, s1);
        s2 = fma(Vector::new(q2[dd]), y, s2);
        s3 = fma(Vector::new(q3[dd]), y, s3);
    }
    (s0, s1, s2, s3)
}

// Kernel code: `div_ceil` is not in the cube language.
#[allow(clippy::manual_div_ceil, clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn flash_forward_kernel<F: Float, N: Size, L: Size>(
    q: &[F],
    kt: &[Vector<F, L>],
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
    #[comptime] d: usize,
    #[comptime] d_vec: usize,
    #[comptime] flags: MaskFlags,
) {
    let lanes = L::value();
    let tiles = (t_len + 3) / 4;
    let total = batch * heads * tiles;
    let kv_heads = heads / groups;
    let key_blocks = (s_len + lanes - 1) / lanes;
    let mut q0 = Array::<f32>::new(d);
    let mut q1 = Array::<f32>::new(d);
    let mut q2 = Array::<f32>::new(d);
    let mut q3 = Array::<f32>::new(d);
    let mut o0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut o1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut o2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut o3 = Array::<Vector<f32, N>>::new(d_vec);
    let mut e0 = Array::<f32>::new(L::value());
    let mut e1 = Array::<f32>::new(L::value());
    let mut e2 = Array::<f32>::new(L::value());
    let mut e3 = Array::<f32>::new(L::value());
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut w = ABSOLUTE_POS;
    while w < total {
        let bh = w / tiles;
        let t0 = (w % tiles) * 4;
        let b = bh / heads;
        let bkv = b * kv_heads + (bh % heads) / groups;
        let kv_row0 = bkv * s_len;
        let qt = tile(blocks, segments, b, bh * t_len, t0, t_len, q_offset, s_len);
        load_scaled(q, qt.r0 * d, &mut q0, scale, d);
        load_scaled(q, qt.r1 * d, &mut q1, scale, d);
        load_scaled(q, qt.r2 * d, &mut q2, scale, d);
        load_scaled(q, qt.r3 * d, &mut q3, scale, d);
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
        let mut blk = lo / lanes;
        while blk * lanes < hi {
            let kb = blk * lanes;
            let mut s = score4(kt, (bkv * key_blocks + blk) * d, &q0, &q1, &q2, &q3, d);
            if !block_seen_by_all(keep, segments, b, &qt, kb, lanes, lo, hi, s_len, window, flags) {
                mask_keys(&mut s, blocks, keep, segments, b, &qt, kb, lo, hi, s_len, window, flags);
            }
            // Online softmax: move each row to its new max, rescaling what is accumulated.
            let n0 = max(m0, lane_max(s.0));
            let n1 = max(m1, lane_max(s.1));
            let n2 = max(m2, lane_max(s.2));
            let n3 = max(m3, lane_max(s.3));
            let c0 = f32::exp(m0 - n0);
            let c1 = f32::exp(m1 - n1);
            let c2 = f32::exp(m2 - n2);
            let c3 = f32::exp(m3 - n3);
            let p0 = exp_from(s.0, n0);
            let p1 = exp_from(s.1, n1);
            let p2 = exp_from(s.2, n2);
            let p3 = exp_from(s.3, n3);
            l0 = l0 * c0 + hsum(p0);
            l1 = l1 * c1 + hsum(p1);
            l2 = l2 * c2 + hsum(p2);
            l3 = l3 * c3 + hsum(p3);
            m0 = n0;
            m1 = n1;
            m2 = n2;
            m3 = n3;
            spill(p0, &mut e0);
            spill(p1, &mut e1);
            spill(p2, &mut e2);
            spill(p3, &mut e3);
            // P·V over the block's keys in range, one column vector at a time.
            let j_lo = max(lo, kb) - kb;
            let j_hi = min(hi, kb + lanes) - kb;
            for p in 0..d_vec {
                let mut a0 = o0[p] * Vector::new(c0);
                let mut a1 = o1[p] * Vector::new(c1);
                let mut a2 = o2[p] * Vector::new(c2);
                let mut a3 = o3[p] * Vector::new(c3);
                for j in j_lo..j_hi {
                    let y = Vector::<f32, N>::cast_from(v[(kv_row0 + kb + j) * d_vec + p]);
                    a0 = fma(Vector::new(e0[j]), y, a0);
                    a1 = fma(Vector::new(e1[j]), y, a1);
                    a2 = fma(Vector::new(e2[j]), y, a2);
                    a3 = fma(Vector::new(e3[j]), y, a3);
                }
                o0[p] = a0;
                o1[p] = a1;
                o2[p] = a2;
                o3[p] = a3;
            }
            blk += 1;
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
    let lanes = lanes_for(q);
    let vw = launch::vector_width_up_to(&[d], lanes);
    let kt = rows_to_lanes(k, lanes)?;
    let tiles = b * h * t.div_ceil(4);
    let (count, dim) = launch::grid_1d(dev, tiles);
    let [blocks, keep, segments] = mask_buffers(mask, &lse);
    dispatch_float!(q.dtype(), F => unsafe {
        flash_forward_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, vw, lanes,
            buf(q),
            BufferArg::from_raw_parts(kt.handle().clone(), kt.numel()),
            buf(v),
            buf(&out),
            buf(&lse),
            buf(blocks),
            buf(keep),
            buf(segments),
            b, h, h / hkv, t, s, mask.q_offset, mask.window.unwrap_or(0), scale,
            d, d / vw, MaskFlags::of(mask),
        )
    });
    Ok((out, lse))
}
