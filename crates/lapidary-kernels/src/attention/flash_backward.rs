//! Fused (flash) attention backward. The probabilities are recomputed block by block from Q, K
//! and the forward's log-sum-exp, never stored: `P = exp(scale·q·k − lse)`, `dP = dO·V`,
//! `dS = P ∘ (dP − δ) · scale` with `δ = rowsum(dO ∘ O)`. Three passes, no atomics, so results are
//! deterministic: δ per query row; dQ with units owning four query rows (`dQ += dS·K`); dK and dV
//! with units owning four keys of one key/value head, summing over every query head that shares
//! it (`dV += P·dO`, `dK += dS·Q`). Visible ranges come from `flash_mask.rs`. Not the forward.

use super::flash::{buf, load_row, mask_buffers, zero_row};
use super::flash_mask::{MaskFlags, id_at, key_hi, key_lo, query_hi, query_lo, tile, visible};
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

/// The recomputed probability of one (query, key) pair, 0 when the key is not visible.
#[cube]
fn prob(dot_qk: f32, lse: f32, scale: f32, seen: bool) -> f32 {
    let mut p = 0.0f32;
    if seen {
        p = f32::exp(dot_qk * scale - lse);
    }
    p
}

// Kernel code: `div_ceil` is not in the cube language.
#[allow(clippy::manual_div_ceil, clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn flash_dq_kernel<F: Float, N: Size>(
    q: &[Vector<F, N>],
    k: &[Vector<F, N>],
    v: &[Vector<F, N>],
    dout: &[Vector<F, N>],
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
    let mut g0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut g1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut g2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut g3 = Array::<Vector<f32, N>>::new(d_vec);
    let mut a0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut a1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut a2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut a3 = Array::<Vector<f32, N>>::new(d_vec);
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
        load_row(dout, qt.r0 * d_vec, &mut g0, d_vec);
        load_row(dout, qt.r1 * d_vec, &mut g1, d_vec);
        load_row(dout, qt.r2 * d_vec, &mut g2, d_vec);
        load_row(dout, qt.r3 * d_vec, &mut g3, d_vec);
        zero_row(&mut a0, d_vec);
        zero_row(&mut a1, d_vec);
        zero_row(&mut a2, d_vec);
        zero_row(&mut a3, d_vec);
        let lo = key_lo(blocks, segments, b, s_len, window, &qt, flags);
        let hi = key_hi(blocks, segments, b, s_len, &qt, flags);
        for kk in lo..hi {
            let kr = (kv_row0 + kk) * d_vec;
            let mut s0 = Vector::<f32, N>::new(0.0f32);
            let mut s1 = Vector::<f32, N>::new(0.0f32);
            let mut s2 = Vector::<f32, N>::new(0.0f32);
            let mut s3 = Vector::<f32, N>::new(0.0f32);
            let mut d0 = Vector::<f32, N>::new(0.0f32);
            let mut d1 = Vector::<f32, N>::new(0.0f32);
            let mut d2 = Vector::<f32, N>::new(0.0f32);
            let mut d3 = Vector::<f32, N>::new(0.0f32);
            for p in 0..d_vec {
                let kv = Vector::<f32, N>::cast_from(k[kr + p]);
                let vv = Vector::<f32, N>::cast_from(v[kr + p]);
                s0 = fma(q0[p], kv, s0);
                s1 = fma(q1[p], kv, s1);
                s2 = fma(q2[p], kv, s2);
                s3 = fma(q3[p], kv, s3);
                d0 = fma(g0[p], vv, d0);
                d1 = fma(g1[p], vv, d1);
                d2 = fma(g2[p], vv, d2);
                d3 = fma(g3[p], vv, d3);
            }
            let e0 = prob(
                hsum(s0),
                lse[qt.r0],
                scale,
                visible(blocks, keep, segments, b, qt.p0, kk, qt.b0, qt.s0, s_len, window, flags),
            );
            let e1 = prob(
                hsum(s1),
                lse[qt.r1],
                scale,
                visible(blocks, keep, segments, b, qt.p1, kk, qt.b1, qt.s1, s_len, window, flags),
            );
            let e2 = prob(
                hsum(s2),
                lse[qt.r2],
                scale,
                visible(blocks, keep, segments, b, qt.p2, kk, qt.b2, qt.s2, s_len, window, flags),
            );
            let e3 = prob(
                hsum(s3),
                lse[qt.r3],
                scale,
                visible(blocks, keep, segments, b, qt.p3, kk, qt.b3, qt.s3, s_len, window, flags),
            );
            let c0 = Vector::<f32, N>::new(e0 * (hsum(d0) - delta[qt.r0]) * scale);
            let c1 = Vector::<f32, N>::new(e1 * (hsum(d1) - delta[qt.r1]) * scale);
            let c2 = Vector::<f32, N>::new(e2 * (hsum(d2) - delta[qt.r2]) * scale);
            let c3 = Vector::<f32, N>::new(e3 * (hsum(d3) - delta[qt.r3]) * scale);
            for p in 0..d_vec {
                let kv = Vector::<f32, N>::cast_from(k[kr + p]);
                a0[p] = fma(c0, kv, a0[p]);
                a1[p] = fma(c1, kv, a1[p]);
                a2[p] = fma(c2, kv, a2[p]);
                a3[p] = fma(c3, kv, a3[p]);
            }
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

// Kernel code: `div_ceil` is not in the cube language.
#[allow(clippy::manual_div_ceil, clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn flash_dkdv_kernel<F: Float, N: Size>(
    q: &[Vector<F, N>],
    k: &[Vector<F, N>],
    v: &[Vector<F, N>],
    dout: &[Vector<F, N>],
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
    #[comptime] d_vec: usize,
    #[comptime] flags: MaskFlags,
) {
    let tiles = (s_len + 3) / 4;
    let total = batch * kv_heads * tiles;
    let heads = kv_heads * groups;
    let mut k0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut k1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut k2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut k3 = Array::<Vector<f32, N>>::new(d_vec);
    let mut v0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut v1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut v2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut v3 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gk0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gk1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gk2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gk3 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gv0 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gv1 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gv2 = Array::<Vector<f32, N>>::new(d_vec);
    let mut gv3 = Array::<Vector<f32, N>>::new(d_vec);
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut w = ABSOLUTE_POS;
    while w < total {
        let bkv = w / tiles;
        let j0 = (w % tiles) * 4;
        let b = bkv / kv_heads;
        let kh = bkv % kv_heads;
        // Keys past the end are clamped for loads and skipped for stores.
        let kt = tile(blocks, segments, b, bkv * s_len, j0, s_len, 0, s_len);
        load_row(k, kt.r0 * d_vec, &mut k0, d_vec);
        load_row(k, kt.r1 * d_vec, &mut k1, d_vec);
        load_row(k, kt.r2 * d_vec, &mut k2, d_vec);
        load_row(k, kt.r3 * d_vec, &mut k3, d_vec);
        load_row(v, kt.r0 * d_vec, &mut v0, d_vec);
        load_row(v, kt.r1 * d_vec, &mut v1, d_vec);
        load_row(v, kt.r2 * d_vec, &mut v2, d_vec);
        load_row(v, kt.r3 * d_vec, &mut v3, d_vec);
        zero_row(&mut gk0, d_vec);
        zero_row(&mut gk1, d_vec);
        zero_row(&mut gk2, d_vec);
        zero_row(&mut gk3, d_vec);
        zero_row(&mut gv0, d_vec);
        zero_row(&mut gv1, d_vec);
        zero_row(&mut gv2, d_vec);
        zero_row(&mut gv3, d_vec);
        let qa = query_lo(blocks, segments, b, q_offset, s_len, &kt, flags);
        let qz = query_hi(blocks, segments, b, q_offset + t_len, s_len, window, &kt, flags);
        for g in 0..groups {
            let bh = b * heads + kh * groups + g;
            for pos in qa..qz {
                let r = bh * t_len + pos - q_offset;
                let bq = id_at(blocks, b, pos, s_len, 0.0);
                let sq = id_at(segments, b, pos, s_len, -1.0);
                let mut s0 = Vector::<f32, N>::new(0.0f32);
                let mut s1 = Vector::<f32, N>::new(0.0f32);
                let mut s2 = Vector::<f32, N>::new(0.0f32);
                let mut s3 = Vector::<f32, N>::new(0.0f32);
                let mut d0 = Vector::<f32, N>::new(0.0f32);
                let mut d1 = Vector::<f32, N>::new(0.0f32);
                let mut d2 = Vector::<f32, N>::new(0.0f32);
                let mut d3 = Vector::<f32, N>::new(0.0f32);
                for p in 0..d_vec {
                    let qv = Vector::<f32, N>::cast_from(q[r * d_vec + p]);
                    let gv = Vector::<f32, N>::cast_from(dout[r * d_vec + p]);
                    s0 = fma(qv, k0[p], s0);
                    s1 = fma(qv, k1[p], s1);
                    s2 = fma(qv, k2[p], s2);
                    s3 = fma(qv, k3[p], s3);
                    d0 = fma(gv, v0[p], d0);
                    d1 = fma(gv, v1[p], d1);
                    d2 = fma(gv, v2[p], d2);
                    d3 = fma(gv, v3[p], d3);
                }
                let (l, dl) = (lse[r], delta[r]);
                let e0 = prob(
                    hsum(s0),
                    l,
                    scale,
                    visible(blocks, keep, segments, b, pos, kt.p0, bq, sq, s_len, window, flags),
                );
                let e1 = prob(
                    hsum(s1),
                    l,
                    scale,
                    visible(blocks, keep, segments, b, pos, kt.p1, bq, sq, s_len, window, flags),
                );
                let e2 = prob(
                    hsum(s2),
                    l,
                    scale,
                    visible(blocks, keep, segments, b, pos, kt.p2, bq, sq, s_len, window, flags),
                );
                let e3 = prob(
                    hsum(s3),
                    l,
                    scale,
                    visible(blocks, keep, segments, b, pos, kt.p3, bq, sq, s_len, window, flags),
                );
                let c0 = Vector::<f32, N>::new(e0 * (hsum(d0) - dl) * scale);
                let c1 = Vector::<f32, N>::new(e1 * (hsum(d1) - dl) * scale);
                let c2 = Vector::<f32, N>::new(e2 * (hsum(d2) - dl) * scale);
                let c3 = Vector::<f32, N>::new(e3 * (hsum(d3) - dl) * scale);
                let (f0, f1, f2, f3) = (
                    Vector::<f32, N>::new(e0),
                    Vector::<f32, N>::new(e1),
                    Vector::<f32, N>::new(e2),
                    Vector::<f32, N>::new(e3),
                );
                for p in 0..d_vec {
                    let qv = Vector::<f32, N>::cast_from(q[r * d_vec + p]);
                    let gv = Vector::<f32, N>::cast_from(dout[r * d_vec + p]);
                    gk0[p] = fma(c0, qv, gk0[p]);
                    gk1[p] = fma(c1, qv, gk1[p]);
                    gk2[p] = fma(c2, qv, gk2[p]);
                    gk3[p] = fma(c3, qv, gk3[p]);
                    gv0[p] = fma(f0, gv, gv0[p]);
                    gv1[p] = fma(f1, gv, gv1[p]);
                    gv2[p] = fma(f2, gv, gv2[p]);
                    gv3[p] = fma(f3, gv, gv3[p]);
                }
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
    let vw = launch::vector_width(&[d]);
    let rows = b * h * t;
    let delta = Tensor::uninit(dev, &[b, h, t], DType::F32)?;
    let dq = Tensor::uninit(dev, q.shape(), q.dtype())?;
    let dk = Tensor::uninit(dev, k.shape(), k.dtype())?;
    let dv = Tensor::uninit(dev, v.shape(), v.dtype())?;
    let [blocks, keep, segments] = mask_buffers(mask, lse);
    let (window, flags) = (mask.window.unwrap_or(0), MaskFlags::of(mask));
    let (count, dim) = launch::grid_1d(dev, rows);
    dispatch_float!(q.dtype(), F => unsafe {
        delta_kernel::launch_unchecked::<F>(dev.client(), count, dim, vw, buf(out), buf(dout), buf(&delta), rows, d / vw)
    });
    let (count, dim) = launch::grid_1d(dev, b * h * t.div_ceil(4));
    dispatch_float!(q.dtype(), F => unsafe {
        flash_dq_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, vw,
            buf(q), buf(k), buf(v), buf(dout), buf(lse), buf(&delta), buf(&dq),
            buf(blocks), buf(keep), buf(segments),
            b, h, h / hkv, t, s, mask.q_offset, window, scale, d / vw, flags,
        )
    });
    let (count, dim) = launch::grid_1d(dev, b * hkv * s.div_ceil(4));
    dispatch_float!(q.dtype(), F => unsafe {
        flash_dkdv_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, vw,
            buf(q), buf(k), buf(v), buf(dout), buf(lse), buf(&delta), buf(&dk), buf(&dv),
            buf(blocks), buf(keep), buf(segments),
            b, hkv, h / hkv, t, s, mask.q_offset, window, scale, d / vw, flags,
        )
    });
    Ok(AttentionGrads { q: dq, k: dk, v: dv })
}
