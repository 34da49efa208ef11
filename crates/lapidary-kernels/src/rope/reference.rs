//! Host reference for rotate-half RoPE (over the whole head or over equal parts of it) and its
//! backward, in f64.

fn tab(i: usize, h: usize, t: usize, d: usize, tb: usize) -> usize {
    let dd = i % d;
    let ti = (i / d) % t;
    let bi = i / (d * t * h);
    ((if tb > 1 { bi } else { 0 }) * t + ti) * d + dd
}

/// `x * cos + rotate_half(x) * sin` for `[b, h, t, d]`, tables `[tb, t, d]`.
#[allow(clippy::too_many_arguments)]
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], b: usize, h: usize, t: usize, d: usize, tb: usize) -> Vec<f32> {
    rope_parts(x, cos, sin, b, h, t, d, tb, 1)
}

/// The transpose of [`rope`] applied to `dy`.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward(
    dy: &[f32],
    cos: &[f32],
    sin: &[f32],
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    tb: usize,
) -> Vec<f32> {
    rope_parts_backward(dy, cos, sin, b, h, t, d, tb, 1)
}

/// Channel `i`'s partner in its part of width `d / parts`, and the sign of the partner's term:
/// `rotate_half` of the part puts `-x[i + half]` in its first half, `x[i - half]` in its second.
fn partner(i: usize, d: usize, parts: usize) -> (usize, f64) {
    let half = d / parts / 2;
    if (i % d) % (2 * half) < half { (i + half, -1.0) } else { (i - half, 1.0) }
}

/// [`rope`] over `parts` equal sections of each head, each rotated within itself.
#[allow(clippy::too_many_arguments)]
pub fn rope_parts(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    _b: usize,
    h: usize,
    t: usize,
    d: usize,
    tb: usize,
    parts: usize,
) -> Vec<f32> {
    (0..x.len())
        .map(|i| {
            let j = tab(i, h, t, d, tb);
            let (p, sign) = partner(i, d, parts);
            (x[i] as f64 * cos[j] as f64 + sign * x[p] as f64 * sin[j] as f64) as f32
        })
        .collect()
}

/// The transpose of [`rope_parts`] applied to `dy`.
#[allow(clippy::too_many_arguments)]
pub fn rope_parts_backward(
    dy: &[f32],
    cos: &[f32],
    sin: &[f32],
    _b: usize,
    h: usize,
    t: usize,
    d: usize,
    tb: usize,
    parts: usize,
) -> Vec<f32> {
    let mut dx = vec![0f64; dy.len()];
    for i in 0..dy.len() {
        let j = tab(i, h, t, d, tb);
        dx[i] += dy[i] as f64 * cos[j] as f64;
        // y_i holds sign · x_partner · sin_i.
        let (p, sign) = partner(i, d, parts);
        dx[p] += sign * dy[i] as f64 * sin[j] as f64;
    }
    dx.into_iter().map(|v| v as f32).collect()
}
