//! Host references for the elementwise kernels, in f64, used by the tests and by anyone who wants
//! to check a result. Slow on purpose: clarity over speed.

/// gelu_tanh of one value in f64.
pub fn gelu_tanh_f64(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// gelu_tanh of every element.
pub fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| gelu_tanh_f64(v as f64) as f32).collect()
}

/// `gelu_tanh'(x) * dy`, elementwise.
pub fn gelu_tanh_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    x.iter()
        .zip(dy)
        .map(|(&x, &g)| {
            let x = x as f64;
            let t = (c * (x + 0.044715 * x * x * x)).tanh();
            let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
            (d * g as f64) as f32
        })
        .collect()
}

/// `f(a, b)` with `b` repeated over `a` (its shape a suffix of `a`'s).
pub fn broadcast(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    a.iter().enumerate().map(|(i, &x)| f(x, b[i % b.len()])).collect()
}

/// Sums `g` over repeats of a block of `len` values: the gradient of a broadcast operand.
pub fn sum_to(g: &[f32], len: usize) -> Vec<f32> {
    let mut out = vec![0f64; len];
    for (i, &v) in g.iter().enumerate() {
        out[i % len] += v as f64;
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// GeGLU forward and backward: `(gelu(g) * u, d/dg, d/du)` for upstream `dy`.
pub fn geglu(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let act = gelu_tanh(g);
    let dact = gelu_tanh_backward(g, &vec![1.0; g.len()]);
    let y = act.iter().zip(u).map(|(a, u)| a * u).collect();
    let dg = dact.iter().zip(u).zip(dy).map(|((d, u), dy)| (*d as f64 * *u as f64 * *dy as f64) as f32).collect();
    let du = act.iter().zip(dy).map(|(a, dy)| a * dy).collect();
    (y, dg, du)
}

/// `torch.clamp(x, lo, hi)`: NaN kept.
pub fn clamp(x: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    x.iter()
        .map(|&v| {
            if v < lo {
                lo
            } else if v > hi {
                hi
            } else {
                v
            }
        })
        .collect()
}

/// Its gradient: `dy` where `lo <= x <= hi` (bounds included), 0 elsewhere and at NaN.
pub fn clamp_backward(x: &[f32], dy: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    x.iter().zip(dy).map(|(&v, &g)| if v >= lo && v <= hi { g } else { 0.0 }).collect()
}

/// `cap * tanh(x / cap)`, in f64.
pub fn softcap(x: &[f32], cap: f32) -> Vec<f32> {
    x.iter().map(|&v| ((v as f64 / cap as f64).tanh() * cap as f64) as f32).collect()
}

/// Its gradient from the output `y`: `dy * (1 - (y / cap)^2)`, in f64.
pub fn softcap_backward(y: &[f32], dy: &[f32], cap: f32) -> Vec<f32> {
    y.iter().zip(dy).map(|(&y, &g)| (g as f64 * (1.0 - (y as f64 / cap as f64).powi(2))) as f32).collect()
}
