//! Normalization over the last axis, forward and backward side by side ([`NormKind`]): Gemma's
//! RMSNorm `x * rsqrt(mean(x²) + eps) * (1 + w)` (Gemma 1-3; also used per head for q/k norm, with
//! C = head_dim), the plain RMSNorm `x * rsqrt(mean(x²) + eps) * w` (Gemma 4, Llama and most
//! families) and SigLIP's LayerNorm `(x - mean) * rstd * w + b`. Statistics in f32. A unit owns whole rows on the
//! CPU, a row is shared by up to 256 units of a cube on GPUs (`rows.rs`);
//! the weight gradients, when asked for (a frozen norm skips them), are a second, column-parallel
//! pass (deterministic, no atomics), reading the per-row statistics the backward recomputes.
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_kernels::norm;
//! let dev = Device::cpu().unwrap();
//! let x = Tensor::from_f32(&dev, &[3., 4.], &[1, 2], DType::F32).unwrap();
//! let w = Tensor::from_f32(&dev, &[0., 1.], &[2], DType::F32).unwrap();
//! let r = (12.5f32).sqrt(); // rms of [3, 4]
//! // Gemma's: scale 1 + w.
//! let y = norm::gemma_rms_norm(&x, &w, 0.0).unwrap().to_f32_vec().unwrap();
//! assert!((y[0] - 3. / r).abs() < 1e-6 && (y[1] - 8. / r).abs() < 1e-6);
//! // The plain one: scale w.
//! let y = norm::rms_norm(&x, &w, 0.0).unwrap().to_f32_vec().unwrap();
//! assert!(y[0].abs() < 1e-6 && (y[1] - 4. / r).abs() < 1e-6);
//! let dy = Tensor::full(&dev, &[1, 2], 1.0, DType::F32).unwrap();
//! let g = norm::gemma_rms_norm_backward(&x, &w, &dy, 0.0, true).unwrap();
//! assert_eq!((g.x.shape(), g.weight.unwrap().shape()), (&[1, 2][..], &[2][..]));
//! // A frozen weight: the input's gradient only.
//! assert!(norm::gemma_rms_norm_backward(&x, &w, &dy, 0.0, false).unwrap().weight.is_none());
//! ```

pub mod reference;

use crate::rows::{RowSplit, cube_first_row, row_lane, row_offset, row_step, row_sum};
use cubecl::prelude::*;
use lapidary_core::{DType, Error, Result, Tensor, launch};

/// The sum of a vector's lanes, in four interleaved partial sums (lanes `l`, `l + 4`, …) added
/// at the end: a chain of a quarter of the lanes instead of all of them, so that the sums of
/// several vectors (a tile's dot products) overlap.
#[cube]
pub(crate) fn hsum<N: Size>(v: Vector<f32, N>) -> f32 {
    let mut s0 = 0.0f32;
    let mut s1 = 0.0f32;
    let mut s2 = 0.0f32;
    let mut s3 = 0.0f32;
    #[unroll]
    for l in 0..N::value() {
        if l % 4 == 0 {
            s0 += v.extract(l);
        } else if l % 4 == 1 {
            s1 += v.extract(l);
        } else if l % 4 == 2 {
            s2 += v.extract(l);
        } else {
            s3 += v.extract(l);
        }
    }
    (s0 + s1) + (s2 + s3)
}

/// Mean of one row (0 for RMSNorm, which does not center), the row's `lane`-th share of vectors
/// summed by this unit (none when `active` is false) and reduced over the row's units.
#[cube]
#[allow(clippy::too_many_arguments)]
fn row_mean<F: Float, N: Size>(
    x: &[Vector<F, N>],
    base: usize,
    cols_vec: usize,
    cols: f32,
    active: bool,
    lane: usize,
    scratch: &mut [f32],
    #[comptime] center: bool,
    #[comptime] split: RowSplit,
) -> f32 {
    let mut mean = 0.0f32;
    if center {
        let mut s = Vector::<f32, N>::new(0.0f32);
        if active {
            let mut j = lane;
            while j < cols_vec {
                s += Vector::<f32, N>::cast_from(x[base + j]);
                j += comptime!(split.units);
            }
        }
        mean = row_sum(hsum(s), scratch, split) / cols;
    }
    mean
}

/// `1 / sqrt(mean((x - mean)²) + eps)` of one row, shared out as [`row_mean`] is.
#[cube]
#[allow(clippy::too_many_arguments)]
fn row_rstd<F: Float, N: Size>(
    x: &[Vector<F, N>],
    base: usize,
    cols_vec: usize,
    cols: f32,
    mean: Vector<f32, N>,
    eps: f32,
    active: bool,
    lane: usize,
    scratch: &mut [f32],
    #[comptime] split: RowSplit,
) -> f32 {
    let mut ss = Vector::<f32, N>::new(0.0f32);
    if active {
        let mut j = lane;
        while j < cols_vec {
            let d = Vector::<f32, N>::cast_from(x[base + j]) - mean;
            ss = fma(d, d, ss);
            j += comptime!(split.units);
        }
    }
    1.0f32 / f32::sqrt(row_sum(hsum(ss), scratch, split) / cols + eps)
}

/// `(mean, rstd)` of one row: [`row_mean`] then [`row_rstd`].
#[cube]
#[allow(clippy::too_many_arguments)]
fn row_stats<F: Float, N: Size>(
    x: &[Vector<F, N>],
    base: usize,
    cols_vec: usize,
    cols: f32,
    eps: f32,
    active: bool,
    lane: usize,
    scratch: &mut [f32],
    #[comptime] center: bool,
    #[comptime] split: RowSplit,
) -> (f32, f32) {
    let mean = row_mean(x, base, cols_vec, cols, active, lane, scratch, center, split);
    let rstd = row_rstd(x, base, cols_vec, cols, Vector::<f32, N>::new(mean), eps, active, lane, scratch, split);
    (mean, rstd)
}

/// Which normalization a kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// Gemma's RMSNorm (Gemma 1-3): `x * rsqrt(mean(x²) + eps) * (1 + w)`.
    GemmaRms,
    /// RMSNorm: `x * rsqrt(mean(x²) + eps) * w` (Gemma 4, Llama, ...).
    Rms,
    /// LayerNorm: `(x - mean) * rsqrt(var + eps) * w + b`.
    Layer,
}

impl NormKind {
    /// Whether rows are centred (their mean subtracted) and a bias added: LayerNorm.
    pub fn centered(self) -> bool {
        self == NormKind::Layer
    }

    /// Whether the scale is `1 + w` rather than `w`: Gemma's RMSNorm.
    pub fn weight_offset(self) -> bool {
        self == NormKind::GemmaRms
    }
}

/// The effective weight of column vector `j`: `1 + w` with `offset` (Gemma's RMSNorm), else `w`.
#[cube]
fn weight_at<F: Float, N: Size>(w: &[Vector<F, N>], j: usize, #[comptime] offset: bool) -> Vector<f32, N> {
    let mut wv = Vector::<f32, N>::cast_from(w[j]);
    if offset {
        wv += Vector::new(1.0f32);
    }
    wv
}

/// Forward of every [`NormKind`]: `layer_norm` centres and adds the bias, `one_plus_w` scales by
/// `1 + w`. Rows laid over units as `split` says (`rows.rs`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn norm_forward_kernel<F: Float, N: Size>(
    x: &[Vector<F, N>],
    w: &[Vector<F, N>],
    b: &[Vector<F, N>],
    y: &mut [Vector<F, N>],
    rows: usize,
    cols_vec: usize,
    cols: f32,
    eps: f32,
    #[comptime] layer_norm: bool,
    #[comptime] one_plus_w: bool,
    #[comptime] split: RowSplit,
) {
    let mut scratch = Shared::<[f32]>::new_slice(comptime!(split.scratch_len()));
    let offset = row_offset(split);
    let step = row_step(split);
    let lane = row_lane(split);
    let mut cube_row = cube_first_row(split);
    while cube_row < rows {
        let r = cube_row + offset;
        let active = r < rows;
        let base = r * cols_vec;
        let (mean, rstd_s) = row_stats(x, base, cols_vec, cols, eps, active, lane, &mut scratch, layer_norm, split);
        let mv = Vector::<f32, N>::new(mean);
        let rstd = Vector::<f32, N>::new(rstd_s);
        if active {
            let mut j = lane;
            while j < cols_vec {
                let xhat = (Vector::<f32, N>::cast_from(x[base + j]) - mv) * rstd;
                let mut out = xhat * weight_at(w, j, one_plus_w);
                if layer_norm {
                    out += Vector::<f32, N>::cast_from(b[j]);
                }
                y[base + j] = Vector::cast_from(out);
                j += comptime!(split.units);
            }
        }
        cube_row += step;
    }
}

/// Backward, pass 1 (row-parallel): dx, and each row's mean and rstd for pass 2.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn norm_backward_rows_kernel<F: Float, N: Size>(
    x: &[Vector<F, N>],
    w: &[Vector<F, N>],
    dy: &[Vector<F, N>],
    dx: &mut [Vector<F, N>],
    stats: &mut [f32],
    rows: usize,
    cols_vec: usize,
    cols: f32,
    eps: f32,
    #[comptime] layer_norm: bool,
    #[comptime] one_plus_w: bool,
    #[comptime] split: RowSplit,
) {
    let mut scratch = Shared::<[f32]>::new_slice(comptime!(split.scratch_len()));
    let offset = row_offset(split);
    let step = row_step(split);
    let lane = row_lane(split);
    let mut cube_row = cube_first_row(split);
    while cube_row < rows {
        let r = cube_row + offset;
        let active = r < rows;
        let base = r * cols_vec;
        let (mean, rstd_s) = row_stats(x, base, cols_vec, cols, eps, active, lane, &mut scratch, layer_norm, split);
        let mv = Vector::<f32, N>::new(mean);
        let rstd = Vector::<f32, N>::new(rstd_s);
        // g = dy * w_eff; need mean(g) (LayerNorm only) and mean(g * xhat).
        let mut sg = Vector::<f32, N>::new(0.0f32);
        let mut sgx = Vector::<f32, N>::new(0.0f32);
        if active {
            let mut j = lane;
            while j < cols_vec {
                let xhat = (Vector::<f32, N>::cast_from(x[base + j]) - mv) * rstd;
                let g = Vector::<f32, N>::cast_from(dy[base + j]) * weight_at(w, j, one_plus_w);
                sg += g;
                sgx = fma(g, xhat, sgx);
                j += comptime!(split.units);
            }
        }
        let mut mean_g_s = 0.0f32;
        if layer_norm {
            mean_g_s = row_sum(hsum(sg), &mut scratch, split) / cols;
        }
        let mean_g = Vector::<f32, N>::new(mean_g_s);
        let mean_gx = Vector::<f32, N>::new(row_sum(hsum(sgx), &mut scratch, split) / cols);
        if active {
            let mut j = lane;
            while j < cols_vec {
                let xhat = (Vector::<f32, N>::cast_from(x[base + j]) - mv) * rstd;
                let g = Vector::<f32, N>::cast_from(dy[base + j]) * weight_at(w, j, one_plus_w);
                dx[base + j] = Vector::cast_from(rstd * (g - mean_g - xhat * mean_gx));
                j += comptime!(split.units);
            }
            if lane == 0 {
                stats[2 * r] = mean;
                stats[2 * r + 1] = rstd_s;
            }
        }
        cube_row += step;
    }
}

/// Backward, pass 2 (column-parallel): dw = Σ_rows dy · xhat, db = Σ_rows dy.
#[cube(launch_unchecked)]
fn norm_backward_cols_kernel<F: Float>(
    x: &[F],
    dy: &[F],
    stats: &[f32],
    dw: &mut [F],
    db: &mut [F],
    rows: usize,
    cols: usize,
    #[comptime] layer_norm: bool,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut c = ABSOLUTE_POS;
    while c < cols {
        let mut sw = 0.0f32;
        let mut sb = 0.0f32;
        for r in 0..rows {
            let g = f32::cast_from(dy[r * cols + c]);
            let xhat = (f32::cast_from(x[r * cols + c]) - stats[2 * r]) * stats[2 * r + 1];
            sw += g * xhat;
            sb += g;
        }
        dw[c] = F::cast_from(sw);
        if layer_norm {
            db[c] = F::cast_from(sb);
        }
        c += stride;
    }
}

fn check(op: &str, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<usize> {
    if x.rank() == 0 {
        return Err(Error::shape(format!("{op}: x"), "[..., C]", x.shape()));
    }
    let c = x.dim(-1);
    w.expect_shape(&format!("{op}: weight"), &[c])?;
    if let Some(b) = b {
        b.expect_shape(&format!("{op}: bias"), &[c])?;
    }
    for (name, t) in [("weight", w)].into_iter().chain(b.map(|b| ("bias", b))) {
        if t.dtype() != x.dtype() {
            return Err(Error::DType {
                context: format!("{op}: {name}"),
                expected: format!("{} (as x)", x.dtype()),
                got: t.dtype(),
            });
        }
    }
    Ok(c)
}

fn forward(op: &str, x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f32, kind: NormKind) -> Result<Tensor> {
    let c = check(op, x, w, b)?;
    let rows = x.numel() / c.max(1);
    let y = Tensor::uninit(x.device(), x.shape(), x.dtype())?;
    let vw = launch::vector_width(&[c]);
    let (split, count, dim) = RowSplit::for_rows(x.device(), rows, c / vw.max(1));
    let bh = b.unwrap_or(w);
    dispatch_float!(x.dtype(), F => unsafe {
        norm_forward_kernel::launch_unchecked::<F>(
            x.device().client(), count, dim, vw,
            BufferArg::from_raw_parts(x.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(w.handle().clone(), c),
            BufferArg::from_raw_parts(bh.handle().clone(), c),
            BufferArg::from_raw_parts(y.handle().clone(), x.numel()),
            rows, c / vw, c as f32, eps, kind.centered(), kind.weight_offset(), split,
        )
    });
    Ok(y)
}

/// Gradients of a norm: input, weight and (LayerNorm only) bias.
#[derive(Debug)]
pub struct NormGrads {
    /// Gradient of the input, shape of `x`.
    pub x: Tensor,
    /// Gradient of the weight, `[C]` (when asked for).
    pub weight: Option<Tensor>,
    /// Gradient of the bias, `[C]` (LayerNorm only, when asked for).
    pub bias: Option<Tensor>,
}

fn backward(
    op: &str,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    eps: f32,
    kind: NormKind,
    params: bool,
) -> Result<NormGrads> {
    let layer_norm = kind.centered();
    let c = check(op, x, w, None)?;
    dy.expect_shape(&format!("{op}: dy"), x.shape())?;
    let rows = x.numel() / c.max(1);
    let dev = x.device();
    let dx = Tensor::uninit(dev, x.shape(), x.dtype())?;
    let stats = Tensor::uninit(dev, &[rows, 2], DType::F32)?;
    let dw = Tensor::uninit(dev, &[c], x.dtype())?;
    let db = if layer_norm { Tensor::uninit(dev, &[c], x.dtype())? } else { dw.clone() };
    let vw = launch::vector_width(&[c]);
    let (split, count, dim) = RowSplit::for_rows(dev, rows, c / vw.max(1));
    let (ccount, cdim) = launch::grid_1d(dev, c);
    dispatch_float!(x.dtype(), F => unsafe {
        norm_backward_rows_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, vw,
            BufferArg::from_raw_parts(x.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(w.handle().clone(), c),
            BufferArg::from_raw_parts(dy.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(dx.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(stats.handle().clone(), rows * 2),
            rows, c / vw, c as f32, eps, layer_norm, kind.weight_offset(), split,
        )
    });
    if !params {
        return Ok(NormGrads { x: dx, weight: None, bias: None });
    }
    dispatch_float!(x.dtype(), F => unsafe {
        norm_backward_cols_kernel::launch_unchecked::<F>(
            dev.client(), ccount, cdim,
            BufferArg::from_raw_parts(x.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(dy.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(stats.handle().clone(), rows * 2),
            BufferArg::from_raw_parts(dw.handle().clone(), c),
            BufferArg::from_raw_parts(db.handle().clone(), c),
            rows, c, layer_norm,
        )
    });
    Ok(NormGrads { x: dx, weight: Some(dw), bias: layer_norm.then_some(db) })
}

/// Gemma's RMSNorm over the last axis: `x * rsqrt(mean(x²) + eps) * (1 + weight)`,
/// `weight: [C]`. For q/k norm pass `x` as `[..., heads, head_dim]` and a `[head_dim]` weight.
pub fn gemma_rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    forward("gemma_rms_norm", x, weight, None, eps, NormKind::GemmaRms)
}

/// Backward of [`gemma_rms_norm`] (statistics recomputed from `x`); the weight's gradient only
/// when `params` asks for it.
pub fn gemma_rms_norm_backward(x: &Tensor, weight: &Tensor, dy: &Tensor, eps: f32, params: bool) -> Result<NormGrads> {
    backward("gemma_rms_norm_backward", x, weight, dy, eps, NormKind::GemmaRms, params)
}

/// RMSNorm over the last axis: `x * rsqrt(mean(x²) + eps) * weight`, `weight: [C]` (a weightless
/// norm passes ones).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    forward("rms_norm", x, weight, None, eps, NormKind::Rms)
}

/// Backward of [`rms_norm`] (statistics recomputed from `x`); the weight's gradient only when
/// `params` asks for it.
pub fn rms_norm_backward(x: &Tensor, weight: &Tensor, dy: &Tensor, eps: f32, params: bool) -> Result<NormGrads> {
    backward("rms_norm_backward", x, weight, dy, eps, NormKind::Rms, params)
}

/// LayerNorm over the last axis: `(x - mean) * rsqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    forward("layer_norm", x, weight, Some(bias), eps, NormKind::Layer)
}

/// Backward of [`layer_norm`] (statistics recomputed from `x`); the weight's and bias's
/// gradients only when `params` asks for them.
pub fn layer_norm_backward(x: &Tensor, weight: &Tensor, dy: &Tensor, eps: f32, params: bool) -> Result<NormGrads> {
    backward("layer_norm_backward", x, weight, dy, eps, NormKind::Layer, params)
}

#[cfg(test)]
mod tests {
    use super::NormKind;
    use super::reference as r;
    use crate::test_util::*;
    use lapidary_core::DType;
    use lapidary_testkit::Tol;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_util::cases(24))]
        #[test]
        fn norms_match_reference(rows in 1usize..20, c in 1usize..70, seed in any::<u64>(), dt in dtype_strategy(), kind in prop_oneof![Just(NormKind::GemmaRms), Just(NormKind::Rms), Just(NormKind::Layer)], split in crate::rows::split_strategy()) {
            crate::rows::force_split(split);
            let dev = device();
            let eps = 1e-6f32;
            let x = random_tensor(&dev, &[rows, c], dt, seed, 2.0);
            let w = random_tensor(&dev, &[c], dt, seed ^ 3, 1.0);
            let b = random_tensor(&dev, &[c], dt, seed ^ 5, 1.0);
            let dy = random_tensor(&dev, &[rows, c], dt, seed ^ 7, 1.0);
            let (xh, wh, bh, dyh) = (x.to_f32_vec().unwrap(), w.to_f32_vec().unwrap(), b.to_f32_vec().unwrap(), dy.to_f32_vec().unwrap());
            let ln = kind == NormKind::Layer;
            let want = r::norm(&xh, &wh, &bh, c, eps, kind);
            let backward = |params| match kind {
                NormKind::GemmaRms => super::gemma_rms_norm_backward(&x, &w, &dy, eps, params),
                NormKind::Rms => super::rms_norm_backward(&x, &w, &dy, eps, params),
                NormKind::Layer => super::layer_norm_backward(&x, &w, &dy, eps, params),
            };
            let y = match kind {
                NormKind::GemmaRms => super::gemma_rms_norm(&x, &w, eps),
                NormKind::Rms => super::rms_norm(&x, &w, eps),
                NormKind::Layer => super::layer_norm(&x, &w, &b, eps),
            }.unwrap();
            let g = backward(true).unwrap();
            // Without the parameters' gradients: the same input gradient, nothing else.
            let g_x = backward(false).unwrap();
            prop_assert!(g_x.weight.is_none() && g_x.bias.is_none());
            prop_assert_eq!(g_x.x.to_f32_vec().unwrap(), g.x.to_f32_vec().unwrap());
            // Normalized values can reach sqrt(C); gradients sum C or `rows` terms.
            let t = dt.tol();
            let tol = Tol { abs: t.abs * 4.0, rel: t.rel * 2.0 };
            assert_close("norm forward", &y.to_f32_vec().unwrap(), &want, tol);
            let (dx, dw, db) = r::norm_backward(&xh, &wh, &dyh, c, eps, kind);
            let tg = Tol { abs: t.abs * 4.0 * (c.max(rows) as f64).sqrt(), rel: t.rel * 4.0 };
            assert_close("norm dx", &g.x.to_f32_vec().unwrap(), &dx, tg);
            assert_close("norm dweight", &g.weight.unwrap().to_f32_vec().unwrap(), &dw, tg);
            if ln {
                assert_close("norm dbias", &g.bias.unwrap().to_f32_vec().unwrap(), &db, tg);
            } else {
                prop_assert!(g.bias.is_none());
            }
        }
    }

    #[test]
    fn backward_reference_matches_finite_differences() {
        let (c, rows) = (7, 3);
        let x = lapidary_testkit::random_values(rows * c, 1, 2.0);
        let w = lapidary_testkit::random_values(c, 2, 1.0);
        let b = lapidary_testkit::random_values(c, 3, 1.0);
        let dy = lapidary_testkit::random_values(rows * c, 4, 1.0);
        for kind in [NormKind::GemmaRms, NormKind::Rms, NormKind::Layer] {
            let ln = kind;
            let loss = |x: &[f32], w: &[f32]| -> f64 {
                r::norm(x, w, &b, c, 1e-6, kind).iter().zip(&dy).map(|(y, g)| *y as f64 * *g as f64).sum()
            };
            let (dx, dw, _) = r::norm_backward(&x, &w, &dy, c, 1e-6, kind);
            let h = 1e-2f32;
            for i in 0..x.len() {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += h;
                xm[i] -= h;
                let num = (loss(&xp, &w) - loss(&xm, &w)) / (2.0 * h as f64);
                assert!((num - dx[i] as f64).abs() < 2e-3, "{ln:?} dx[{i}]: {} vs {num}", dx[i]);
            }
            for i in 0..c {
                let (mut wp, mut wm) = (w.clone(), w.clone());
                wp[i] += h;
                wm[i] -= h;
                let num = (loss(&x, &wp) - loss(&x, &wm)) / (2.0 * h as f64);
                assert!((num - dw[i] as f64).abs() < 2e-3, "{ln:?} dw[{i}]: {} vs {num}", dw[i]);
            }
        }
    }

    #[test]
    fn weight_shape_error_names_it() {
        let dev = device();
        let x = random_tensor(&dev, &[2, 8], DType::F32, 1, 1.0);
        let w = random_tensor(&dev, &[4], DType::F32, 2, 1.0);
        let e = super::rms_norm(&x, &w, 1e-6).unwrap_err().to_string();
        assert!(e.contains("rms_norm: weight") && e.contains("[8]") && e.contains("[4]"), "{e}");
        let e = super::gemma_rms_norm(&x, &w, 1e-6).unwrap_err().to_string();
        assert!(e.contains("gemma_rms_norm: weight"), "{e}");
    }
}
