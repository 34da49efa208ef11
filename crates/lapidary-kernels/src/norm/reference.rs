//! Host references for RMSNorm (Gemma, `1 + w`) and LayerNorm, in f64.

/// Forward over rows of `c`: LayerNorm when `bias` is given, else Gemma RMSNorm.
pub fn norm(x: &[f32], w: &[f32], bias: Option<&[f32]>, c: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks(c).zip(y.chunks_mut(c)) {
        let (mean, rstd) = stats(xr, bias.is_some(), eps);
        for j in 0..c {
            let xhat = (xr[j] as f64 - mean) * rstd;
            yr[j] = match bias {
                Some(b) => xhat * w[j] as f64 + b[j] as f64,
                None => xhat * (1.0 + w[j] as f64),
            } as f32;
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

/// Backward: `(dx, dw, db)`; `db` is all zeros for RMSNorm.
pub fn norm_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    c: usize,
    eps: f32,
    layer_norm: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let mut dw = vec![0f64; c];
    let mut db = vec![0f64; c];
    for ((xr, gr), dxr) in x.chunks(c).zip(dy.chunks(c)).zip(dx.chunks_mut(c)) {
        let (mean, rstd) = stats(xr, layer_norm, eps);
        let xhat: Vec<f64> = xr.iter().map(|&v| (v as f64 - mean) * rstd).collect();
        let weff = |j: usize| {
            if layer_norm { w[j] as f64 } else { 1.0 + w[j] as f64 }
        };
        let g: Vec<f64> = (0..c).map(|j| gr[j] as f64 * weff(j)).collect();
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
