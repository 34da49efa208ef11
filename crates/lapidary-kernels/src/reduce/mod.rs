//! Reductions: column sums over rows (bias gradients, batch sums), row sums over the last axis,
//! and the global sum of squares (gradient-norm clipping). Accumulation in f32; each unit owns
//! whole outputs, so results are deterministic (no atomics). Not for softmax or norms, which
//! fuse their own reductions.
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_kernels::reduce;
//! let dev = Device::cpu().unwrap();
//! let x = Tensor::from_f32(&dev, &[1., 2., 3., 4.], &[2, 2], DType::F32).unwrap();
//! assert_eq!(reduce::sum_rows(&x).unwrap().to_f32_vec().unwrap(), vec![4., 6.]);
//! assert_eq!(reduce::sum_last(&x).unwrap().to_f32_vec().unwrap(), vec![3., 7.]);
//! assert_eq!(reduce::sum_sq(&x).unwrap().to_f32_vec().unwrap(), vec![30.]);
//! ```

pub mod reference;

use cubecl::prelude::*;
use lapidary_core::{DType, Error, Result, Tensor, launch};

#[cube(launch_unchecked)]
fn sum_rows_kernel<F: Float, N: Size>(x: &[Vector<F, N>], out: &mut [Vector<F, N>], rows: usize, cols_vec: usize) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut j = ABSOLUTE_POS;
    while j < cols_vec {
        let mut acc = Vector::<f32, N>::new(0.0f32);
        for r in 0..rows {
            acc += Vector::<f32, N>::cast_from(x[r * cols_vec + j]);
        }
        out[j] = Vector::cast_from(acc);
        j += stride;
    }
}

#[cube(launch_unchecked)]
fn sum_last_kernel<F: Float>(x: &[F], out: &mut [F], rows: usize, cols: usize) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut r = ABSOLUTE_POS;
    while r < rows {
        let mut acc = 0.0f32;
        for c in 0..cols {
            acc += f32::cast_from(x[r * cols + c]);
        }
        out[r] = F::cast_from(acc);
        r += stride;
    }
}

#[cube(launch_unchecked)]
fn sum_sq_partial_kernel<F: Float, N: Size>(x: &[Vector<F, N>], partial: &mut [f32]) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    let mut acc = Vector::<f32, N>::new(0.0f32);
    while i < x.len() {
        let v = Vector::<f32, N>::cast_from(x[i]);
        acc = fma(v, v, acc);
        i += stride;
    }
    let mut s = 0.0f32;
    #[unroll]
    for l in 0..N::value() {
        s += acc.extract(l);
    }
    partial[ABSOLUTE_POS] = s;
}

// Kernel code: iterators are not in the cube language.
#[allow(clippy::needless_range_loop)]
#[cube(launch_unchecked)]
fn sum_partials_kernel(partial: &[f32], out: &mut [f32], slot: usize) {
    if ABSOLUTE_POS == 0 {
        let mut s = 0.0f32;
        for i in 0..partial.len() {
            s += partial[i];
        }
        out[slot] = s;
    }
}

/// Sums a `[R, C]` tensor over its rows: returns `[C]` in `x`'s dtype.
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    if x.rank() != 2 {
        return Err(Error::shape("sum_rows", "[R, C]", x.shape()));
    }
    let (rows, cols) = (x.dim(0), x.dim(1));
    let out = Tensor::uninit(x.device(), &[cols], x.dtype())?;
    let w = launch::vector_width(&[cols]);
    let (count, dim) = launch::grid_1d(x.device(), cols / w);
    dispatch_float!(x.dtype(), F => unsafe {
        sum_rows_kernel::launch_unchecked::<F>(
            x.device().client(), count, dim, w,
            BufferArg::from_raw_parts(x.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), cols),
            rows, cols / w,
        )
    });
    Ok(out)
}

/// Sums over the last axis: `[..., C]` -> `[...]` (a `[1]` for a vector), in `x`'s dtype.
pub fn sum_last(x: &Tensor) -> Result<Tensor> {
    if x.rank() == 0 {
        return Err(Error::shape("sum_last", "[..., C]", x.shape()));
    }
    let cols = x.dim(-1);
    let rows = x.numel() / cols.max(1);
    let shape = if x.rank() == 1 { vec![1] } else { x.shape()[..x.rank() - 1].to_vec() };
    let out = Tensor::uninit(x.device(), &shape, x.dtype())?;
    let (count, dim) = launch::grid_1d(x.device(), rows);
    dispatch_float!(x.dtype(), F => unsafe {
        sum_last_kernel::launch_unchecked::<F>(
            x.device().client(), count, dim,
            BufferArg::from_raw_parts(x.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), rows),
            rows, cols,
        )
    });
    Ok(out)
}

/// Sum of squares of every element, as an f32 `[1]` tensor (its square root is the L2 norm;
/// summing these over tensors gives the global norm for gradient clipping). Deterministic: fixed
/// per-unit partials, then one ordered sum.
pub fn sum_sq(x: &Tensor) -> Result<Tensor> {
    sum_sq_each(&[x])
}

/// [`sum_sq`] of each of `xs` (non-empty, one device), into one f32 `[xs.len()]` tensor: a
/// norm per tensor with a single read back to the host, however many tensors (the gradient
/// report and clipping of a step with hundreds of adapter tensors).
pub fn sum_sq_each(xs: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = xs.first() else {
        return Err(Error::invalid("sum_sq_each: no tensor given"));
    };
    let dev = first.device();
    if let Some(x) = xs.iter().find(|x| x.device() != dev) {
        return Err(Error::Device(format!("sum_sq_each: tensors on {dev} and on {}", x.device())));
    }
    let out = Tensor::uninit(dev, &[xs.len()], DType::F32)?;
    for (slot, x) in xs.iter().enumerate() {
        let n = x.numel();
        let w = launch::vector_width(&[n]);
        let (count, dim) = launch::grid_1d(dev, n / w);
        let units = match count {
            CubeCount::Static(c, _, _) => c as usize * dim.num_elems() as usize,
            _ => unreachable!("grid_1d returns a static count"),
        };
        let partial = Tensor::uninit(dev, &[units], DType::F32)?;
        dispatch_float!(x.dtype(), F => unsafe {
            sum_sq_partial_kernel::launch_unchecked::<F>(
                dev.client(), count, dim, w,
                BufferArg::from_raw_parts(x.handle().clone(), n),
                BufferArg::from_raw_parts(partial.handle().clone(), units),
            )
        });
        lapidary_core::launch::guarded(|| unsafe {
            sum_partials_kernel::launch_unchecked(
                dev.client(),
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(1),
                BufferArg::from_raw_parts(partial.handle().clone(), units),
                BufferArg::from_raw_parts(out.handle().clone(), xs.len()),
                slot,
            )
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::reference;
    use crate::test_util::*;
    use lapidary_core::DType;
    use lapidary_testkit::Tol;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_util::cases(20))]
        #[test]
        fn reductions_match_reference(r in 1usize..70, c in 1usize..70, seed in any::<u64>(), dt in dtype_strategy()) {
            let dev = device();
            let x = random_tensor(&dev, &[r, c], dt, seed, 2.0);
            let xh = x.to_f32_vec().unwrap();
            // Sums of r terms of magnitude ≤ 2 stored in dt: compare with an absolute floor.
            let tol = Tol { abs: dt.tol().abs * 4.0, rel: dt.tol().rel };
            assert_close("sum_rows", &super::sum_rows(&x).unwrap().to_f32_vec().unwrap(), &reference::sum_rows(&xh, r, c), tol);
            assert_close("sum_last", &super::sum_last(&x).unwrap().to_f32_vec().unwrap(), &reference::sum_last(&xh, r, c), tol);
            let ss = super::sum_sq(&x).unwrap();
            prop_assert_eq!(ss.dtype(), DType::F32);
            assert_close("sum_sq", &ss.to_f32_vec().unwrap(), &[reference::sum_sq(&xh)], Tol::F32);
        }

        #[test]
        fn sum_sq_each_is_each_tensors_sum_sq(sizes in proptest::collection::vec(1usize..5000, 1..7), seed in any::<u64>(), dt in dtype_strategy()) {
            let dev = device();
            let xs: Vec<_> = sizes.iter().enumerate().map(|(i, &n)| random_tensor(&dev, &[n], dt, seed ^ i as u64, 2.0)).collect();
            let refs: Vec<&_> = xs.iter().collect();
            let each = super::sum_sq_each(&refs).unwrap();
            prop_assert_eq!(each.shape(), &[xs.len()][..]);
            // The same sums bit for bit as one tensor at a time.
            let one_by_one: Vec<f32> = xs.iter().map(|x| super::sum_sq(x).unwrap().to_f32_vec().unwrap()[0]).collect();
            prop_assert_eq!(each.to_f32_vec().unwrap(), one_by_one.clone());
            let want: Vec<f32> = xs.iter().map(|x| reference::sum_sq(&x.to_f32_vec().unwrap())).collect();
            assert_close("sum_sq_each", &one_by_one, &want, Tol::F32);
        }
    }

    #[test]
    fn sum_sq_is_deterministic_and_handles_large_inputs() {
        let dev = device();
        let x = random_tensor(&dev, &[100_003], DType::F32, 5, 1.0);
        let a = super::sum_sq(&x).unwrap().to_f32_vec().unwrap();
        let b = super::sum_sq(&x).unwrap().to_f32_vec().unwrap();
        assert_eq!(a, b);
        assert_close("sum_sq", &a, &[reference::sum_sq(&x.to_f32_vec().unwrap())], Tol::F32);
    }
}
