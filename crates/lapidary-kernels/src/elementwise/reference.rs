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
