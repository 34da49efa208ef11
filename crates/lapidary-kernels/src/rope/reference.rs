//! Host reference for rotate-half RoPE and its backward, in f64.

fn tab(i: usize, h: usize, t: usize, d: usize, tb: usize) -> usize {
    let dd = i % d;
    let ti = (i / d) % t;
    let bi = i / (d * t * h);
    ((if tb > 1 { bi } else { 0 }) * t + ti) * d + dd
}

/// `x * cos + rotate_half(x) * sin` for `[b, h, t, d]`, tables `[tb, t, d]`.
#[allow(clippy::too_many_arguments)]
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], _b: usize, h: usize, t: usize, d: usize, tb: usize) -> Vec<f32> {
    let half = d / 2;
    (0..x.len())
        .map(|i| {
            let j = tab(i, h, t, d, tb);
            let rot = if i % d < half { -(x[i + half] as f64) } else { x[i - half] as f64 };
            (x[i] as f64 * cos[j] as f64 + rot * sin[j] as f64) as f32
        })
        .collect()
}

/// The transpose of [`rope`] applied to `dy`.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward(
    dy: &[f32],
    cos: &[f32],
    sin: &[f32],
    _b: usize,
    h: usize,
    t: usize,
    d: usize,
    tb: usize,
) -> Vec<f32> {
    let half = d / 2;
    let mut dx = vec![0f64; dy.len()];
    for i in 0..dy.len() {
        let j = tab(i, h, t, d, tb);
        dx[i] += dy[i] as f64 * cos[j] as f64;
        // y_i gets rot_i * sin_i with rot_i = -x_{i+h} (i < h) or x_{i-h}.
        if i % d < half {
            dx[i + half] -= dy[i] as f64 * sin[j] as f64;
        } else {
            dx[i - half] += dy[i] as f64 * sin[j] as f64;
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}
