//! Index-driven ops: row gather (embeddings), row scatter (image features into the token
//! sequence), im2col (patch embedding) and the projector's average pool.

use super::upstream;
use crate::Var;
use lapidary_core::Result;
use lapidary_kernels::gather as ga;

/// Rows of `table: [V, C]` at `ids`.
pub fn gather_rows(table: &Var, ids: &[u32]) -> Result<Var> {
    let out = ga::gather_rows(table.value(), ids)?;
    let ids = ids.to_vec();
    let rows = table.shape()[0];
    table.tape().record1(
        &[table],
        out,
        Box::new(move |outs, _| Ok(vec![Some(ga::gather_rows_backward(&upstream(outs), &ids, rows)?)])),
    )
}

/// `dst: [N, C]` with row `rows[i]` replaced by `src[i]`.
pub fn scatter_rows(dst: &Var, src: &Var, rows: &[u32]) -> Result<Var> {
    let out = ga::scatter_rows(dst.value(), src.value(), rows)?;
    let rows = rows.to_vec();
    dst.tape().record1(
        &[dst, src],
        out,
        Box::new(move |outs, needs| {
            let (dd, ds) = ga::scatter_rows_backward(&upstream(outs), &rows)?;
            Ok(vec![needs[0].then_some(dd), needs[1].then_some(ds)])
        }),
    )
}

/// Non-overlapping patches of `[N, C, H, W]` pixels: `[N, P, C·p·p]`.
pub fn im2col(pixels: &Var, patch: usize) -> Result<Var> {
    let out = ga::im2col(pixels.value(), patch)?;
    let shape = pixels.shape().to_vec();
    pixels.tape().record1(
        &[pixels],
        out,
        Box::new(move |outs, _| Ok(vec![Some(ga::im2col_backward(&upstream(outs), &shape, patch)?)])),
    )
}

/// Average pool (kernel = stride = `k`) of a `[B, side², C]` token grid.
pub fn avg_pool(x: &Var, k: usize) -> Result<Var> {
    let out = ga::avg_pool(x.value(), k)?;
    let shape = x.shape().to_vec();
    x.tape().record1(
        &[x],
        out,
        Box::new(move |outs, _| Ok(vec![Some(ga::avg_pool_backward(&upstream(outs), &shape, k)?)])),
    )
}
