//! Clamp to `[lo, hi]` and its gradient, as `torch.clamp` has them: `min(max(x, lo), hi)` with a
//! NaN passed through, and the upstream gradient passed where `lo <= x <= hi` (bounds included)
//! and zero elsewhere (a NaN included). Gemma 4's clipped linears clamp their input and output
//! with bounds from the checkpoint (±infinity when it has none). Host references in `reference.rs`.

use cubecl::prelude::*;
use lapidary_core::{Error, Result, Tensor, launch};

#[cube(launch_unchecked)]
fn clamp_kernel<F: Float, N: Size>(x: &[Vector<F, N>], out: &mut [Vector<F, N>], lo: f32, hi: f32) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let (lo_v, hi_v) = (Vector::<f32, N>::new(lo), Vector::<f32, N>::new(hi));
    let mut i = ABSOLUTE_POS;
    while i < x.len() {
        let v = Vector::<f32, N>::cast_from(x[i]);
        // Comparisons are false for NaN, which is kept.
        let below = select_many(v.less_than(&lo_v), lo_v, v);
        out[i] = Vector::cast_from(select_many(below.greater_than(&hi_v), hi_v, below));
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn clamp_backward_kernel<F: Float, N: Size>(
    x: &[Vector<F, N>],
    dy: &[Vector<F, N>],
    dx: &mut [Vector<F, N>],
    lo: f32,
    hi: f32,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let (lo_v, hi_v) = (Vector::<f32, N>::new(lo), Vector::<f32, N>::new(hi));
    let zero = Vector::<f32, N>::new(0.0f32);
    let mut i = ABSOLUTE_POS;
    while i < x.len() {
        let v = Vector::<f32, N>::cast_from(x[i]);
        let inside = v.greater_equal(&lo_v).vec_and(v.less_equal(&hi_v));
        dx[i] = Vector::cast_from(select_many(inside, Vector::<f32, N>::cast_from(dy[i]), zero));
        i += stride;
    }
}

/// An error unless `lo <= hi` (either may be infinite, neither NaN).
fn check_bounds(op: &str, lo: f32, hi: f32) -> Result<()> {
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(Error::invalid(format!("{op}: bounds [{lo}, {hi}]: expected lo <= hi, neither NaN")));
    }
    Ok(())
}

fn launch_clamp(x: &Tensor, dy: Option<&Tensor>, lo: f32, hi: f32) -> Result<Tensor> {
    let out = Tensor::uninit(x.device(), x.shape(), x.dtype())?;
    let n = x.numel();
    if n == 0 {
        return Ok(out);
    }
    let w = launch::vector_width(&[n]);
    let dev = x.device();
    let (count, dim) = launch::grid_1d(dev, n / w);
    let arg = |t: &Tensor| unsafe { BufferArg::from_raw_parts(t.handle().clone(), n) };
    match dy {
        None => dispatch_float!(x.dtype(), F => unsafe {
            clamp_kernel::launch_unchecked::<F>(dev.client(), count, dim, w, arg(x), arg(&out), lo, hi)
        }),
        Some(dy) => dispatch_float!(x.dtype(), F => unsafe {
            clamp_backward_kernel::launch_unchecked::<F>(dev.client(), count, dim, w, arg(x), arg(dy), arg(&out), lo, hi)
        }),
    }
    Ok(out)
}

/// `x` clamped to `[lo, hi]` element by element (NaN stays NaN); same shape and dtype.
pub fn clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    check_bounds("clamp", lo, hi)?;
    launch_clamp(x, None, lo, hi)
}

/// Backward of [`clamp`]: `dy` where `lo <= x <= hi`, zero elsewhere. `dy` must match `x`.
pub fn clamp_backward(x: &Tensor, dy: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    check_bounds("clamp_backward", lo, hi)?;
    super::same_layout("clamp_backward (dy vs x)", x, dy)?;
    launch_clamp(x, Some(dy), lo, hi)
}

#[cfg(test)]
mod tests {
    use super::super::reference;
    use crate::test_util::*;
    use lapidary_core::{DType, Tensor};
    use lapidary_testkit::TolExt;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_util::cases(24))]
        #[test]
        fn forward_and_backward_match_reference(
            shape in shape_strategy(3, 67),
            seed in any::<u64>(),
            dt in dtype_strategy(),
            lo in -2.0f32..0.5,
            width in 0.0f32..3.0,
        ) {
            let dev = device();
            let x = random_tensor(&dev, &shape, dt, seed, 3.0);
            let dy = random_tensor(&dev, &shape, dt, seed ^ 0x9e37, 1.0);
            let (xh, dyh) = (x.to_f32_vec().unwrap(), dy.to_f32_vec().unwrap());
            let hi = lo + width;
            let y = super::clamp(&x, lo, hi).unwrap().to_f32_vec().unwrap();
            // Clamping selects values: equal up to rounding a bound to the dtype.
            assert_close("clamp", &y, &reference::clamp(&xh, lo, hi), dt.tol());
            // The mask compares values the dtype holds exactly: the gradient is exact.
            let dx = super::clamp_backward(&x, &dy, lo, hi).unwrap().to_f32_vec().unwrap();
            let exact = lapidary_testkit::Tol { abs: 0.0, rel: 0.0 };
            assert_close("clamp_backward", &dx, &reference::clamp_backward(&xh, &dyh, lo, hi), exact);
        }
    }

    #[test]
    fn bounds_infinities_and_nan_follow_torch() {
        let dev = device();
        let xs = [f32::NAN, -1.0, -0.5, 0.0, 0.5, 1.0, f32::NEG_INFINITY, f32::INFINITY];
        let x = Tensor::from_f32(&dev, &xs, &[8], DType::F32).unwrap();
        let dy = Tensor::from_f32(&dev, &[1.0; 8], &[8], DType::F32).unwrap();
        let y = super::clamp(&x, -0.5, 0.5).unwrap().to_f32_vec().unwrap();
        assert!(y[0].is_nan(), "{y:?}");
        assert_eq!(&y[1..], &[-0.5, -0.5, 0.0, 0.5, 0.5, -0.5, 0.5]);
        // The gradient passes at the bounds themselves (torch's `lo <= x <= hi`), not through NaN.
        let dx = super::clamp_backward(&x, &dy, -0.5, 0.5).unwrap().to_f32_vec().unwrap();
        assert_eq!(dx, vec![0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        // Infinite bounds (a checkpoint without clip values) change nothing but keep NaN's zero gradient.
        let y = super::clamp(&x, f32::NEG_INFINITY, f32::INFINITY).unwrap().to_f32_vec().unwrap();
        assert!(y[0].is_nan() && y[1..] == xs[1..]);
        let dx = super::clamp_backward(&x, &dy, f32::NEG_INFINITY, f32::INFINITY).unwrap().to_f32_vec().unwrap();
        assert_eq!(dx, vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn bad_bounds_and_mismatched_grad_are_clear_errors() {
        let dev = device();
        let x = random_tensor(&dev, &[3, 4], DType::F32, 1, 1.0);
        let e = super::clamp(&x, 1.0, -1.0).unwrap_err().to_string();
        assert!(e.contains("clamp") && e.contains("lo <= hi"), "{e}");
        assert!(super::clamp(&x, f32::NAN, 1.0).is_err());
        let dy = random_tensor(&dev, &[4, 3], DType::F32, 2, 1.0);
        let e = super::clamp_backward(&x, &dy, -1.0, 1.0).unwrap_err().to_string();
        assert!(e.contains("clamp_backward") && e.contains("[3, 4]") && e.contains("[4, 3]"), "{e}");
    }
}
