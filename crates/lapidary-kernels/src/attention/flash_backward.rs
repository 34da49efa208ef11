//! Fused (flash) attention backward. The probabilities are recomputed block by block from Q, K
//! and the forward's log-sum-exp, never stored: `P = exp(scale·q·k − lse)`, `dP = dO·V`,
//! `dS = P ∘ (dP − δ) · scale` with `δ = rowsum(dO ∘ O)`. Three passes, no atomics, so results are
//! deterministic: δ per query row; dQ with units owning a tile of query rows, scoring a block of
//! keys at once from K and V regrouped with keys in lanes (`dQ += dS·K`); dK and dV with units
//! owning a tile of keys of one key/value head, scoring a block of queries at once from Q and dO regrouped
//! the same way and summing over every query head that shares the keys (`dV += P·dO`,
//! `dK += dS·Q`). Visible ranges and masks come from `flash_mask.rs`. Not the forward.

use super::flash::{buf, mask_buffers, score_rows, variable, zero_rows};
use super::flash_lanes::{lane_arrays, lanes_for, load_scaled, rows_to_lanes, spill};
use super::flash_mask::{
    MaskFlags, TILE_ROWS, block_seen_by_all, key_hi, key_lo, mask_keys, mask_queries, queries_see_block, query_hi,
    query_lo, tile,
};
use super::{AttentionGrads, AttentionMask};
use crate::norm::hsum;
use cubecl::prelude::*;
use lapidary_core::{DType, Result, Tensor, launch};

/// `δ[r] = Σ dO[r] ∘ O[r]` per query row.
#[cube(launch_unchecked)]
fn delta_kernel<F: Float, N: Size>(
    out: &[Vector<F, N>],
    dout: &[Vector<F, N>],
    delta: &mut [f32],
    rows: usize,
    d_vec: usize,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut r = ABSOLUTE_POS;
    while r < rows {
        let mut acc = Vector::<f32, N>::new(0.0f32);
        for p in 0..d_vec {
            acc = fma(
                Vector::<f32, N>::cast_from(out[r * d_vec + p]),
                Vector::<f32, N>::cast_from(dout[r * d_vec + p]),
                acc,
            );
        }
        delta[r] = hsum(acc);
        r += stride;
    }
}

/// `dS = P ∘ (dP − δ) · scale` of one row and block, with `P = exp(s − lse)` (0 in masked lanes).
#[cube]
fn score_grad<L: Size>(s: Vector<f32, L>, dp: Vector<f32, L>, lse: f32, delta: f32, scale: f32) -> Vector<f32, L> {
    let p = (s - Vector::new(lse)).exp();
    p * (dp - Vector::new(delta)) * Vector::new(scale)
}

// Kernel code: `div_ceil` is not in the cube language.
#[allow(clippy::manual_div_ceil, clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn flash_dq_kernel<F: Float, N: Size, L: Size>(
    q: &[F],
    kt: &[Vector<F, L>],
    vt: &[Vector<F, L>],
    k: &[Vector<F, N>],
    dout: &[F],
    lse: &[f32],
    delta: &[f32],
    dq: &mut [Vector<F, N>],
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
    // Row r of the tile at r * d (queries, output gradients), r * d_vec (dQ); its dS in e[r].
    let mut q_rows = Array::<f32>::new(comptime!(TILE_ROWS * d));
    let mut g_rows = Array::<f32>::new(comptime!(TILE_ROWS * d));
    let mut a = Array::<Vector<f32, N>>::new(comptime!(TILE_ROWS * d_vec));
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
            load_scaled(dout, qt.r[r] * d, &mut g_rows, r * d, 1.0, d);
        }
        zero_rows(&mut a, comptime!(TILE_ROWS * d_vec));
        let lo = key_lo(blocks, segments, b, s_len, window, &qt, flags);
        let hi = key_hi(blocks, segments, b, s_len, &qt, flags);
        let mut blk = lo / lanes;
        while blk * lanes < hi {
            let kb = blk * lanes;
            let base = (bkv * key_blocks + blk) * d;
            let mut s = score_rows(kt, base, &q_rows, d);
            if !block_seen_by_all(keep, segments, b, &qt, kb, lanes, lo, hi, s_len, window, flags) {
                mask_keys(&mut s, blocks, keep, segments, b, &qt, kb, lo, hi, s_len, window, flags);
            }
            let dp = score_rows(vt, base, &g_rows, d);
            #[unroll]
            for r in 0..TILE_ROWS {
                let row = qt.r[r];
                spill(score_grad(s[r], dp[r], lse[row], delta[row], scale), e.index_mut(r));
            }
            // dQ += dS · K over the block's keys in range, one column vector at a time.
            let j_lo = max(lo, kb) - kb;
            let j_hi = min(hi, kb + lanes) - kb;
            for p in 0..d_vec {
                let mut acc = Sequence::<Vector<f32, N>>::new();
                #[unroll]
                for r in 0..TILE_ROWS {
                    acc.push(variable::<Vector<f32, N>>(a[r * d_vec + p]));
                }
                for j in j_lo..j_hi {
                    let y = Vector::<f32, N>::cast_from(k[(kv_row0 + kb + j) * d_vec + p]);
                    #[unroll]
                    for r in 0..TILE_ROWS {
                        *acc.index_mut(r) = fma(Vector::new(e[r][j]), y, acc[r]);
                    }
                }
                #[unroll]
                for r in 0..TILE_ROWS {
                    a[r * d_vec + p] = acc[r];
                }
            }
            blk += 1;
        }
        #[unroll]
        for r in 0..TILE_ROWS {
            if t0 + r < t_len {
                for p in 0..d_vec {
                    dq[qt.r[r] * d_vec + p] = Vector::cast_from(a[r * d_vec + p]);
                }
            }
        }
        w += stride;
    }
}

/// The log-sum-exp (or δ) of the `L` query rows of a block from `row0` (of a head's `t_len`
/// rows from `head_row0`) as one vector, 0 past the last row.
#[cube]
fn row_stats<L: Size>(stat: &[f32], head_row0: usize, row0: usize, t_len: usize) -> Vector<f32, L> {
    let mut v = Vector::<f32, L>::new(0.0f32);
    #[unroll]
    for l in 0..L::value() {
        if row0 + l < t_len {
            v.insert(l, stat[head_row0 + row0 + l]);
        }
    }
    v
}

// Kernel code: `div_ceil` is not in the cube language.
#[allow(clippy::manual_div_ceil, clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn flash_dkdv_kernel<F: Float, N: Size, L: Size>(
    qt: &[Vector<F, L>],
    gt: &[Vector<F, L>],
    q: &[Vector<F, N>],
    dout: &[Vector<F, N>],
    k: &[F],
    v: &[F],
    lse: &[f32],
    delta: &[f32],
    dk: &mut [Vector<F, N>],
    dv: &mut [Vector<F, N>],
    blocks: &[f32],
    keep: &[f32],
    segments: &[f32],
    batch: usize,
    kv_heads: usize,
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
    let tiles = (s_len + TILE_ROWS - 1) / TILE_ROWS;
    let total = batch * kv_heads * tiles;
    let heads = kv_heads * groups;
    let query_blocks = (t_len + lanes - 1) / lanes;
    // Key r of the tile at r * d (keys, values), r * d_vec (dK, dV); its P and dS in pr[r], e[r].
    let mut k_rows = Array::<f32>::new(comptime!(TILE_ROWS * d));
    let mut v_rows = Array::<f32>::new(comptime!(TILE_ROWS * d));
    let mut gk = Array::<Vector<f32, N>>::new(comptime!(TILE_ROWS * d_vec));
    let mut gv = Array::<Vector<f32, N>>::new(comptime!(TILE_ROWS * d_vec));
    let mut pr = lane_arrays::<L>();
    let mut e = lane_arrays::<L>();
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut w = ABSOLUTE_POS;
    while w < total {
        let bkv = w / tiles;
        let j0 = (w % tiles) * TILE_ROWS;
        let b = bkv / kv_heads;
        let kh = bkv % kv_heads;
        // Keys past the end are clamped for loads and skipped for stores.
        let kt = tile(blocks, segments, b, bkv * s_len, j0, s_len, 0, s_len);
        #[unroll]
        for r in 0..TILE_ROWS {
            load_scaled(k, kt.r[r] * d, &mut k_rows, r * d, scale, d);
            load_scaled(v, kt.r[r] * d, &mut v_rows, r * d, 1.0, d);
        }
        zero_rows(&mut gk, comptime!(TILE_ROWS * d_vec));
        zero_rows(&mut gv, comptime!(TILE_ROWS * d_vec));
        // Query rows (not positions) that can see the tile: [ta, tz).
        let ta = query_lo(blocks, segments, b, q_offset, s_len, &kt, flags) - q_offset;
        let tz =
            max(query_hi(blocks, segments, b, q_offset + t_len, s_len, window, &kt, flags), ta + q_offset) - q_offset;
        let (qa, qz) = (ta + q_offset, tz + q_offset);
        for g in 0..groups {
            let bh = b * heads + kh * groups + g;
            let mut blk = ta / lanes;
            while blk * lanes < tz {
                let qb = blk * lanes;
                let base = (bh * query_blocks + blk) * d;
                let mut s = score_rows(qt, base, &k_rows, d);
                if !queries_see_block(keep, segments, b, &kt, qb + q_offset, lanes, qa, qz, s_len, window, flags) {
                    mask_queries(&mut s, blocks, keep, segments, b, &kt, qb + q_offset, qa, qz, s_len, window, flags);
                }
                let dp = score_rows(gt, base, &v_rows, d);
                let l = row_stats::<L>(lse, bh * t_len, qb, t_len);
                let dl = row_stats::<L>(delta, bh * t_len, qb, t_len);
                let sc = Vector::<f32, L>::new(scale);
                #[unroll]
                for r in 0..TILE_ROWS {
                    let p = (s[r] - l).exp();
                    spill(p, pr.index_mut(r));
                    spill(p * (dp[r] - dl) * sc, e.index_mut(r));
                }
                // dV += P · dO and dK += dS · Q over the block's rows in range.
                let i_lo = max(ta, qb) - qb;
                let i_hi = min(tz, qb + lanes) - qb;
                let row0 = bh * t_len + qb;
                for p in 0..d_vec {
                    let mut ck = Sequence::<Vector<f32, N>>::new();
                    let mut cv = Sequence::<Vector<f32, N>>::new();
                    #[unroll]
                    for r in 0..TILE_ROWS {
                        ck.push(variable::<Vector<f32, N>>(gk[r * d_vec + p]));
                        cv.push(variable::<Vector<f32, N>>(gv[r * d_vec + p]));
                    }
                    for i in i_lo..i_hi {
                        let x = Vector::<f32, N>::cast_from(q[(row0 + i) * d_vec + p]);
                        let y = Vector::<f32, N>::cast_from(dout[(row0 + i) * d_vec + p]);
                        #[unroll]
                        for r in 0..TILE_ROWS {
                            *ck.index_mut(r) = fma(Vector::new(e[r][i]), x, ck[r]);
                            *cv.index_mut(r) = fma(Vector::new(pr[r][i]), y, cv[r]);
                        }
                    }
                    #[unroll]
                    for r in 0..TILE_ROWS {
                        gk[r * d_vec + p] = ck[r];
                        gv[r * d_vec + p] = cv[r];
                    }
                }
                blk += 1;
            }
        }
        #[unroll]
        for r in 0..TILE_ROWS {
            if j0 + r < s_len {
                for p in 0..d_vec {
                    dk[kt.r[r] * d_vec + p] = Vector::cast_from(gk[r * d_vec + p]);
                    dv[kt.r[r] * d_vec + p] = Vector::cast_from(gv[r * d_vec + p]);
                }
            }
        }
        w += stride;
    }
}

/// `δ = rowsum(dO ∘ O)` per query row of `out, dout: [B, H, T, D]`, as `[B, H, T]` f32.
pub(super) fn row_deltas(out: &Tensor, dout: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = (out.dim(0), out.dim(1), out.dim(2), out.dim(3));
    let dev = out.device();
    let rows = b * h * t;
    let vw = launch::vector_width_up_to(&[d], lanes_for(out));
    let delta = Tensor::uninit(dev, &[b, h, t], DType::F32)?;
    let (count, dim) = launch::grid_1d(dev, rows);
    dispatch_float!(out.dtype(), F => unsafe {
        delta_kernel::launch_unchecked::<F>(dev.client(), count, dim, vw, buf(out), buf(dout), buf(&delta), rows, d / vw)
    });
    Ok(delta)
}

/// Fused backward: gradients of q, k, v from the forward's output and log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub(super) fn flash_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f32,
    mask: &AttentionMask,
) -> Result<AttentionGrads> {
    let (b, h, t, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let (hkv, s) = (k.dim(1), k.dim(2));
    let dev = q.device();
    if q.numel() == 0 || k.numel() == 0 {
        return Ok(AttentionGrads {
            q: Tensor::zeros(dev, q.shape(), q.dtype())?,
            k: Tensor::zeros(dev, k.shape(), k.dtype())?,
            v: Tensor::zeros(dev, v.shape(), v.dtype())?,
        });
    }
    let lanes = lanes_for(q);
    let vw = launch::vector_width_up_to(&[d], lanes);
    let delta = row_deltas(out, dout)?;
    let dq = Tensor::uninit(dev, q.shape(), q.dtype())?;
    let dk = Tensor::uninit(dev, k.shape(), k.dtype())?;
    let dv = Tensor::uninit(dev, v.shape(), v.dtype())?;
    let [blocks, keep, segments] = mask_buffers(mask, lse);
    let (window, flags) = (mask.window.unwrap_or(0), MaskFlags::of(mask));
    let (kt, vt) = (rows_to_lanes(k, lanes)?, rows_to_lanes(v, lanes)?);
    let (count, dim) = launch::grid_1d(dev, b * h * t.div_ceil(TILE_ROWS));
    dispatch_float!(q.dtype(), F => unsafe {
        flash_dq_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, vw, lanes,
            buf(q), buf(&kt), buf(&vt), buf(k), buf(dout), buf(lse), buf(&delta), buf(&dq),
            buf(blocks), buf(keep), buf(segments),
            b, h, h / hkv, t, s, mask.q_offset, window, scale, d, d / vw, flags,
        )
    });
    drop((kt, vt));
    let (qt, gt) = (rows_to_lanes(q, lanes)?, rows_to_lanes(dout, lanes)?);
    let (count, dim) = launch::grid_1d(dev, b * hkv * s.div_ceil(TILE_ROWS));
    dispatch_float!(q.dtype(), F => unsafe {
        flash_dkdv_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, vw, lanes,
            buf(&qt), buf(&gt), buf(q), buf(dout), buf(k), buf(v), buf(lse), buf(&delta), buf(&dk), buf(&dv),
            buf(blocks), buf(keep), buf(segments),
            b, hkv, h / hkv, t, s, mask.q_offset, window, scale, d, d / vw, flags,
        )
    });
    Ok(AttentionGrads { q: dq, k: dk, v: dv })
}
