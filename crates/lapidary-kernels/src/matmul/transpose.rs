//! Batched transposes, storage type kept: of the last two dims (`[..., R, C] -> [..., C, R]`)
//! and of the middle two of a rank-4 tensor (`[A, R, C, D] -> [A, C, R, D]`, e.g. tokens × heads
//! to heads × tokens). One kernel: a transpose of blocks of `D` contiguous elements, a plain
//! gather per output element (on the CPU one contiguous run of the output per core); not tiled.

use cubecl::prelude::*;
use lapidary_core::{Error, Result, Tensor, launch};

#[cube(launch_unchecked)]
fn transpose_kernel<F: Float>(x: &[F], out: &mut [F], rows: usize, cols: usize, block: usize, chunk: usize) {
    let n = out.len();
    let plane = rows * cols;
    if chunk > 0 {
        // The CPU: each unit writes one contiguous run of the output (no cache line shared with
        // another core), stepping its coordinates instead of dividing for each element.
        let mut i = ABSOLUTE_POS * chunk;
        let end = min(i + chunk, n);
        if i < end {
            let mut d = i % block;
            let j = i / block;
            let mut b = j / plane;
            let rem = j % plane;
            let mut c = rem / rows;
            let mut r = rem % rows;
            while i < end {
                out[i] = x[((b * rows + r) * cols + c) * block + d];
                i += 1;
                d += 1;
                if d == block {
                    d = 0;
                    r += 1;
                    if r == rows {
                        r = 0;
                        c += 1;
                        if c == cols {
                            c = 0;
                            b += 1;
                        }
                    }
                }
            }
        }
    } else {
        // GPUs: grid-stride, neighbouring units on neighbouring elements.
        let stride = CUBE_DIM as usize * CUBE_COUNT;
        let mut i = ABSOLUTE_POS;
        while i < n {
            // out index i = (b, c, r, d)
            let d = i % block;
            let j = i / block;
            let b = j / plane;
            let rem = j % plane;
            let c = rem / rows;
            let r = rem % rows;
            out[i] = x[((b * rows + r) * cols + c) * block + d];
            i += stride;
        }
    }
}

fn launch_transpose(x: &Tensor, shape: Vec<usize>, rows: usize, cols: usize, block: usize) -> Result<Tensor> {
    let out = Tensor::uninit(x.device(), &shape, x.dtype())?;
    let n = x.numel();
    let dev = x.device();
    let (count, dim, chunk) = if dev.is_cpu() {
        // One run per core, in whole cache lines.
        let (count, dim) = launch::grid_tiles(dev, n.div_ceil(16));
        let units = dim.x as usize;
        (count, dim, n.div_ceil(units).next_multiple_of(16).max(16))
    } else {
        let (count, dim) = launch::grid_1d(dev, n);
        (count, dim, 0)
    };
    dispatch_float!(x.dtype(), F => unsafe {
        transpose_kernel::launch_unchecked::<F>(
            dev.client(),
            count,
            dim,
            BufferArg::from_raw_parts(x.handle().clone(), n),
            BufferArg::from_raw_parts(out.handle().clone(), n),
            rows,
            cols,
            block,
            chunk,
        )
    });
    Ok(out)
}

/// Swaps the middle two dims of a rank-4 tensor: `[A, R, C, D] -> [A, C, R, D]` (its own
/// backward, with R and C exchanged).
pub fn swap_middle(x: &Tensor) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::shape("swap_middle", "[A, R, C, D]", x.shape()));
    }
    let s = x.shape();
    launch_transpose(x, vec![s[0], s[2], s[1], s[3]], s[1], s[2], s[3])
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
    launch_transpose(x, shape, rows, cols, 1)
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_util::cases(16))]
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

        #[test]
        fn swap_middle_matches_reference(a in 1usize..3, r in 1usize..9, c in 1usize..9, d in 1usize..7, seed in any::<u64>(), dt in dtype_strategy()) {
            let dev = device();
            let x = random_tensor(&dev, &[a, r, c, d], dt, seed, 1.0);
            let xh = x.to_f32_vec().unwrap();
            let y = super::swap_middle(&x).unwrap();
            prop_assert_eq!(y.shape(), &[a, c, r, d]);
            let got = y.to_f32_vec().unwrap();
            for ai in 0..a { for i in 0..r { for j in 0..c { for k in 0..d {
                prop_assert_eq!(got[((ai * c + j) * r + i) * d + k], xh[((ai * r + i) * c + j) * d + k]);
            }}}}
            prop_assert_eq!(super::swap_middle(&y).unwrap().to_f32_vec().unwrap(), xh);
        }
    }
}
