//! Rotary position embedding (rotate-half, as HF's `apply_rotary_pos_emb`), forward and backward,
//! applied to q or k laid out `[B, H, T, D]`, and the host builder of its cos/sin tables (f32,
//! per-layer base, linear scaling). Not the choice of base per layer: the model decides that.
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_kernels::rope;
//! let dev = Device::cpu().unwrap();
//! let (cos, sin) = rope::tables(&[0, 1], 2, 10_000.0, 1.0);
//! let cos = Tensor::from_f32(&dev, &cos, &[1, 2, 2], DType::F32).unwrap();
//! let sin = Tensor::from_f32(&dev, &sin, &[1, 2, 2], DType::F32).unwrap();
//! let x = Tensor::from_f32(&dev, &[1., 0., 1., 0.], &[1, 1, 2, 2], DType::F32).unwrap();
//! let y = rope::rope(&x, &cos, &sin).unwrap().to_f32_vec().unwrap();
//! // Position 0 is unrotated; position 1 rotates (1, 0) by 1 radian.
//! assert!((y[0] - 1.).abs() < 1e-6 && (y[2] - 1f32.cos()).abs() < 1e-6 && (y[3] - 1f32.sin()).abs() < 1e-6);
//! ```

pub mod reference;

use cubecl::prelude::*;
use lapidary_core::{DType, Error, Result, Tensor, launch};

/// One row of D values (a head at one position) per step, walked as its two halves in vectors:
/// `y1 = x1 cos1 - x2 sin1`, `y2 = x2 cos2 + x1 sin2` (backward: `dx1 = dy1 cos1 + dy2 sin2`,
/// `dx2 = dy2 cos2 - dy1 sin1`). Each unit takes `rows_per_unit` consecutive rows.
#[cube(launch_unchecked)]
fn rope_kernel<F: Float, N: Size>(
    x: &[Vector<F, N>],
    cos: &[Vector<f32, N>],
    sin: &[Vector<f32, N>],
    out: &mut [Vector<F, N>],
    rows: usize,
    heads: usize,
    t_len: usize,
    half_vec: usize,
    rows_per_unit: usize,
    #[comptime] table_batched: bool,
    #[comptime] backward: bool,
) {
    let first = ABSOLUTE_POS * rows_per_unit;
    let end = min(first + rows_per_unit, rows);
    for r in first..end {
        let t = r % t_len;
        let mut tb = 0usize;
        if table_batched {
            tb = r / (t_len * heads);
        }
        let xrow = r * 2 * half_vec;
        let trow = (tb * t_len + t) * 2 * half_vec;
        for v in 0..half_vec {
            let x1 = Vector::<f32, N>::cast_from(x[xrow + v]);
            let x2 = Vector::<f32, N>::cast_from(x[xrow + half_vec + v]);
            let (c1, c2) = (cos[trow + v], cos[trow + half_vec + v]);
            let (s1, s2) = (sin[trow + v], sin[trow + half_vec + v]);
            if backward {
                out[xrow + v] = Vector::cast_from(x1 * c1 + x2 * s2);
                out[xrow + half_vec + v] = Vector::cast_from(x2 * c2 - x1 * s1);
            } else {
                out[xrow + v] = Vector::cast_from(x1 * c1 - x2 * s1);
                out[xrow + half_vec + v] = Vector::cast_from(x2 * c2 + x1 * s2);
            }
        }
    }
}

fn launch_rope(op: &str, x: &Tensor, cos: &Tensor, sin: &Tensor, backward: bool) -> Result<Tensor> {
    if x.rank() != 4 || !x.dim(3).is_multiple_of(2) {
        return Err(Error::shape(format!("{op}: x"), "[B, H, T, D] with D even", x.shape()));
    }
    let (b, h, t, d) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    for (name, tab) in [("cos", cos), ("sin", sin)] {
        tab.expect_dtype(&format!("{op}: {name}"), &[DType::F32])?;
        if tab.rank() != 3 || (tab.dim(0) != 1 && tab.dim(0) != b) || tab.dim(1) != t || tab.dim(2) != d {
            return Err(Error::shape(format!("{op}: {name}"), format!("[1 or {b}, {t}, {d}]"), tab.shape()));
        }
    }
    let out = Tensor::uninit(x.device(), x.shape(), x.dtype())?;
    let rows = b * h * t;
    if rows == 0 || d == 0 {
        return Ok(out);
    }
    let w = launch::vector_width_up_to(&[d / 2], launch::cpu_register_lanes());
    let dev = x.device();
    // The CPU: one run of consecutive rows per core. GPUs: one row per unit.
    let (count, dim, rows_per_unit) = if dev.is_cpu() {
        let (count, dim) = launch::grid_tiles(dev, rows);
        (count, dim, rows.div_ceil(dim.x as usize))
    } else {
        let (count, dim) = launch::grid_1d(dev, rows);
        let units = launch::units_of(&count, &dim);
        (count, dim, rows.div_ceil(units))
    };
    dispatch_float!(x.dtype(), F => unsafe {
        rope_kernel::launch_unchecked::<F>(
            dev.client(), count, dim, w,
            BufferArg::from_raw_parts(x.handle().clone(), x.numel()),
            BufferArg::from_raw_parts(cos.handle().clone(), cos.numel()),
            BufferArg::from_raw_parts(sin.handle().clone(), sin.numel()),
            BufferArg::from_raw_parts(out.handle().clone(), x.numel()),
            rows, h, t, d / 2 / w, rows_per_unit, cos.dim(0) == b && b > 1, backward,
        )
    });
    Ok(out)
}

/// `x * cos + rotate_half(x) * sin` for `x: [B, H, T, D]`, tables `[1 or B, T, D]` (f32).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    launch_rope("rope", x, cos, sin, false)
}

/// Backward of [`rope`] (the transpose of the rotation) for upstream `dy`.
pub fn rope_backward(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    launch_rope("rope_backward", dy, cos, sin, true)
}

/// Host cos/sin tables `[positions.len(), head_dim]` as HF builds them: `inv_freq_i =
/// base^(-2i/D) / factor` (linear scaling), `emb = cat(freqs, freqs)`, computed in f32.
pub fn tables(positions: &[usize], head_dim: usize, base: f64, linear_factor: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv: Vec<f32> =
        (0..half).map(|i| (1.0 / base.powf((2 * i) as f64 / head_dim as f64)) as f32 / linear_factor as f32).collect();
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(positions.len() * head_dim);
    for &p in positions {
        for _ in 0..2 {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::reference as r;
    use crate::test_util::*;
    use lapidary_core::{DType, Tensor};
    use lapidary_testkit::Tol;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_util::cases(24))]
        #[test]
        fn rope_matches_reference(b in 1usize..3, h in 1usize..4, t in 1usize..9, half in 1usize..9, per_batch in any::<bool>(), dt in dtype_strategy(), seed in any::<u64>(), base in prop_oneof![Just(10_000.0f64), Just(1e6)], factor in prop_oneof![Just(1.0f64), Just(8.0)]) {
            let dev = device();
            let d = 2 * half;
            let tb = if per_batch { b } else { 1 };
            let mut cos = Vec::new();
            let mut sin = Vec::new();
            for bi in 0..tb {
                let pos: Vec<usize> = (0..t).map(|p| p + 3 * bi).collect();
                let (c, s) = super::tables(&pos, d, base, factor);
                cos.extend(c);
                sin.extend(s);
            }
            let ct = Tensor::from_f32(&dev, &cos, &[tb, t, d], DType::F32).unwrap();
            let st = Tensor::from_f32(&dev, &sin, &[tb, t, d], DType::F32).unwrap();
            let x = random_tensor(&dev, &[b, h, t, d], dt, seed, 2.0);
            let dy = random_tensor(&dev, &[b, h, t, d], dt, seed ^ 1, 1.0);
            let (xh, dyh) = (x.to_f32_vec().unwrap(), dy.to_f32_vec().unwrap());
            let tol = Tol { abs: dt.tol().abs * 2.0, rel: dt.tol().rel };
            assert_close("rope", &super::rope(&x, &ct, &st).unwrap().to_f32_vec().unwrap(), &r::rope(&xh, &cos, &sin, b, h, t, d, tb), tol);
            assert_close("rope_backward", &super::rope_backward(&dy, &ct, &st).unwrap().to_f32_vec().unwrap(), &r::rope_backward(&dyh, &cos, &sin, b, h, t, d, tb), tol);
        }
    }

    #[test]
    fn tables_match_hf_definition() {
        // position 5, D = 4, base 10000: inv_freq = [1, 0.01]; emb = [5, 0.05, 5, 0.05].
        let (c, s) = super::tables(&[5], 4, 10_000.0, 1.0);
        let want = [5.0f32, 0.05, 5.0, 0.05];
        for i in 0..4 {
            assert!((c[i] - want[i].cos()).abs() < 1e-6 && (s[i] - want[i].sin()).abs() < 1e-6);
        }
        // Linear scaling divides the frequencies.
        let (c8, _) = super::tables(&[40], 4, 10_000.0, 8.0);
        assert!((c8[0] - 5.0f32.cos()).abs() < 1e-5);
    }

    #[test]
    fn odd_head_dim_is_an_error() {
        let dev = device();
        let x = random_tensor(&dev, &[1, 1, 2, 3], DType::F32, 1, 1.0);
        let t = Tensor::from_f32(&dev, &[0.0; 6], &[1, 2, 3], DType::F32).unwrap();
        let e = super::rope(&x, &t, &t).unwrap_err().to_string();
        assert!(e.contains("D even"), "{e}");
    }
}
