//! Fused (flash) attention backward. The probabilities are recomputed block by block from Q, K
//! and the forward's log-sum-exp, never stored: `P = exp(scale·q·k − lse)`, `dP = dO·V`,
//! `dS = P ∘ (dP − δ) · scale` with `δ = rowsum(dO ∘ O)`. Three passes, no atomics, so results are
//! deterministic: δ per query row; dQ with units owning four query rows, scoring a block of keys
//! at once from K and V regrouped with keys in lanes (`dQ += dS·K`); dK and dV with units owning
//! four keys of one key/value head, scoring a block of queries at once from Q and dO regrouped
//! the same way and summing over every query head that shares the keys (`dV += P·dO`,
//! `dK += dS·Q`). Visible ranges and masks come from `flash_mask.rs`. Not the forward.

use super::flash::{buf, mask_buffers, score4, zero_row};
use super::flash_lanes::{lanes_for, load_scaled, rows_to_lanes, spill};
use super::flash_mask::{
    MaskFlags, block_seen_by_all, key_hi, key_lo, mask_keys, mask_queries, queries_see_block, query_hi, query_lo, tile,
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
    let tiles = (t_len + 3) / 4;
    let total = batch * heads * tiles;
    let kv_heads = heads / groups;
    let key_blocks = (s_len + lanes - 1) / lanes;
    let mut q0 = Array::<f32>::new(d);
    let mut q1 = Array::<f32>::new(d);
    let mut q2 = Array::<f32>::new(d);
    let mut q3 = Array::<f32>::new(d);
    let mut g0 = Array::<f32>::new(d);
    let mut g1 = Array::<f32>::new(d);
    let mut g2 = Array::<f32>::new(d);
    let mut g3 = Array::<f32>::new(d);
    let mut a0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut a1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut a2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut a3 = Array::<Vector<f32, N>>::new(d_vec);
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
        load_scaled(dout, qt.r0 * d, &mut g0, 1.0, d);
        load_scaled(dout, qt.r1 * d, &mut g1, 1.0, d);
        load_scaled(dout, qt.r2 * d, &mut g2, 1.0, d);
        load_scaled(dout, qt.r3 * d, &mut g3, 1.0, d);
        zero_row(&mut a0, d_vec);
        zero_row(&mut a1, d_vec);
        zero_row(&mut a2, d_vec);
        zero_row(&mut a3, d_vec);
        let lo = key_lo(blocks, segments, b, s_len, window, &qt, flags);
        let hi = key_hi(blocks, segments, b, s_len, &qt, flags);
        let mut blk = lo / lanes;
        while blk * lanes < hi {
            let kb = blk * lanes;
            let base = (bkv * key_blocks + blk) * d;
            let mut s = score4(kt, base, &q0, &q1, &q2, &q3, d);
            if !block_seen_by_all(keep, segments, b, &qt, kb, lanes, lo, hi, s_len, window, flags) {
                mask_keys(&mut s, blocks, keep, segments, b, &qt, kb, lo, hi, s_len, window, flags);
            }
            let dp = score4(vt, base, &g0, &g1, &g2, &g3, d);
            spill(score_grad(s.0, dp.0, lse[qt.r0], delta[qt.r0], scale), &mut e0);
            spill(score_grad(s.1, dp.1, lse[qt.r1], delta[qt.r1], scale), &mut e1);
            spill(score_grad(s.2, dp.2, lse[qt.r2], delta[qt.r2], scale), &mut e2);
            spill(score_grad(s.3, dp.3, lse[qt.r3], delta[qt.r3], scale), &mut e3);
            // dQ += dS · K over the block's keys in range, one column vector at a time.
            let j_lo = max(lo, kb) - kb;
            let j_hi = min(hi, kb + lanes) - kb;
            for p in 0..d_vec {
                let mut c0 = a0[p];
                let mut c1 = a1[p];
                let mut c2 = a2[p];
                let mut c3 = a3[p];
                for j in j_lo..j_hi {
                    let y = Vector::<f32, N>::cast_from(k[(kv_row0 + kb + j) * d_vec + p]);
                    c0 = fma(Vector::new(e0[j]), y, c0);
                    c1 = fma(Vector::new(e1[j]), y, c1);
                    c2 = fma(Vector::new(e2[j]), y, c2);
                    c3 = fma(Vector::new(e3[j]), y, c3);
                }
                a0[p] = c0;
                a1[p] = c1;
                a2[p] = c2;
                a3[p] = c3;
            }
            blk += 1;
        }
        for p in 0..d_vec {
            dq[qt.r0 * d_vec + p] = Vector::cast_from(a0[p]);
        }
        if t0 + 1 < t_len {
            for p in 0..d_vec {
                dq[qt.r1 * d_vec + p] = Vector::cast_from(a1[p]);
            }
        }
        if t0 + 2 < t_len {
            for p in 0..d_vec {
                dq[qt.r2 * d_vec + p] = Vector::cast_from(a2[p]);
            }
        }
        if t0 + 3 < t_len {
            for p in 0..d_vec {
                dq[qt.r3 * d_vec + p] = Vector::cast_from(a3[p]);
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
    let tiles = (s_len + 3) / 4;
    let total = batch * kv_heads * tiles;
    let heads = kv_heads * groups;
    let query_blocks = (t_len + lanes - 1) / lanes;
    let mut k0 = Array::<f32>::new(d);
    let mut k1 = Array::<f32>::new(d);
    let mut k2 = Array::<f32>::new(d);
    let mut k3 = Array::<f32>::new(d);
    let mut v0 = Array::<f32>::new(d);
    let mut v1 = Array::<f32>::new(d);
    let mut v2 = Array::<f32>::new(d);
    let mut v3 = Array::<f32>::new(d);
    let mut gk0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gk1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gk2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gk3 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gv0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gv1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gv2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gv3 = Array::<Vector<f32, N>>::new(d_vec);
    let mut p0 = Array::<f32>::new(L::value());
    let mut p1 = Array::<f32>::new(L::value());
    let mut p2 = Array::<f32>::new(L::value());
    let mut p3 = Array::<f32>::new(L::value());
    let mut e0 = Array::<f32>::new(L::value());
    let mut e1 = Array::<f32>::new(L::value());
    let mut e2 = Array::<f32>::new(L::value());
    let mut e3 = Array::<f32>::new(L::value());
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut w = ABSOLUTE_POS;
    while w < total {
        let bkv = w / tiles;
        let j0 = (w % tiles) * 4;
        let b = bkv / kv_heads;
        let kh = bkv % kv_heads;
        // Keys past the end are clamped for loads and skipped for stores.
        let kt = tile(blocks, segments, b, bkv * s_len, j0, s_len, 0, s_len);
        load_scaled(k, kt.r0 * d, &mut k0, scale, d);
        load_scaled(k, kt.r1 * d, &mut k1, scale, d);
        load_scaled(k, kt.r2 * d, &mut k2, scale, d);
        load_scaled(k, kt.r3 * d, &mut k3, scale, d);
        load_scaled(v, kt.r0 * d, &mut v0, 1.0, d);
        load_scaled(v, kt.r1 * d, &mut v1, 1.0, d);
        load_scaled(v, kt.r2 * d, &mut v2, 1.0, d);
        load_scaled(v, kt.r3 * d, &mut v3, 1.0, d);
        zero_row(&mut gk0, d_vec);
        zero_row(&mut gk1, d_vec);
        zero_row(&mut gk2, d_vec);
        zero_row(&mut gk3, d_vec);
        zero_row(&mut gv0, d_vec);
        zero_row(&mut gv1, d_vec);
        zero_row(&mut gv2, d_vec);
        zero_row(&mut gv3, d_vec);
        // Query rows (not positions) that can see the tile: [ta, tz).
        let ta = query_lo(blocks, segments, b, q_offset, s_len, &kt, flags) - q_offset;
        let tz =
            max(query_hi(blocks, segments, b, q_offset + t_len, s_len, window, &kt, flags), ta + q_offset) - q_offset;
        for g in 0..groups {
            let bh = b * heads + kh * groups + g;
            let mut blk = ta / lanes;
            while blk * lanes < tz {
                let qb = blk * lanes;
                let base = (bh * query_blocks + blk) * d;
                let mut s = score4(qt, base, &k0, &k1, &k2, &k3, d);
                if !queries_see_block(
                    keep,
                    segments,
                    b,
                    &kt,
                    qb + q_offset,
                    lanes,
                    ta + q_offset,
                    tz + q_offset,
                    s_len,
                    window,
                    flags,
                ) {
                    mask_queries(
                        &mut s,
                        blocks,
                        keep,
                        segments,
                        b,
                        &kt,
                        qb + q_offset,
                        ta + q_offset,
                        tz + q_offset,
                        s_len,
                        window,
                        flags,
                    );
                }
                let dp = score4(gt, base, &v0, &v1, &v2, &v3, d);
                let l = row_stats::<L>(lse, bh * t_len, qb, t_len);
                let dl = row_stats::<L>(delta, bh * t_len, qb, t_len);
                let pr0 = (s.0 - l).exp();
                let pr1 = (s.1 - l).exp();
                let pr2 = (s.2 - l).exp();
                let pr3 = (s.3 - l).exp();
                let sc = Vector::<f32, L>::new(scale);
                spill(pr0, &mut p0);
                spill(pr1, &mut p1);
                spill(pr2, &mut p2);
                spill(pr3, &mut p3);
                spill(pr0 * (dp.0 - dl) * sc, &mut e0);
                spill(pr1 * (dp.1 - dl) * sc, &mut e1);
                spill(pr2 * (dp.2 - dl) * sc, &mut e2);
                spill(pr3 * (dp.3 - dl) * sc, &mut e3);
                // dV += P · dO and dK += dS · Q over the block's rows in range.
                let i_lo = max(ta, qb) - qb;
                let i_hi = min(tz, qb + lanes) - qb;
                let row0 = bh * t_len + qb;
                for p in 0..d_vec {
                    let mut ck0 = gk0[p];
                    let mut ck1 = gk1[p];
                    let mut ck2 = gk2[p];
                    let mut ck3 = gk3[p];
                    let mut cv0 = gv0[p];
                    let mut cv1 = gv1[p];
                    let mut cv2 = gv2[p];
                    let mut cv3 = gv3[p];
                    for i in i_lo..i_hi {
                        let x = Vector::<f32, N>::cast_from(q[(row0 + i) * d_vec + p]);
                        let y = Vector::<f32, N>::cast_from(dout[(row0 + i) * d_vec + p]);
                        ck0 = fma(Vector::new(e0[i]), x, ck0);
                        ck1 = fma(Vector::new(e1[i]), x, ck1);
                        ck2 = fma(Vector::new(e2[i]), x, ck2);
                        ck3 = fma(Vector::new(e3[i]), x, ck3);
                        cv0 = fma(Vector::new(p0[i]), y, cv0);
                        cv1 = fma(Vector::new(p1[i]), y, cv1);
                        cv2 = fma(Vector::new(p2[i]), y, cv2);
                        cv3 = fma(Vector::new(p3[i]), y, cv3);
                    }
                    gk0[p] = ck0;
                    gk1[p] = ck1;
                    gk2[p] = ck2;
                    gk3[p] = ck3;
                    gv0[p] = cv0;
                    gv1[p] = cv1;
                    gv2[p] = cv2;
                    gv3[p] = cv3;
                }
                blk += 1;
            }
        }
        for p in 0..d_vec {
            dk[kt.r0 * d_vec + p] = Vector::cast_from(gk0[p]);
            dv[kt.r0 * d_vec + p] = Vector::cast_from(gv0[p]);
        }
        if j0 + 1 < s_len {
            for p in 0..d_vec {
                dk[kt.r1 * d_vec + p] = Vector::cast_from(gk1[p]);
                dv[kt.r1 * d_vec + p] = Vector::cast_from(gv1[p]);
            }
        }
        if j0 + 2 < s_len {
            for p in 0..d_vec {
                dk[kt.r2 * d_vec + p] = Vector::cast_from(gk2[p]);
                dv[kt.r2 * d_vec + p] = Vector::cast_from(gv2[p]);
            }
        }
        if j0 + 3 < s_len {
            for p in 0..d_vec {
                dk[kt.r3 * d_vec + p] = Vector::cast_from(gk3[p]);
                dv[kt.r3 * d_vec + p] = Vector::cast_from(gv3[p]);
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
    let (count, dim) = launch::grid_1d(dev, b * h * t.div_ceil(4));
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
    let (count, dim) = launch::grid_1d(dev, b * hkv * s.div_ceil(4));
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
