//! Host reference of one AdamW step, written as PyTorch's single-tensor AdamW computes it (f64),
//! and of the step guard (f32, summed in order, as the kernel does).

use super::AdamWStep;

/// Updates `p`, `m`, `v` in place.
pub fn adamw_step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamWStep) {
    let (b1, b2) = (h.beta1 as f64, h.beta2 as f64);
    let bc1 = 1.0 - b1.powi(h.step as i32);
    let bc2 = 1.0 - b2.powi(h.step as i32);
    for i in 0..p.len() {
        let gi = g[i] as f64;
        let mut pi = p[i] as f64 * (1.0 - h.lr as f64 * h.weight_decay as f64);
        let mi = b1 * m[i] as f64 + (1.0 - b1) * gi;
        let vi = b2 * v[i] as f64 + (1.0 - b2) * gi * gi;
        pi -= h.lr as f64 / bc1 * mi / (vi.sqrt() / bc2.sqrt() + h.eps as f64);
        p[i] = pi as f32;
        m[i] = mi as f32;
        v[i] = vi as f32;
    }
}

/// The step guard's output for `sums` and `loss` (see `super::step_guard`); updates `halted`.
pub fn step_guard(sums: &[f32], loss: f32, halted: &mut bool, max_norm: f32) -> Vec<f32> {
    let total = sums.iter().fold(0f32, |t, &s| t + s);
    let norm = total.sqrt();
    let mut coef = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    if !loss.is_finite() || !norm.is_finite() || *halted {
        coef = -1.0;
        *halted = true;
    }
    let mut out = vec![coef, norm, loss];
    out.extend_from_slice(sums);
    out
}
