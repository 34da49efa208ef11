//! Fused (flash) attention forward: `O = softmax(scale · Q·Kᵀ, mask) · V` without the scores
//! ever leaving the unit. Each unit owns a tile of [`TILE_ROWS`] query rows of one (batch, head)
//! (their state side by side, each loop over the rows unrolled) and walks
//! the visible keys (see `flash_mask.rs`) of the key/value head they share (grouped-query heads
//! by indexing, no repeat_kv copy) in blocks of one vector of keys, read from K regrouped with
//! keys in lanes (`flash_lanes.rs`): a block's scores are one vector multiply-add per dimension
//! and row, masked lane by lane only where the block is not seen whole. Online softmax: the
//! running max and sum rescaled once per block, then `P·V` accumulated in f32 from V in place.
//! Saves only `O` and the log-sum-exp per row, O(T·D) memory. The backward is
//! `flash_backward.rs`; the materialized path (`mod.rs`) is the reference it is tested against.

use super::AttentionMask;
use super::flash_lanes::{lane_arrays, lane_max, lanes_for, load_scaled, rows_to_lanes, spill};
use super::flash_mask::{MaskFlags, TILE_ROWS, TileScores, block_seen_by_all, key_hi, key_lo, mask_keys, tile};
use crate::norm::hsum;
use cubecl::prelude::*;
use lapidary_core::{DType, Result, Tensor, launch};

/// Stand-in for minus infinity (max of no score yet); `lse` of a row that sees no key is `-NONE`.
pub(super) const NONE: f32 = -3.0e38;

/// Sets the first `len` vectors of `dst` to zero.
#[cube]
pub(super) fn zero_rows<N: Size>(dst: &mut Array<Vector<f32, N>>, #[comptime] len: usize) {
    for p in 0..len {
        dst[p] = Vector::<f32, N>::new(0.0f32);
    }
}

/// `value` as a variable of its own in the kernel (what `let mut` makes in cube code), so that
/// a `Sequence` entry holding it can be updated in place.
#[cube]
#[allow(unused_mut, clippy::let_and_return)]
pub(super) fn variable<T: CubePrimitive>(value: T) -> T {
    let mut v = value;
    v
}

/// One value per tile row, each a variable of its own (kernels update them in place).
#[cube]
pub(super) fn per_row(value: f32) -> Sequence<f32> {
    let mut rows = Sequence::<f32>::new();
    #[unroll]
    for _ in 0..TILE_ROWS {
        rows.push(variable::<f32>(value));
    }
    rows
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

/// Writes a finished row (`o` from `at`): `o / l` (zero when no key was visible) and its
/// log-sum-exp.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_row<F: Float, N: Size>(
    out: &mut [Vector<F, N>],
    lse: &mut [f32],
    o: &Array<Vector<f32, N>>,
    at: usize,
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
        out[row * d_vec + p] = Vector::cast_from(o[at + p] * iv);
    }
    lse[row] = stat;
}

/// Scores of a tile's rows (`q`: row `r` at `r * d`, already scaled) against the `L` keys of one
/// block of `kt` (keys in lanes, from `base`): one vector multiply-add per dimension and row.
#[cube]
pub(super) fn score_rows<F: Float, L: Size>(
    kt: &[Vector<F, L>],
    base: usize,
    q: &Array<f32>,
    #[comptime] d: usize,
) -> TileScores<L> {
    let mut s = Sequence::<Vector<f32, L>>::new();
    #[unroll]
    for _ in 0..TILE_ROWS {
        s.push(variable::<Vector<f32, L>>(Vector::new(0.0f32)));
    }
    for dd in 0..d {
        let y = Vector::<f32, L>::cast_from(kt[base + dd]);
        #[unroll]
        for r in 0..TILE_ROWS {
            *s.index_mut(r) = fma(Vector::new(q[r * d + dd]), y, s[r]);
        }
    }
    s
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
    let tiles = (t_len + TILE_ROWS - 1) / TILE_ROWS;
    let total = batch * heads * tiles;
    let kv_heads = heads / groups;
    let key_blocks = (s_len + lanes - 1) / lanes;
    // Row r of the tile at r * d (queries), r * d_vec (output); its probabilities in e[r].
    let mut q_rows = Array::<f32>::new(comptime!(TILE_ROWS * d));
    let mut o = Array::<Vector<f32, N>>::new(comptime!(TILE_ROWS * d_vec));
    let mut e = lane_arrays::<L>();
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut w = ABSOLUTE_POS;
    while w < total {
        let bh = w / tiles;
        let t0 = (w % tiles) * TILE_ROWS;
        let b = bh / heads;
        let bkv = b * kv_heads + (bh % heads) / groups;
        let kv_row0 = bkv * s_len;
        let qt = tile(blocks, segments, b, bh * t_len, t0, t_len, q_offset, s_len);
        #[unroll]
        for r in 0..TILE_ROWS {
            load_scaled(q, qt.r[r] * d, &mut q_rows, r * d, scale, d);
        }
        zero_rows(&mut o, comptime!(TILE_ROWS * d_vec));
        let mut m = per_row(f32::new(NONE));
        let mut l = per_row(0.0f32);
        let lo = key_lo(blocks, segments, b, s_len, window, &qt, flags);
        let hi = key_hi(blocks, segments, b, s_len, &qt, flags);
        let mut blk = lo / lanes;
        while blk * lanes < hi {
            let kb = blk * lanes;
            let mut s = score_rows(kt, (bkv * key_blocks + blk) * d, &q_rows, d);
            if !block_seen_by_all(keep, segments, b, &qt, kb, lanes, lo, hi, s_len, window, flags) {
                mask_keys(&mut s, blocks, keep, segments, b, &qt, kb, lo, hi, s_len, window, flags);
            }
            // Online softmax: move each row to its new max, rescaling what is accumulated.
            let mut c = Sequence::<f32>::new();
            #[unroll]
            for r in 0..TILE_ROWS {
                let new_max = max(m[r], lane_max(s[r]));
                let rescale = f32::exp(m[r] - new_max);
                let p = exp_from(s[r], new_max);
                *l.index_mut(r) = l[r] * rescale + hsum(p);
                *m.index_mut(r) = new_max;
                spill(p, e.index_mut(r));
                c.push(rescale);
            }
            // P·V over the block's keys in range, one column vector at a time.
            let j_lo = max(lo, kb) - kb;
            let j_hi = min(hi, kb + lanes) - kb;
            for p in 0..d_vec {
                let mut acc = Sequence::<Vector<f32, N>>::new();
                #[unroll]
                for r in 0..TILE_ROWS {
                    acc.push(variable::<Vector<f32, N>>(o[r * d_vec + p] * Vector::new(c[r])));
                }
                for j in j_lo..j_hi {
                    let y = Vector::<f32, N>::cast_from(v[(kv_row0 + kb + j) * d_vec + p]);
                    #[unroll]
                    for r in 0..TILE_ROWS {
                        *acc.index_mut(r) = fma(Vector::new(e[r][j]), y, acc[r]);
                    }
                }
                #[unroll]
                for r in 0..TILE_ROWS {
                    o[r * d_vec + p] = acc[r];
                }
            }
            blk += 1;
        }
        #[unroll]
        for r in 0..TILE_ROWS {
            if t0 + r < t_len {
                store_row(out, lse, &o, r * d_vec, m[r], l[r], qt.r[r], d_vec);
            }
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
    let tiles = b * h * t.div_ceil(TILE_ROWS);
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
