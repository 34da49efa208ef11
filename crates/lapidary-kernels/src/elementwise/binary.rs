//! Binary elementwise ops with suffix broadcasting — `add`, `mul` — plus `scale` (by a host
//! number), `scale_by` (by a number on the device) and GeGLU
//! (`gelu_tanh(gate) * up`), each with its backward. `b` may have the full shape of `a` or a
//! suffix of it (a bias `[C]` on `[..., C]`, positions `[P, C]` on `[B, P, C]`); the backward then
//! sums `b`'s gradient over the broadcast rows.

use super::gelu::{gelu_tanh_and_grad_f32, gelu_tanh_f32};
use crate::reduce;
use cubecl::prelude::*;
use lapidary_core::{Error, Result, Tensor, launch};

#[cube(launch_unchecked)]
fn binary_kernel<F: Float, N: Size>(
    a: &[Vector<F, N>],
    b: &[Vector<F, N>],
    out: &mut [Vector<F, N>],
    #[comptime] op: u32,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let bl = b.len();
    let mut i = ABSOLUTE_POS;
    while i < a.len() {
        let x = Vector::<f32, N>::cast_from(a[i]);
        let y = Vector::<f32, N>::cast_from(b[i % bl]);
        let r = if op == 0 { x + y } else { x * y };
        out[i] = Vector::cast_from(r);
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn scale_kernel<F: Float, N: Size>(a: &[Vector<F, N>], out: &mut [Vector<F, N>], s: f32) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < a.len() {
        out[i] = Vector::cast_from(Vector::<f32, N>::cast_from(a[i]) * Vector::new(s));
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn scale_by_kernel<F: Float, N: Size>(a: &[Vector<F, N>], s: &[f32], out: &mut [Vector<F, N>]) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let factor = Vector::<f32, N>::new(s[0]);
    let mut i = ABSOLUTE_POS;
    while i < a.len() {
        out[i] = Vector::cast_from(Vector::<f32, N>::cast_from(a[i]) * factor);
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn geglu_kernel<F: Float, N: Size>(gate: &[Vector<F, N>], up: &[Vector<F, N>], out: &mut [Vector<F, N>]) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < gate.len() {
        let g = gelu_tanh_f32(Vector::<f32, N>::cast_from(gate[i]));
        out[i] = Vector::cast_from(g * Vector::<f32, N>::cast_from(up[i]));
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn geglu_backward_kernel<F: Float, N: Size>(
    gate: &[Vector<F, N>],
    up: &[Vector<F, N>],
    dy: &[Vector<F, N>],
    dgate: &mut [Vector<F, N>],
    dup: &mut [Vector<F, N>],
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < gate.len() {
        let g = Vector::<f32, N>::cast_from(gate[i]);
        let u = Vector::<f32, N>::cast_from(up[i]);
        let d = Vector::<f32, N>::cast_from(dy[i]);
        let (value, grad) = gelu_tanh_and_grad_f32(g);
        dgate[i] = Vector::cast_from(grad * u * d);
        dup[i] = Vector::cast_from(value * d);
        i += stride;
    }
}

/// An error unless `b`'s shape is a suffix of `a`'s (same dtype and device).
fn check_broadcast(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    let (ra, rb) = (a.rank(), b.rank());
    if rb > ra || a.shape()[ra - rb..] != *b.shape() || b.numel() == 0 {
        return Err(Error::shape(
            format!("{op}: b (a is {:?})", a.shape()),
            format!("a suffix of {:?}", a.shape()),
            b.shape(),
        ));
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DType { context: format!("{op}: b"), expected: a.dtype().to_string(), got: b.dtype() });
    }
    if a.device() != b.device() {
        return Err(Error::Device(format!("{op}: a on {}, b on {}", a.device(), b.device())));
    }
    Ok(())
}

fn binary(op_name: &str, a: &Tensor, b: &Tensor, op: u32) -> Result<Tensor> {
    check_broadcast(op_name, a, b)?;
    let out = Tensor::uninit(a.device(), a.shape(), a.dtype())?;
    let w = launch::vector_width(&[a.numel(), b.numel()]);
    let (count, dim) = launch::grid_1d(a.device(), a.numel() / w);
    dispatch_float!(a.dtype(), F => unsafe {
        binary_kernel::launch_unchecked::<F>(
            a.device().client(), count, dim, w,
            BufferArg::from_raw_parts(a.handle().clone(), a.numel()),
            BufferArg::from_raw_parts(b.handle().clone(), b.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), a.numel()),
            op,
        )
    });
    Ok(out)
}

/// `a + b`, `b` broadcast over `a`'s leading dims (its shape a suffix of `a`'s).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b, 0)
}

/// `a * b` elementwise, `b` broadcast over `a`'s leading dims.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", a, b, 1)
}

/// `s * a`.
pub fn scale(a: &Tensor, s: f32) -> Result<Tensor> {
    let out = Tensor::uninit(a.device(), a.shape(), a.dtype())?;
    let w = launch::vector_width(&[a.numel()]);
    let (count, dim) = launch::grid_1d(a.device(), a.numel() / w);
    dispatch_float!(a.dtype(), F => unsafe {
        scale_kernel::launch_unchecked::<F>(
            a.device().client(), count, dim, w,
            BufferArg::from_raw_parts(a.handle().clone(), a.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), a.numel()),
            s,
        )
    });
    Ok(out)
}

/// `s[0] * a`, for `s` an f32 `[1]` tensor on `a`'s device: a factor that is only known there
/// (an upstream gradient, a clipping coefficient), used without reading it back.
pub fn scale_by(a: &Tensor, s: &Tensor) -> Result<Tensor> {
    s.expect_shape("scale_by: factor", &[1])?;
    s.expect_dtype("scale_by: factor", &[lapidary_core::DType::F32])?;
    if s.device() != a.device() {
        return Err(Error::Device(format!("scale_by: tensor on {} and factor on {}", a.device(), s.device())));
    }
    let out = Tensor::uninit(a.device(), a.shape(), a.dtype())?;
    let w = launch::vector_width(&[a.numel()]);
    let (count, dim) = launch::grid_1d(a.device(), a.numel() / w);
    dispatch_float!(a.dtype(), F => unsafe {
        scale_by_kernel::launch_unchecked::<F>(
            a.device().client(), count, dim, w,
            BufferArg::from_raw_parts(a.handle().clone(), a.numel()),
            BufferArg::from_raw_parts(s.handle().clone(), 1),
            BufferArg::from_raw_parts(out.handle().clone(), a.numel()),
        )
    });
    Ok(out)
}

/// Sums `g` (shape of `a`) down to `b_shape` (a suffix of it): the gradient of a broadcast operand.
pub fn sum_to(g: &Tensor, b_shape: &[usize]) -> Result<Tensor> {
    if g.shape() == b_shape {
        return Ok(g.clone());
    }
    let cols: usize = b_shape.iter().product();
    reduce::sum_rows(&g.reshape(&[g.numel() / cols.max(1), cols])?)?.reshape(b_shape)
}

/// Backward of [`add`]: `(da, db) = (dy, dy summed to b's shape)`.
pub fn add_backward(dy: &Tensor, b_shape: &[usize]) -> Result<(Tensor, Tensor)> {
    Ok((dy.clone(), sum_to(dy, b_shape)?))
}

/// Backward of [`mul`]: `da = dy * b`, `db = Σ dy * a` (summed to `b`'s shape).
pub fn mul_backward(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    super::same_layout("mul_backward (dy vs a)", a, dy)?;
    let da = mul(dy, b)?;
    let db = sum_to(&mul(dy, a)?, b.shape())?;
    Ok((da, db))
}

/// GeGLU: `gelu_tanh(gate) * up` (Gemma's MLP); `gate` and `up` share shape and dtype.
pub fn geglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    super::same_layout("geglu (up vs gate)", gate, up)?;
    let n = gate.numel();
    let out = Tensor::uninit(gate.device(), gate.shape(), gate.dtype())?;
    let w = launch::vector_width(&[n]);
    let (count, dim) = launch::grid_1d(gate.device(), n / w);
    dispatch_float!(gate.dtype(), F => unsafe {
        geglu_kernel::launch_unchecked::<F>(
            gate.device().client(), count, dim, w,
            BufferArg::from_raw_parts(gate.handle().clone(), n),
            BufferArg::from_raw_parts(up.handle().clone(), n),
            BufferArg::from_raw_parts(out.handle().clone(), n),
        )
    });
    Ok(out)
}

/// Backward of [`geglu`], recomputing the activation: returns `(dgate, dup)`.
pub fn geglu_backward(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    super::same_layout("geglu_backward (up vs gate)", gate, up)?;
    super::same_layout("geglu_backward (dy vs gate)", gate, dy)?;
    let n = gate.numel();
    let dgate = Tensor::uninit(gate.device(), gate.shape(), gate.dtype())?;
    let dup = Tensor::uninit(gate.device(), gate.shape(), gate.dtype())?;
    let w = launch::vector_width(&[n]);
    let (count, dim) = launch::grid_1d(gate.device(), n / w);
    dispatch_float!(gate.dtype(), F => unsafe {
        geglu_backward_kernel::launch_unchecked::<F>(
            gate.device().client(), count, dim, w,
            BufferArg::from_raw_parts(gate.handle().clone(), n),
            BufferArg::from_raw_parts(up.handle().clone(), n),
            BufferArg::from_raw_parts(dy.handle().clone(), n),
            BufferArg::from_raw_parts(dgate.handle().clone(), n),
            BufferArg::from_raw_parts(dup.handle().clone(), n),
        )
    });
    Ok((dgate, dup))
}

#[cfg(test)]
mod tests {
    use super::super::reference as r;
    use crate::test_util::*;
    use lapidary_core::DType;
    use lapidary_testkit::Tol;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_util::cases(24))]
        #[test]
        fn binary_ops_match_reference(shape in shape_strategy(3, 29), suffix in 0usize..3, seed in any::<u64>(), dt in dtype_strategy(), s in -3.0f32..3.0) {
            let dev = device();
            let b_shape: Vec<usize> = shape[suffix.min(shape.len() - 1)..].to_vec();
            let a = random_tensor(&dev, &shape, dt, seed, 2.0);
            let b = random_tensor(&dev, &b_shape, dt, seed ^ 1, 2.0);
            let dy = random_tensor(&dev, &shape, dt, seed ^ 2, 1.0);
            let (ah, bh, dyh) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap(), dy.to_f32_vec().unwrap());
            let t = dt.tol();
            assert_close("add", &super::add(&a, &b).unwrap().to_f32_vec().unwrap(), &r::broadcast(&ah, &bh, |x, y| x + y), t);
            assert_close("mul", &super::mul(&a, &b).unwrap().to_f32_vec().unwrap(), &r::broadcast(&ah, &bh, |x, y| x * y), t);
            assert_close("scale", &super::scale(&a, s).unwrap().to_f32_vec().unwrap(), &ah.iter().map(|x| x * s).collect::<Vec<_>>(), t);
            let factor = lapidary_core::Tensor::from_f32(&dev, &[s], &[1], DType::F32).unwrap();
            assert_close("scale_by", &super::scale_by(&a, &factor).unwrap().to_f32_vec().unwrap(), &ah.iter().map(|x| x * s).collect::<Vec<_>>(), t);
            let rows = ah.len() / bh.len();
            let tsum = Tol { abs: t.abs * (rows as f64).sqrt() * 2.0, rel: t.rel };
            let (_, db) = super::add_backward(&dy, b.shape()).unwrap();
            assert_close("add_backward db", &db.to_f32_vec().unwrap(), &r::sum_to(&dyh, bh.len()), tsum);
            let (da, db) = super::mul_backward(&a, &b, &dy).unwrap();
            assert_close("mul_backward da", &da.to_f32_vec().unwrap(), &r::broadcast(&dyh, &bh, |x, y| x * y), t);
            let prod: Vec<f32> = dyh.iter().zip(&ah).map(|(x, y)| dt.round(x * y)).collect();
            assert_close("mul_backward db", &db.to_f32_vec().unwrap(), &r::sum_to(&prod, bh.len()), tsum.scaled(2.0));
        }

        #[test]
        fn geglu_matches_reference(shape in shape_strategy(3, 33), seed in any::<u64>(), dt in dtype_strategy()) {
            let dev = device();
            let g = random_tensor(&dev, &shape, dt, seed, 3.0);
            let u = random_tensor(&dev, &shape, dt, seed ^ 7, 2.0);
            let dy = random_tensor(&dev, &shape, dt, seed ^ 9, 1.0);
            let (gh, uh, dyh) = (g.to_f32_vec().unwrap(), u.to_f32_vec().unwrap(), dy.to_f32_vec().unwrap());
            let (want, want_dg, want_du) = r::geglu(&gh, &uh, &dyh);
            assert_close("geglu", &super::geglu(&g, &u).unwrap().to_f32_vec().unwrap(), &want, dt.tol());
            let (dg, du) = super::geglu_backward(&g, &u, &dy).unwrap();
            assert_close("geglu_backward dgate", &dg.to_f32_vec().unwrap(), &want_dg, dt.tol());
            assert_close("geglu_backward dup", &du.to_f32_vec().unwrap(), &want_du, dt.tol());
        }
    }

    #[test]
    fn broadcast_errors_are_clear() {
        let dev = device();
        let a = random_tensor(&dev, &[2, 3, 4], DType::F32, 1, 1.0);
        let b = random_tensor(&dev, &[3], DType::F32, 2, 1.0);
        let e = super::add(&a, &b).unwrap_err().to_string();
        assert!(e.contains("add: b") && e.contains("suffix of [2, 3, 4]") && e.contains("[3]"), "{e}");
    }
}
