//! Host references for the reductions, accumulated in f64.

/// Column sums of a row-major `[rows, cols]` matrix.
pub fn sum_rows(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).map(|j| (0..rows).map(|r| x[r * cols + j] as f64).sum::<f64>() as f32).collect()
}

/// Row sums of a row-major `[rows, cols]` matrix.
pub fn sum_last(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows).map(|r| x[r * cols..(r + 1) * cols].iter().map(|&v| v as f64).sum::<f64>() as f32).collect()
}

/// Sum of squares.
pub fn sum_sq(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32
}
