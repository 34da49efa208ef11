//! Host reference of one AdamW step, written as PyTorch's single-tensor AdamW computes it (f64).

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
