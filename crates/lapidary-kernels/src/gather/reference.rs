//! Host references for the gather/scatter ops, im2col and the projector's average pool.

/// Rows of `table` (`[v, c]`) at `ids`.
pub fn gather_rows(table: &[f32], c: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter().flat_map(|&i| table[i as usize * c..(i as usize + 1) * c].iter().copied()).collect()
}

/// `a` and `b` joined along an axis with `outer` = the product of the dims before it.
pub fn concat(a: &[f32], b: &[f32], outer: usize) -> Vec<f32> {
    let (ia, ib) = (a.len() / outer.max(1), b.len() / outer.max(1));
    let mut out = Vec::with_capacity(a.len() + b.len());
    for o in 0..outer {
        out.extend_from_slice(&a[o * ia..(o + 1) * ia]);
        out.extend_from_slice(&b[o * ib..(o + 1) * ib]);
    }
    out
}

/// Scatter-add of `dy` rows into `rows` rows at `ids`.
pub fn gather_rows_backward(dy: &[f32], c: usize, ids: &[u32], rows: usize) -> Vec<f32> {
    let mut out = vec![0f64; rows * c];
    for (p, &i) in ids.iter().enumerate() {
        for j in 0..c {
            out[i as usize * c + j] += dy[p * c + j] as f64;
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// `[n, ch, h, w]` -> `[n, P, ch*p*p]`, features ordered (channel, ky, kx).
pub fn im2col(px: &[f32], n: usize, ch: usize, h: usize, w: usize, p: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(px.len());
    for ni in 0..n {
        for gy in 0..h / p {
            for gx in 0..w / p {
                for c in 0..ch {
                    for ky in 0..p {
                        for kx in 0..p {
                            out.push(px[((ni * ch + c) * h + gy * p + ky) * w + gx * p + kx]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Channels-last average pool of a `[b, side², c]` grid with kernel = stride = `k`.
pub fn avg_pool(x: &[f32], b: usize, side: usize, c: usize, k: usize) -> Vec<f32> {
    let os = side / k;
    let mut out = vec![0f32; b * os * os * c];
    for bi in 0..b {
        for oy in 0..os {
            for ox in 0..os {
                for ci in 0..c {
                    let mut s = 0f64;
                    for ky in 0..k {
                        for kx in 0..k {
                            s += x[(bi * side * side + (oy * k + ky) * side + ox * k + kx) * c + ci] as f64;
                        }
                    }
                    out[(bi * os * os + oy * os + ox) * c + ci] = (s / (k * k) as f64) as f32;
                }
            }
        }
    }
    out
}
