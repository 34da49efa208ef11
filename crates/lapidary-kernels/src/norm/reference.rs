//! Host references for the norms of [`NormKind`] (Gemma's RMSNorm with `1 + w`, RMSNorm,
//! LayerNorm), in f64.

use super::NormKind;

/// The scale of column `j`.
fn scale(w: &[f32], j: usize, kind: NormKind) -> f64 {
    if kind.weight_offset() { 1.0 + w[j] as f64 } else { w[j] as f64 }
}

/// Forward over rows of `c`; `bias` is read by LayerNorm only.
pub fn norm(x: &[f32], w: &[f32], bias: &[f32], c: usize, eps: f32, kind: NormKind) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks(c).zip(y.chunks_mut(c)) {
        let (mean, rstd) = stats(xr, kind.centered(), eps);
        for j in 0..c {
            let xhat = (xr[j] as f64 - mean) * rstd;
            let b = if kind.centered() { bias[j] as f64 } else { 0.0 };
            yr[j] = (xhat * scale(w, j, kind) + b) as f32;
        }
    }
    y
}

fn stats(xr: &[f32], center: bool, eps: f32) -> (f64, f64) {
    let c = xr.len() as f64;
    let mean = if center { xr.iter().map(|&v| v as f64).sum::<f64>() / c } else { 0.0 };
    let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c;
    (mean, 1.0 / (var + eps as f64).sqrt())
}

/// Backward: `(dx, dw, db)`; `db` is all zeros for the RMSNorms.
pub fn norm_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    c: usize,
    eps: f32,
    kind: NormKind,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let layer_norm = kind.centered();
    let mut dx = vec![0f32; x.len()];
    let mut dw = vec![0f64; c];
    let mut db = vec![0f64; c];
    for ((xr, gr), dxr) in x.chunks(c).zip(dy.chunks(c)).zip(dx.chunks_mut(c)) {
        let (mean, rstd) = stats(xr, layer_norm, eps);
        let xhat: Vec<f64> = xr.iter().map(|&v| (v as f64 - mean) * rstd).collect();
        let g: Vec<f64> = (0..c).map(|j| gr[j] as f64 * scale(w, j, kind)).collect();
        let mean_g = if layer_norm { g.iter().sum::<f64>() / c as f64 } else { 0.0 };
        let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / c as f64;
        for j in 0..c {
            dxr[j] = (rstd * (g[j] - mean_g - xhat[j] * mean_gx)) as f32;
            dw[j] += gr[j] as f64 * xhat[j];
            db[j] += gr[j] as f64;
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (dx, f(dw), if layer_norm { f(db) } else { vec![0.0; c] })
}
