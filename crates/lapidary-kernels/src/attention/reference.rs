//! Host reference for masked grouped-query attention, forward and backward, in f64.

use super::AttentionMask;

/// Sizes of an attention problem.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Batch.
    pub b: usize,
    /// Query heads.
    pub h: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Queries.
    pub t: usize,
    /// Keys.
    pub s: usize,
    /// Head dim.
    pub d: usize,
}

/// Attention probabilities `[B, H, T, S]` (f64) for host copies of q and k.
#[allow(clippy::too_many_arguments)]
pub fn probs(
    q: &[f32],
    k: &[f32],
    dims: Dims,
    scale: f32,
    mask: &AttentionMask,
    blocks: Option<&[f32]>,
    keep: Option<&[f32]>,
    segments: Option<&[f32]>,
) -> Vec<f64> {
    let Dims { b, h, hkv, t, s, d } = dims;
    let g = h / hkv;
    let mut p = vec![0f64; b * h * t * s];
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                let qpos = ti + mask.q_offset;
                let row = &mut p[((bi * h + hi) * t + ti) * s..][..s];
                let allowed: Vec<bool> =
                    (0..s).map(|ki| mask.allows(blocks, keep, segments, s, bi, qpos, ki)).collect();
                if !allowed.iter().any(|&a| a) {
                    // No visible key: zero probabilities (torch SDPA semantics).
                    row.iter_mut().for_each(|x| *x = 0.0);
                    continue;
                }
                let sc: Vec<f64> = (0..s)
                    .map(|ki| {
                        let qv = &q[((bi * h + hi) * t + ti) * d..][..d];
                        let kv = &k[((bi * hkv + hi / g) * s + ki) * d..][..d];
                        scale as f64 * qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
                    })
                    .collect();
                let mx = (0..s).filter(|&i| allowed[i]).map(|i| sc[i]).fold(f64::MIN, f64::max);
                let z: f64 = (0..s).filter(|&i| allowed[i]).map(|i| (sc[i] - mx).exp()).sum();
                for i in 0..s {
                    row[i] = if allowed[i] { (sc[i] - mx).exp() / z } else { 0.0 };
                }
            }
        }
    }
    p
}

/// Attention output `[B, H, T, D]`.
pub fn forward(p: &[f64], v: &[f32], dims: Dims) -> Vec<f32> {
    let Dims { b, h, hkv, t, s, d } = dims;
    let g = h / hkv;
    let mut o = vec![0f32; b * h * t * d];
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                for di in 0..d {
                    let mut acc = 0f64;
                    for ki in 0..s {
                        acc += p[((bi * h + hi) * t + ti) * s + ki] * v[((bi * hkv + hi / g) * s + ki) * d + di] as f64;
                    }
                    o[((bi * h + hi) * t + ti) * d + di] = acc as f32;
                }
            }
        }
    }
    o
}

/// Gradients `(dq, dk, dv)` for upstream `dout`.
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f64],
    dout: &[f32],
    dims: Dims,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { b, h, hkv, t, s, d } = dims;
    let g = h / hkv;
    let mut dq = vec![0f64; q.len()];
    let mut dk = vec![0f64; k.len()];
    let mut dv = vec![0f64; v.len()];
    for bi in 0..b {
        for hi in 0..h {
            let kvh = bi * hkv + hi / g;
            for ti in 0..t {
                let qrow = ((bi * h + hi) * t + ti) * d;
                let prow = ((bi * h + hi) * t + ti) * s;
                let dp: Vec<f64> = (0..s)
                    .map(|ki| (0..d).map(|di| dout[qrow + di] as f64 * v[(kvh * s + ki) * d + di] as f64).sum())
                    .collect();
                let dot: f64 = (0..s).map(|ki| p[prow + ki] * dp[ki]).sum();
                for ki in 0..s {
                    let pk = p[prow + ki];
                    let ds = pk * (dp[ki] - dot) * scale as f64;
                    for di in 0..d {
                        dv[(kvh * s + ki) * d + di] += pk * dout[qrow + di] as f64;
                        dq[qrow + di] += ds * k[(kvh * s + ki) * d + di] as f64;
                        dk[(kvh * s + ki) * d + di] += ds * q[qrow + di] as f64;
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (f(dq), f(dk), f(dv))
}
