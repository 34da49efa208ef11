//! Index-driven data movement, forward and backward: row gather (embedding lookup) and its
//! deterministic scatter-add, the merge of image features into the token sequence at given rows,
//! the patch extraction of a non-overlapping convolution (im2col) and the projector's 2-D average
//! pool, and the join of two tensors along an axis (a KV cache growing on the device). Indices
//! come from the host (token ids and image positions are known there), so the
//! scatter-add is grouped by index on the host and needs no atomics.
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_kernels::gather;
//! let dev = Device::cpu().unwrap();
//! let table = Tensor::from_f32(&dev, &[1., 2., 3., 4., 5., 6.], &[3, 2], DType::F32).unwrap();
//! let e = gather::gather_rows(&table, &[2, 0, 2]).unwrap();
//! assert_eq!(e.to_f32_vec().unwrap(), vec![5., 6., 1., 2., 5., 6.]);
//! let g = gather::gather_rows_backward(&e, &[2, 0, 2], 3).unwrap();
//! assert_eq!(g.to_f32_vec().unwrap(), vec![1., 2., 0., 0., 10., 12.]);
//! ```

mod patches;
pub mod reference;

pub use patches::{avg_pool, avg_pool_backward, im2col, im2col_backward};

use cubecl::prelude::*;
use lapidary_core::{DType, Error, Result, Tensor, launch};

#[cube(launch_unchecked)]
fn gather_rows_kernel<F: Float>(table: &[F], idx: &[u32], out: &mut [F], cols: usize) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        let r = i / cols;
        out[i] = table[idx[r] as usize * cols + i % cols];
        i += stride;
    }
}

/// `out[idx[seg]] = Σ_{p in seg} src[order[p]]` for each segment of equal indices.
#[cube(launch_unchecked)]
fn segment_sum_kernel<F: Float>(
    src: &[F],
    order: &[u32],
    seg_start: &[u32],
    seg_row: &[u32],
    out: &mut [F],
    segments: usize,
    cols: usize,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < segments * cols {
        let s = i / cols;
        let c = i % cols;
        let mut acc = 0.0f32;
        for p in seg_start[s]..seg_start[s + 1] {
            acc += f32::cast_from(src[order[p as usize] as usize * cols + c]);
        }
        out[seg_row[s] as usize * cols + c] = F::cast_from(acc);
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn fill_kernel<F: Float>(out: &mut [F], value: f32) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        out[i] = F::cast_from(value);
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn copy_kernel<F: Float>(src: &[F], dst: &mut [F]) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < dst.len() {
        dst[i] = src[i];
        i += stride;
    }
}

/// Rows of `out` (`ia + ib` wide) made of a row of `a` (`ia` wide) then a row of `b` (`ib`).
#[cube(launch_unchecked)]
fn concat_kernel<F: Float>(a: &[F], b: &[F], out: &mut [F], ia: usize, ib: usize) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let width = ia + ib;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        let (o, j) = (i / width, i % width);
        if j < ia {
            out[i] = a[o * ia + j];
        } else {
            out[i] = b[o * ib + j - ia];
        }
        i += stride;
    }
}

/// `keep` = 1 copies `dst`, otherwise the row comes from `src[src_row]`.
#[cube(launch_unchecked)]
fn merge_rows_kernel<F: Float>(
    dst: &[F],
    src: &[F],
    src_row: &[u32],
    out: &mut [F],
    cols: usize,
    #[comptime] zero_instead: bool,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        let r = i / cols;
        let sr = src_row[r];
        if sr == 0 {
            out[i] = dst[i];
        } else if zero_instead {
            out[i] = F::cast_from(0.0f32);
        } else {
            out[i] = src[(sr as usize - 1) * cols + i % cols];
        }
        i += stride;
    }
}

fn upload_u32(dev: &lapidary_core::Device, v: &[u32]) -> Result<Tensor> {
    // u32 buffers travel as raw bytes in an F32-sized tensor (same width).
    let v = if v.is_empty() { &[0u32][..] } else { v };
    Tensor::from_bytes(dev, bytemuck::cast_slice(v), &[v.len()], DType::F32)
}

/// A tensor of `shape` filled with `value` by a kernel (no host upload).
pub fn fill(dev: &lapidary_core::Device, shape: &[usize], value: f32, dtype: DType) -> Result<Tensor> {
    let out = Tensor::uninit(dev, shape, dtype)?;
    let (count, dim) = launch::grid_1d(dev, out.numel());
    dispatch_float!(dtype, F => unsafe {
        fill_kernel::launch_unchecked::<F>(dev.client(), count, dim, BufferArg::from_raw_parts(out.handle().clone(), out.numel()), value)
    });
    Ok(out)
}

/// Copies `src` into `dst`'s buffer, in place (same shape and dtype): every tensor sharing
/// `dst`'s buffer sees the new values (restoring parameters from a checkpoint).
pub fn copy_into(dst: &Tensor, src: &Tensor) -> Result<()> {
    src.expect_shape("copy_into: src", dst.shape())?;
    src.expect_dtype("copy_into: src", &[dst.dtype()])?;
    let dev = dst.device();
    let n = dst.numel();
    if n == 0 {
        return Ok(());
    }
    let (count, dim) = launch::grid_1d(dev, n);
    dispatch_float!(dst.dtype(), F => unsafe {
        copy_kernel::launch_unchecked::<F>(
            dev.client(),
            count,
            dim,
            BufferArg::from_raw_parts(src.handle().clone(), n),
            BufferArg::from_raw_parts(dst.handle().clone(), n),
        )
    });
    Ok(())
}

/// `a` and `b` joined along `axis` (every other dim equal, same dtype and device), on the device:
/// e.g. a KV cache `[B, heads, T, D]` extended by this step's keys along `axis` 2.
pub fn concat(a: &Tensor, b: &Tensor, axis: usize) -> Result<Tensor> {
    let (sa, sb) = (a.shape(), b.shape());
    if axis >= sa.len() {
        return Err(Error::invalid(format!("concat: axis {axis} of a rank-{} tensor", sa.len())));
    }
    let mut expected = sa.to_vec();
    expected[axis] = sb.get(axis).copied().unwrap_or(0);
    b.expect_shape(&format!("concat: b (as a {sa:?} but along axis {axis})"), &expected)?;
    b.expect_dtype("concat: b", &[a.dtype()])?;
    if a.device() != b.device() {
        return Err(Error::Device(format!("concat: a on {}, b on {}", a.device(), b.device())));
    }
    let mut shape = sa.to_vec();
    shape[axis] += sb[axis];
    let dev = a.device();
    let out = Tensor::uninit(dev, &shape, a.dtype())?;
    let (ia, ib): (usize, usize) = (sa[axis..].iter().product(), sb[axis..].iter().product());
    if out.numel() == 0 {
        return Ok(out);
    }
    let (count, dim) = launch::grid_1d(dev, out.numel());
    dispatch_float!(a.dtype(), F => unsafe {
        concat_kernel::launch_unchecked::<F>(
            dev.client(), count, dim,
            BufferArg::from_raw_parts(a.handle().clone(), a.numel().max(1)),
            BufferArg::from_raw_parts(b.handle().clone(), b.numel().max(1)),
            BufferArg::from_raw_parts(out.handle().clone(), out.numel()),
            ia,
            ib,
        )
    });
    Ok(out)
}

/// Row gather: `out[i] = table[ids[i]]` for `table: [V, C]`; returns `[ids.len(), C]`.
/// An embedding lookup (ids of tokens), or picking rows of any matrix.
pub fn gather_rows(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    if table.rank() != 2 {
        return Err(Error::shape("gather_rows: table", "[V, C]", table.shape()));
    }
    let (v, c) = (table.dim(0), table.dim(1));
    if let Some((i, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= v) {
        return Err(Error::invalid(format!(
            "gather_rows: index {id} at position {i} is out of range for a table of {v} rows"
        )));
    }
    let dev = table.device();
    let out = Tensor::uninit(dev, &[ids.len(), c], table.dtype())?;
    if ids.is_empty() {
        return Ok(out);
    }
    let idx = upload_u32(dev, ids)?;
    let (count, dim) = launch::grid_1d(dev, out.numel());
    dispatch_float!(table.dtype(), F => unsafe {
        gather_rows_kernel::launch_unchecked::<F>(
            dev.client(), count, dim,
            BufferArg::from_raw_parts(table.handle().clone(), table.numel()),
            BufferArg::from_raw_parts(idx.handle().clone(), ids.len()),
            BufferArg::from_raw_parts(out.handle().clone(), out.numel()),
            c,
        )
    });
    Ok(out)
}

/// Backward of [`gather_rows`]: `[rows, C]` with `out[v] = Σ_{i: ids[i] = v} dy[i]` (zero for
/// rows never gathered). Deterministic: positions are grouped by index on the host.
pub fn gather_rows_backward(dy: &Tensor, ids: &[u32], rows: usize) -> Result<Tensor> {
    if dy.rank() != 2 || dy.dim(0) != ids.len() {
        return Err(Error::shape("gather_rows_backward: dy", format!("[{}, C]", ids.len()), dy.shape()));
    }
    let c = dy.dim(1);
    let dev = dy.device();
    let out = fill(dev, &[rows, c], 0.0, dy.dtype())?;
    if ids.is_empty() {
        return Ok(out);
    }
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&p| (ids[p as usize], p));
    let mut seg_start = vec![0u32];
    let mut seg_row = vec![];
    for (p, &o) in order.iter().enumerate() {
        let id = ids[o as usize];
        if seg_row.last() != Some(&id) {
            if p > 0 {
                seg_start.push(p as u32);
            }
            seg_row.push(id);
        }
    }
    seg_start.push(order.len() as u32);
    let segments = seg_row.len();
    let (order_t, start_t, row_t) =
        (upload_u32(dev, &order)?, upload_u32(dev, &seg_start)?, upload_u32(dev, &seg_row)?);
    let (count, dim) = launch::grid_1d(dev, segments * c);
    dispatch_float!(dy.dtype(), F => unsafe {
        segment_sum_kernel::launch_unchecked::<F>(
            dev.client(), count, dim,
            BufferArg::from_raw_parts(dy.handle().clone(), dy.numel()),
            BufferArg::from_raw_parts(order_t.handle().clone(), order.len()),
            BufferArg::from_raw_parts(start_t.handle().clone(), seg_start.len()),
            BufferArg::from_raw_parts(row_t.handle().clone(), segments),
            BufferArg::from_raw_parts(out.handle().clone(), out.numel()),
            segments, c,
        )
    });
    Ok(out)
}

fn row_map(op: &str, n: usize, m: usize, rows: &[u32]) -> Result<Vec<u32>> {
    if rows.len() != m {
        return Err(Error::invalid(format!("{op}: {m} source rows but {} target positions", rows.len())));
    }
    let mut map = vec![0u32; n];
    for (i, &r) in rows.iter().enumerate() {
        if r as usize >= n {
            return Err(Error::invalid(format!("{op}: target row {r} (source {i}) is out of range for {n} rows")));
        }
        if map[r as usize] != 0 {
            return Err(Error::invalid(format!("{op}: target row {r} appears twice")));
        }
        map[r as usize] = i as u32 + 1;
    }
    Ok(map)
}

fn merge(op: &str, dst: &Tensor, src: Option<&Tensor>, rows: &[u32]) -> Result<Tensor> {
    if dst.rank() != 2 {
        return Err(Error::shape(format!("{op}: dst"), "[N, C]", dst.shape()));
    }
    let (n, c) = (dst.dim(0), dst.dim(1));
    let m = src.map_or(rows.len(), |s| s.dim(0));
    if let Some(s) = src {
        if s.rank() != 2 || s.dim(1) != c {
            return Err(Error::shape(format!("{op}: src"), format!("[M, {c}]"), s.shape()));
        }
        if s.dtype() != dst.dtype() {
            return Err(Error::DType {
                context: format!("{op}: src"),
                expected: dst.dtype().to_string(),
                got: s.dtype(),
            });
        }
    }
    let map = row_map(op, n, m, rows)?;
    let dev = dst.device();
    let map_t = upload_u32(dev, &map)?;
    let out = Tensor::uninit(dev, dst.shape(), dst.dtype())?;
    let src_t = src.unwrap_or(dst);
    let (count, dim) = launch::grid_1d(dev, out.numel());
    dispatch_float!(dst.dtype(), F => unsafe {
        merge_rows_kernel::launch_unchecked::<F>(
            dev.client(), count, dim,
            BufferArg::from_raw_parts(dst.handle().clone(), dst.numel()),
            BufferArg::from_raw_parts(src_t.handle().clone(), src_t.numel()),
            BufferArg::from_raw_parts(map_t.handle().clone(), n),
            BufferArg::from_raw_parts(out.handle().clone(), out.numel()),
            c, src.is_none(),
        )
    });
    Ok(out)
}

/// `dst` (`[N, C]`) with row `rows[i]` replaced by `src[i]` (`src: [M, C]`, `rows` distinct):
/// image features placed at the image-token positions of the flattened token sequence.
pub fn scatter_rows(dst: &Tensor, src: &Tensor, rows: &[u32]) -> Result<Tensor> {
    merge("scatter_rows", dst, Some(src), rows)
}

/// Backward of [`scatter_rows`]: `(d dst, d src)` = (`dy` with the replaced rows zeroed, those
/// rows of `dy` gathered in `src` order).
pub fn scatter_rows_backward(dy: &Tensor, rows: &[u32]) -> Result<(Tensor, Tensor)> {
    let ddst = merge("scatter_rows_backward", dy, None, rows)?;
    let dsrc = gather_rows(dy, rows)?;
    Ok((ddst, dsrc))
}

#[cfg(test)]
mod tests;
