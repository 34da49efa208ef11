//! Logit soft-capping, `cap · tanh(x / cap)`, and its gradient written from the output,
//! `dy · (1 − (y / cap)²)`, as torch's autograd computes tanh's (Gemma 2 and Gemma 4 cap their
//! final logits; the fused head loss applies it per chunk). tanh is GELU's (one exponential, not
//! a library call per lane on the CPU). Host references in `reference.rs`.

use super::gelu::tanh_f32;
use cubecl::prelude::*;
use lapidary_core::{Error, Result, Tensor, launch};

#[cube(launch_unchecked)]
fn softcap_kernel<F: Float, N: Size>(x: &[Vector<F, N>], out: &mut [Vector<F, N>], cap: f32) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let cap_v = Vector::<f32, N>::new(cap);
    let mut i = ABSOLUTE_POS;
    while i < x.len() {
        let v = Vector::<f32, N>::cast_from(x[i]);
        out[i] = Vector::cast_from(tanh_f32(v / cap_v) * cap_v);
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn softcap_backward_kernel<F: Float, N: Size>(
    y: &[Vector<F, N>],
    dy: &[Vector<F, N>],
    dx: &mut [Vector<F, N>],
    cap: f32,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let (cap_v, one) = (Vector::<f32, N>::new(cap), Vector::<f32, N>::new(1.0f32));
    let mut i = ABSOLUTE_POS;
    while i < y.len() {
        let t = Vector::<f32, N>::cast_from(y[i]) / cap_v;
        dx[i] = Vector::cast_from(Vector::<f32, N>::cast_from(dy[i]) * (one - t * t));
        i += stride;
    }
}

/// An error unless `cap` is finite and positive.
fn check_cap(op: &str, cap: f32) -> Result<()> {
    if !(cap.is_finite() && cap > 0.0) {
        return Err(Error::invalid(format!("{op}: cap {cap}: expected a finite number above 0")));
    }
    Ok(())
}

fn launch_softcap(x: &Tensor, dy: Option<&Tensor>, cap: f32) -> Result<Tensor> {
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
            softcap_kernel::launch_unchecked::<F>(dev.client(), count, dim, w, arg(x), arg(&out), cap)
        }),
        Some(dy) => dispatch_float!(x.dtype(), F => unsafe {
            softcap_backward_kernel::launch_unchecked::<F>(dev.client(), count, dim, w, arg(x), arg(dy), arg(&out), cap)
        }),
    }
    Ok(out)
}

/// `cap · tanh(x / cap)` element by element; same shape and dtype.
pub fn softcap(x: &Tensor, cap: f32) -> Result<Tensor> {
    check_cap("softcap", cap)?;
    launch_softcap(x, None, cap)
}

/// Backward of [`softcap`] from its output `y`: `dy · (1 − (y / cap)²)`. `dy` must match `y`.
pub fn softcap_backward(y: &Tensor, dy: &Tensor, cap: f32) -> Result<Tensor> {
    check_cap("softcap_backward", cap)?;
    super::same_layout("softcap_backward (dy vs y)", y, dy)?;
    launch_softcap(y, Some(dy), cap)
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
            cap in 0.5f32..40.0,
            spread in 0.1f32..80.0,
        ) {
            let dev = device();
            let x = random_tensor(&dev, &shape, dt, seed, spread);
            let dy = random_tensor(&dev, &shape, dt, seed ^ 0x9e37, 1.0);
            let (xh, dyh) = (x.to_f32_vec().unwrap(), dy.to_f32_vec().unwrap());
            let y = super::softcap(&x, cap).unwrap();
            let yh = y.to_f32_vec().unwrap();
            assert_close("softcap", &yh, &reference::softcap(&xh, cap), dt.tol());
            let dx = super::softcap_backward(&y, &dy, cap).unwrap().to_f32_vec().unwrap();
            assert_close("softcap_backward", &dx, &reference::softcap_backward(&yh, &dyh, cap), dt.tol());
        }
    }

    #[test]
    fn saturates_at_the_cap_and_passes_no_gradient_there() {
        let dev = device();
        let x = Tensor::from_f32(&dev, &[-1e4, -30.0, 0.0, 3.0, 1e4], &[5], DType::F32).unwrap();
        let y = super::softcap(&x, 30.0).unwrap();
        let yh = y.to_f32_vec().unwrap();
        let t = 1.0f32.tanh() * 30.0;
        assert_eq!((yh[0], yh[2], yh[4]), (-30.0, 0.0, 30.0));
        assert!((yh[1] + t).abs() < 1e-5 && (yh[3] - (0.1f32).tanh() * 30.0).abs() < 1e-5, "{yh:?}");
        let dy = Tensor::from_f32(&dev, &[1.0; 5], &[5], DType::F32).unwrap();
        let dx = super::softcap_backward(&y, &dy, 30.0).unwrap().to_f32_vec().unwrap();
        assert_eq!((dx[0], dx[2], dx[4]), (0.0, 1.0, 0.0));
    }

    #[test]
    fn bad_cap_is_a_clear_error() {
        let dev = device();
        let x = random_tensor(&dev, &[3], DType::F32, 1, 1.0);
        for cap in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let e = super::softcap(&x, cap).unwrap_err().to_string();
            assert!(e.contains("softcap") && e.contains("above 0"), "{e}");
        }
    }
}
