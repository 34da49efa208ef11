//! Host reference for token cross-entropy with ignore index -100, in f64.

/// `(loss sum, counted tokens, d loss_sum / d logits)` for row-major `[N, V]` logits.
pub fn cross_entropy(logits: &[f32], labels: &[i64], vocab: usize) -> (f32, usize, Vec<f32>) {
    let mut sum = 0f64;
    let mut count = 0;
    let mut grad = vec![0f32; logits.len()];
    for (r, &label) in labels.iter().enumerate() {
        if label < 0 {
            continue;
        }
        let row = &logits[r * vocab..(r + 1) * vocab];
        let mx = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
        let z: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
        let lse = mx + z.ln();
        sum += lse - row[label as usize] as f64;
        count += 1;
        for j in 0..vocab {
            let p = (row[j] as f64 - lse).exp();
            grad[r * vocab + j] = (p - if j == label as usize { 1.0 } else { 0.0 }) as f32;
        }
    }
    (sum as f32, count, grad)
}
