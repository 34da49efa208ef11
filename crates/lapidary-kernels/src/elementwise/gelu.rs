//! GELU with the tanh approximation (`gelu_pytorch_tanh`, used by SigLIP's MLP and Gemma's
//! GeGLU), forward and backward, side by side. Host references are in `reference.rs`.

use cubecl::prelude::*;
use lapidary_core::{Result, Tensor, launch};

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044_715;

/// tanh through one exponential, `sign(z) (1 - e) / (1 + e)` with `e = exp(-2|z|)` (never
/// overflows; as accurate as f32's tanh near ±1): vector exponentials are polynomials on the CPU
/// runtime, its `tanh` a library call per lane.
#[cube]
pub(super) fn tanh_f32<N: Size>(z: Vector<f32, N>) -> Vector<f32, N> {
    let one = Vector::new(1.0f32);
    // The magnitude from |z| (a NaN stays NaN, an infinite z gives e = 0), the sign from z
    // clamped to [-1, 1] (exactly ±1 for |z| >= 1e-30; below, tanh is 0 to within f32).
    let e = (z.abs() * Vector::new(-2.0f32)).exp();
    let zc = min(max(z, -one), one);
    (one - e) / (one + e) * (zc / max(zc.abs(), Vector::new(1e-30f32)))
}

/// tanh(√(2/π) (x + 0.044715 x³)), the term both directions share.
#[cube]
fn gelu_inner_tanh<N: Size>(x: Vector<f32, N>) -> Vector<f32, N> {
    tanh_f32(Vector::new(SQRT_2_OVER_PI) * (x + Vector::new(COEF) * x * x * x))
}

/// gelu_tanh(x) = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), in f32.
#[cube]
pub(crate) fn gelu_tanh_f32<N: Size>(x: Vector<f32, N>) -> Vector<f32, N> {
    Vector::new(0.5f32) * x * (Vector::new(1.0f32) + gelu_inner_tanh(x))
}

/// d gelu_tanh / dx given `t = gelu_inner_tanh(x)`, in f32.
#[cube]
fn gelu_tanh_grad_from<N: Size>(x: Vector<f32, N>, t: Vector<f32, N>) -> Vector<f32, N> {
    let half = Vector::new(0.5f32);
    let one = Vector::new(1.0f32);
    let c = Vector::new(SQRT_2_OVER_PI);
    let a = Vector::new(COEF);
    half * (one + t) + half * x * (one - t * t) * c * (one + Vector::new(3.0f32) * a * x * x)
}

/// d gelu_tanh / dx, in f32.
#[cube]
pub(crate) fn gelu_tanh_grad_f32<N: Size>(x: Vector<f32, N>) -> Vector<f32, N> {
    gelu_tanh_grad_from(x, gelu_inner_tanh(x))
}

/// `(gelu_tanh(x), d gelu_tanh / dx)` with one tanh, in f32.
#[cube]
pub(crate) fn gelu_tanh_and_grad_f32<N: Size>(x: Vector<f32, N>) -> (Vector<f32, N>, Vector<f32, N>) {
    let t = gelu_inner_tanh(x);
    (Vector::new(0.5f32) * x * (Vector::new(1.0f32) + t), gelu_tanh_grad_from(x, t))
}

#[cube(launch_unchecked)]
fn gelu_tanh_kernel<F: Float, N: Size>(x: &[Vector<F, N>], out: &mut [Vector<F, N>]) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < x.len() {
        out[i] = Vector::cast_from(gelu_tanh_f32(Vector::<f32, N>::cast_from(x[i])));
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn gelu_tanh_backward_kernel<F: Float, N: Size>(x: &[Vector<F, N>], dy: &[Vector<F, N>], dx: &mut [Vector<F, N>]) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < x.len() {
        let g = gelu_tanh_grad_f32(Vector::<f32, N>::cast_from(x[i]));
        dx[i] = Vector::cast_from(g * Vector::<f32, N>::cast_from(dy[i]));
        i += stride;
    }
}

/// GELU (tanh approximation) of every element; same shape and dtype as `x`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let out = Tensor::uninit(x.device(), x.shape(), x.dtype())?;
    let n = x.numel();
    let w = launch::vector_width(&[n]);
    let (count, dim) = launch::grid_1d(x.device(), n / w);
    dispatch_float!(x.dtype(), F => unsafe {
        gelu_tanh_kernel::launch_unchecked::<F>(
            x.device().client(), count, dim, w,
            BufferArg::from_raw_parts(x.handle().clone(), n),
            BufferArg::from_raw_parts(out.handle().clone(), n),
        )
    });
    Ok(out)
}

/// Backward of [`gelu_tanh`]: `dx = gelu_tanh'(x) * dy`. `dy` must match `x` in shape and dtype.
pub fn gelu_tanh_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    super::same_layout("gelu_tanh_backward (dy vs x)", x, dy)?;
    let dx = Tensor::uninit(x.device(), x.shape(), x.dtype())?;
    let n = x.numel();
    let w = launch::vector_width(&[n]);
    let (count, dim) = launch::grid_1d(x.device(), n / w);
    dispatch_float!(x.dtype(), F => unsafe {
        gelu_tanh_backward_kernel::launch_unchecked::<F>(
            x.device().client(), count, dim, w,
            BufferArg::from_raw_parts(x.handle().clone(), n),
            BufferArg::from_raw_parts(dy.handle().clone(), n),
            BufferArg::from_raw_parts(dx.handle().clone(), n),
        )
    });
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::super::reference;
    use crate::test_util::*;
    use lapidary_core::DType;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_util::cases(24))]
        #[test]
        fn forward_and_backward_match_reference(shape in shape_strategy(3, 67), seed in any::<u64>(), dt in dtype_strategy()) {
            let dev = device();
            let x = random_tensor(&dev, &shape, dt, seed, 3.0);
            let dy = random_tensor(&dev, &shape, dt, seed ^ 0x9e37, 1.0);
            let xh = x.to_f32_vec().unwrap();
            let dyh = dy.to_f32_vec().unwrap();
            let y = super::gelu_tanh(&x).unwrap();
            assert_close("gelu_tanh", &y.to_f32_vec().unwrap(), &reference::gelu_tanh(&xh), dt.tol());
            let dx = super::gelu_tanh_backward(&x, &dy).unwrap();
            assert_close("gelu_tanh_backward", &dx.to_f32_vec().unwrap(), &reference::gelu_tanh_backward(&xh, &dyh), dt.tol());
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let xs: Vec<f32> = (0..41).map(|i| -4.0 + i as f32 * 0.2).collect();
        let ones = vec![1.0f32; xs.len()];
        let analytic = reference::gelu_tanh_backward(&xs, &ones);
        for (i, &x) in xs.iter().enumerate() {
            let h = 1e-3f64;
            let f = |v: f64| reference::gelu_tanh_f64(v);
            let numeric = (f(x as f64 + h) - f(x as f64 - h)) / (2.0 * h);
            assert!((analytic[i] as f64 - numeric).abs() < 1e-4, "x={x}: {} vs {numeric}", analytic[i]);
        }
    }

    #[test]
    fn saturated_and_tiny_inputs_match_reference() {
        // tanh is computed through an exponential: where it overflows (large |x|) the result
        // must still saturate to x or 0 (gradient 1 or 0), and near 0 it must stay accurate.
        let dev = device();
        let xs = [-1e15f32, -100.0, -20.0, -9.0, -3e-4, -1e-7, 0.0, 1e-7, 3e-4, 9.0, 20.0, 100.0, 1e15, 5.0, -5.0, 0.5];
        let x = lapidary_core::Tensor::from_f32(&dev, &xs, &[xs.len()], DType::F32).unwrap();
        let dy = lapidary_core::Tensor::from_f32(&dev, &[1.0; 16], &[16], DType::F32).unwrap();
        let tol = lapidary_testkit::Tol { abs: 1e-6, rel: 1e-5 };
        assert_close(
            "gelu_tanh",
            &super::gelu_tanh(&x).unwrap().to_f32_vec().unwrap(),
            &reference::gelu_tanh(&xs),
            tol,
        );
        let want = reference::gelu_tanh_backward(&xs, &[1.0; 16]);
        let got = super::gelu_tanh_backward(&x, &dy).unwrap().to_f32_vec().unwrap();
        assert_close("gelu_tanh_backward", &got, &want, tol);
        assert!(got.iter().all(|g| g.is_finite()), "{got:?}");
        // A NaN stays NaN both ways (the step guard must see it).
        let nan = lapidary_core::Tensor::from_f32(&dev, &[f32::NAN, 1.0], &[2], DType::F32).unwrap();
        let one = lapidary_core::Tensor::from_f32(&dev, &[1.0, 1.0], &[2], DType::F32).unwrap();
        assert!(super::gelu_tanh(&nan).unwrap().to_f32_vec().unwrap()[0].is_nan());
        assert!(super::gelu_tanh_backward(&nan, &one).unwrap().to_f32_vec().unwrap()[0].is_nan());
    }

    #[test]
    fn mismatched_grad_is_a_clear_error() {
        let dev = device();
        let x = random_tensor(&dev, &[3, 4], DType::F32, 1, 1.0);
        let dy = random_tensor(&dev, &[4, 3], DType::F32, 2, 1.0);
        let e = super::gelu_tanh_backward(&x, &dy).unwrap_err().to_string();
        assert!(e.contains("gelu_tanh_backward") && e.contains("[3, 4]") && e.contains("[4, 3]"), "{e}");
    }
}
