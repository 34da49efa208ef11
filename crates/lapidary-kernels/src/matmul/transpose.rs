//! Batched transpose of the last two dims: `[..., R, C] -> [..., C, R]`, storage type kept.
//! A plain gather per output element; not tiled (it is a small share of a matmul's time).

use cubecl::prelude::*;
use lapidary_core::{Error, Result, Tensor, launch};

#[cube(launch_unchecked)]
fn transpose_kernel<F: Float>(x: &[F], out: &mut [F], rows: usize, cols: usize) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let plane = rows * cols;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        // out index i = (b, c, r)
        let b = i / plane;
        let rem = i % plane;
        let c = rem / rows;
        let r = rem % rows;
        out[i] = x[b * plane + r * cols + c];
        i += stride;
    }
}

/// Swaps the last two dims of `x` (rank ≥ 2).
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 {
        return Err(Error::shape("transpose", "[..., R, C] (rank >= 2)", x.shape()));
    }
    let (rows, cols) = (x.dim(-2), x.dim(-1));
    let mut shape = x.shape().to_vec();
    let r = shape.len();
    shape.swap(r - 2, r - 1);
    let out = Tensor::uninit(x.device(), &shape, x.dtype())?;
    let n = x.numel();
    let (count, dim) = launch::grid_1d(x.device(), n);
    dispatch_float!(x.dtype(), F => unsafe {
        transpose_kernel::launch_unchecked::<F>(
            x.device().client(), count, dim,
            BufferArg::from_raw_parts(x.handle().clone(), n),
            BufferArg::from_raw_parts(out.handle().clone(), n),
            rows, cols,
        )
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn transpose_matches_reference(b in 1usize..4, r in 1usize..40, c in 1usize..40, seed in any::<u64>(), dt in dtype_strategy()) {
            let dev = device();
            let x = random_tensor(&dev, &[b, r, c], dt, seed, 1.0);
            let xh = x.to_f32_vec().unwrap();
            let y = super::transpose(&x).unwrap();
            prop_assert_eq!(y.shape(), &[b, c, r]);
            let got = y.to_f32_vec().unwrap();
            for bi in 0..b { for i in 0..r { for j in 0..c {
                prop_assert_eq!(got[bi * r * c + j * r + i], xh[bi * r * c + i * c + j]);
            }}}
        }
    }
}
