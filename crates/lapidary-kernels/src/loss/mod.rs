//! Token cross-entropy over a vocabulary with ignore index -100, computed in f32 from f32 / bf16 /
//! f16 logits, forward and backward. The loss is returned as a sum with the count of counted
//! tokens, so a caller can normalize by the count of one batch or of several (gradient
//! accumulation divides by the total label count, not a mean of means).
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_kernels::loss;
//! let dev = Device::cpu().unwrap();
//! let logits = Tensor::from_f32(&dev, &[0., 0., 5., 1.], &[2, 2], DType::F32).unwrap();
//! let ce = loss::cross_entropy(&logits, &[1, -100]).unwrap();
//! assert_eq!(ce.count, 1);
//! let l = ce.loss_sum.to_f32_vec().unwrap()[0];
//! assert!((l - 2f32.ln()).abs() < 1e-6);
//! let d = loss::cross_entropy_backward(&logits, &ce, 1.0 / ce.count as f32).unwrap();
//! assert_eq!(d.to_f32_vec().unwrap(), vec![0.5, -0.5, 0.0, 0.0]);
//! ```

pub mod reference;

use crate::norm::hsum;
use crate::rows::{RowSplit, cube_first_row, row_lane, row_max, row_offset, row_step, row_sum};
use cubecl::prelude::*;
use lapidary_core::{DType, Error, Result, Tensor, launch};

/// Labels with this value are not counted.
pub const IGNORE_INDEX: i64 = -100;

/// Log-sum-exp of one row of `vocab_vec` vectors, in f32 (exponentials on whole vectors): this
/// unit's share of the row (`lane`, every `split.units`-th vector; none when not `active`),
/// reduced over the row's units.
#[cube]
#[allow(clippy::too_many_arguments)]
fn row_log_sum_exp<F: Float, N: Size>(
    logits: &[Vector<F, N>],
    base: usize,
    vocab_vec: usize,
    active: bool,
    lane: usize,
    scratch: &mut [f32],
    #[comptime] split: RowSplit,
) -> f32 {
    let mut mv = Vector::<f32, N>::new(-3.0e38f32);
    if active {
        let mut j = lane;
        while j < vocab_vec {
            mv = max(mv, Vector::<f32, N>::cast_from(logits[base + j]));
            j += comptime!(split.units);
        }
    }
    let mut mx = f32::new(-3.0e38);
    #[unroll]
    for l in 0..N::value() {
        mx = max(mx, mv.extract(l));
    }
    mx = row_max(mx, scratch, split);
    let shift = Vector::<f32, N>::new(mx);
    let mut sv = Vector::<f32, N>::new(0.0f32);
    if active {
        let mut j = lane;
        while j < vocab_vec {
            sv += (Vector::<f32, N>::cast_from(logits[base + j]) - shift).exp();
            j += comptime!(split.units);
        }
    }
    mx + f32::ln(row_sum(hsum(sv), scratch, split))
}

/// Writes `(softmax - onehot(label)) * scale` for this unit's share of one row whose
/// log-sum-exp is `lse`, or zeros when the row's label is ignored (negative).
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_row_grad<F: Float, N: Size>(
    logits: &[Vector<F, N>],
    dlogits: &mut [Vector<F, N>],
    base: usize,
    vocab_vec: usize,
    label: f32,
    lse: f32,
    scale: f32,
    lane: usize,
    #[comptime] split: RowSplit,
) {
    let mut j = lane;
    if label >= 0.0 {
        let shift = Vector::<f32, N>::new(lse);
        let sc = Vector::<f32, N>::new(scale);
        let li = u32::cast_from(label) as usize;
        let (at, hit) = (li / N::value(), li % N::value());
        while j < vocab_vec {
            let mut g = (Vector::<f32, N>::cast_from(logits[base + j]) - shift).exp() * sc;
            if j == at {
                let v = g.extract_dynamic(hit) - scale;
                g.insert_dynamic(hit, v);
            }
            dlogits[base + j] = Vector::cast_from(g);
            j += comptime!(split.units);
        }
    } else {
        let zero = Vector::<F, N>::new(F::new(0.0));
        while j < vocab_vec {
            dlogits[base + j] = zero;
            j += comptime!(split.units);
        }
    }
}

/// Per row: log-sum-exp and loss (`lse - logit[label]`, 0 for an ignored row), and with
/// `with_grad` the row's gradient too, while the row is in cache. Rows laid over units as
/// `split` says (`rows.rs`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn ce_forward_kernel<F: Float, N: Size>(
    logits: &[Vector<F, N>],
    labels: &[f32],
    loss: &mut [f32],
    lse: &mut [f32],
    dlogits: &mut [Vector<F, N>],
    rows: usize,
    vocab_vec: usize,
    scale: f32,
    #[comptime] with_grad: bool,
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
        let base = r * vocab_vec;
        let l = row_log_sum_exp(logits, base, vocab_vec, active, lane, &mut scratch, split);
        if active {
            let label = labels[r];
            if lane == 0 {
                let mut v = 0.0f32;
                if label >= 0.0 {
                    let li = u32::cast_from(label) as usize;
                    v = l - f32::cast_from(logits[base + li / N::value()].extract_dynamic(li % N::value()));
                }
                lse[r] = l;
                loss[r] = v;
            }
            if with_grad {
                write_row_grad(logits, dlogits, base, vocab_vec, label, l, scale, lane, split);
            }
        }
        cube_row += step;
    }
}

/// Per row: the gradient from a saved log-sum-exp, rows laid over units as `split` says.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn ce_backward_kernel<F: Float, N: Size>(
    logits: &[Vector<F, N>],
    labels: &[f32],
    lse: &[f32],
    dlogits: &mut [Vector<F, N>],
    rows: usize,
    vocab_vec: usize,
    scale: f32,
    #[comptime] split: RowSplit,
) {
    let offset = row_offset(split);
    let step = row_step(split);
    let lane = row_lane(split);
    let mut cube_row = cube_first_row(split);
    while cube_row < rows {
        let r = cube_row + offset;
        if r < rows {
            write_row_grad(logits, dlogits, r * vocab_vec, vocab_vec, labels[r], lse[r], scale, lane, split);
        }
        cube_row += step;
    }
}

/// The forward result: summed loss, the number of counted tokens, and what the backward needs.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    /// Sum of per-token losses, f32 `[1]`.
    pub loss_sum: Tensor,
    /// Per-token loss, f32 `[N]` (0 for ignored tokens).
    pub per_token: Tensor,
    /// Number of tokens whose label is not [`IGNORE_INDEX`].
    pub count: usize,
    /// Log-sum-exp per row, f32 `[N]`.
    pub lse: Tensor,
    /// Labels as uploaded, f32 `[N]`.
    pub labels: Tensor,
}

/// Cross-entropy of `logits: [N, V]` against `labels` (N values in `0..V` or -100).
pub fn cross_entropy(logits: &Tensor, labels: &[i64]) -> Result<CrossEntropy> {
    Ok(launch_forward(logits, labels, None)?.0)
}

/// [`cross_entropy`] and [`cross_entropy_backward`] with `scale` in one pass over each row (what
/// a fused output head wants: the logits are read while in cache and need not be kept).
pub fn cross_entropy_with_grad(logits: &Tensor, labels: &[i64], scale: f32) -> Result<(CrossEntropy, Tensor)> {
    let (ce, d) = launch_forward(logits, labels, Some(scale))?;
    Ok((ce, d.expect("a gradient was asked for")))
}

fn launch_forward(logits: &Tensor, labels: &[i64], grad_scale: Option<f32>) -> Result<(CrossEntropy, Option<Tensor>)> {
    if logits.rank() != 2 {
        return Err(Error::shape("cross_entropy: logits", "[N, V]", logits.shape()));
    }
    let (rows, vocab) = (logits.dim(0), logits.dim(1));
    if labels.len() != rows {
        return Err(Error::invalid(format!("cross_entropy: {} labels for {rows} rows of logits", labels.len())));
    }
    if let Some((i, &l)) =
        labels.iter().enumerate().find(|&(_, &l)| l != IGNORE_INDEX && (l < 0 || l as usize >= vocab))
    {
        return Err(Error::invalid(format!(
            "cross_entropy: label {l} at position {i} is outside the vocabulary 0..{vocab} (and not -100)"
        )));
    }
    let count = labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
    let dev = logits.device();
    let lab: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let labels_t = Tensor::from_f32(dev, &lab, &[rows], DType::F32)?;
    let per_token = Tensor::uninit(dev, &[rows], DType::F32)?;
    let lse = Tensor::uninit(dev, &[rows], DType::F32)?;
    let grad = match grad_scale {
        Some(_) => Some(Tensor::uninit(dev, logits.shape(), logits.dtype())?),
        None => None,
    };
    if rows > 0 && vocab > 0 {
        let w = launch::vector_width_up_to(&[vocab], 16);
        let (split, count_c, dim) = RowSplit::for_rows(dev, rows, vocab / w);
        // Without a gradient the logits stand in for the unwritten output binding.
        let d_handle = grad.as_ref().unwrap_or(logits).handle().clone();
        dispatch_float!(logits.dtype(), F => unsafe {
            ce_forward_kernel::launch_unchecked::<F>(
                dev.client(), count_c, dim, w,
                BufferArg::from_raw_parts(logits.handle().clone(), logits.numel()),
                BufferArg::from_raw_parts(labels_t.handle().clone(), rows),
                BufferArg::from_raw_parts(per_token.handle().clone(), rows),
                BufferArg::from_raw_parts(lse.handle().clone(), rows),
                BufferArg::from_raw_parts(d_handle, logits.numel()),
                rows, vocab / w, grad_scale.unwrap_or(0.0),
                grad_scale.is_some(), split,
            )
        });
    }
    let loss_sum = crate::reduce::sum_last(&per_token)?;
    Ok((CrossEntropy { loss_sum, per_token, count, lse, labels: labels_t }, grad))
}

/// Gradient of `scale * loss_sum` with respect to the logits: `(softmax - onehot) * scale` on
/// counted rows, 0 on ignored ones. For a mean over this batch pass `scale = 1 / count`; under
/// gradient accumulation, `1 / total count`.
pub fn cross_entropy_backward(logits: &Tensor, ce: &CrossEntropy, scale: f32) -> Result<Tensor> {
    let dev = logits.device();
    let (rows, vocab) = (logits.dim(0), logits.dim(1));
    let d = Tensor::uninit(dev, logits.shape(), logits.dtype())?;
    if rows == 0 || vocab == 0 {
        return Ok(d);
    }
    let w = launch::vector_width_up_to(&[vocab], 16);
    let (split, count, dim) = RowSplit::for_rows(dev, rows, vocab / w);
    dispatch_float!(logits.dtype(), F => unsafe {
        ce_backward_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, w,
            BufferArg::from_raw_parts(logits.handle().clone(), logits.numel()),
            BufferArg::from_raw_parts(ce.labels.handle().clone(), ce.labels.numel()),
            BufferArg::from_raw_parts(ce.lse.handle().clone(), ce.lse.numel()),
            BufferArg::from_raw_parts(d.handle().clone(), logits.numel()),
            rows, vocab / w, scale, split,
        )
    });
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::reference as r;
    use crate::test_util::*;
    use lapidary_core::DType;
    use lapidary_testkit::Tol;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_util::cases(24))]
        #[test]
        fn cross_entropy_matches_reference(rows in 1usize..20, vocab in prop_oneof![2usize..90, (1usize..12).prop_map(|v| v * 16)], dt in dtype_strategy(), seed in any::<u64>(), split in crate::rows::split_strategy()) {
            crate::rows::force_split(split);
            let dev = device();
            let logits = random_tensor(&dev, &[rows, vocab], dt, seed, 4.0);
            let lh = logits.to_f32_vec().unwrap();
            let labels: Vec<i64> = lapidary_testkit::random_values(rows, seed ^ 5, 1.0).iter().enumerate()
                .map(|(i, u)| if i % 3 == 1 { -100 } else { (((u + 1.0) / 2.0) * vocab as f32) as i64 % vocab as i64 }).collect();
            let ce = super::cross_entropy(&logits, &labels).unwrap();
            let (want_sum, want_count, want_grad) = r::cross_entropy(&lh, &labels, vocab);
            prop_assert_eq!(ce.count, want_count);
            assert_close("ce loss sum", &ce.loss_sum.to_f32_vec().unwrap(), &[want_sum], Tol { abs: 1e-4 * rows as f64, rel: 1e-5 });
            let scale = 1.0 / want_count.max(1) as f32;
            let g = super::cross_entropy_backward(&logits, &ce, scale).unwrap();
            let want: Vec<f32> = want_grad.iter().map(|v| v * scale).collect();
            assert_close("ce dlogits", &g.to_f32_vec().unwrap(), &want, Tol { abs: dt.tol().abs * 0.1, rel: dt.tol().rel });
            // The fused pass: the same loss and gradient.
            let (ce2, g2) = super::cross_entropy_with_grad(&logits, &labels, scale).unwrap();
            prop_assert_eq!(ce2.count, want_count);
            assert_close("fused ce loss sum", &ce2.loss_sum.to_f32_vec().unwrap(), &[want_sum], Tol { abs: 1e-4 * rows as f64, rel: 1e-5 });
            assert_close("fused ce dlogits", &g2.to_f32_vec().unwrap(), &want, Tol { abs: dt.tol().abs * 0.1, rel: dt.tol().rel });
        }
    }

    #[test]
    fn bad_labels_are_clear_errors() {
        let dev = device();
        let logits = random_tensor(&dev, &[2, 5], DType::F32, 1, 1.0);
        let e = super::cross_entropy(&logits, &[1, 5]).unwrap_err().to_string();
        assert!(e.contains("label 5 at position 1") && e.contains("0..5"), "{e}");
        let e = super::cross_entropy(&logits, &[1]).unwrap_err().to_string();
        assert!(e.contains("1 labels for 2 rows"), "{e}");
    }
}
