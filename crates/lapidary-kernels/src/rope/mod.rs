//! Rotary position embedding (rotate-half, as HF's `apply_rotary_pos_emb`), forward and backward,
//! applied to q or k laid out `[B, H, T, D]`: over the whole head ([`rope`]) or over `parts`
//! equal sections of it, each rotated within itself with its own positions ([`rope_parts`], HF's
//! `apply_multidimensional_rope`: Gemma 4's 2D RoPE of image patches). Also the host builders of
//! the cos/sin tables (f32): default frequencies with linear scaling, proportional (partial)
//! frequencies whose tail leaves channels unrotated, and axial 2D tables. Not the choice of base
//! or kind per layer: the model decides that.
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

/// One row of D values (a head at one position) per step, each of its `parts` sections walked as
/// its two halves in vectors: `y1 = x1 cos1 - x2 sin1`, `y2 = x2 cos2 + x1 sin2` (backward:
/// `dx1 = dy1 cos1 + dy2 sin2`, `dx2 = dy2 cos2 - dy1 sin1`). Each unit takes `rows_per_unit`
/// consecutive rows.
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
    parts: usize,
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
        let width = parts * 2 * half_vec;
        for k in 0..parts {
            let xrow = r * width + k * 2 * half_vec;
            let trow = (tb * t_len + t) * width + k * 2 * half_vec;
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
}

fn launch_rope(op: &str, x: &Tensor, cos: &Tensor, sin: &Tensor, parts: usize, backward: bool) -> Result<Tensor> {
    if parts == 0 {
        return Err(Error::invalid(format!("{op}: parts must be at least 1")));
    }
    if x.rank() != 4 || !x.dim(3).is_multiple_of(2 * parts) {
        let want = if parts == 1 {
            "[B, H, T, D] with D even".to_string()
        } else {
            format!("[B, H, T, D] with D a multiple of {}", 2 * parts)
        };
        return Err(Error::shape(format!("{op}: x"), want, x.shape()));
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
    let w = launch::vector_width_up_to(&[d / (2 * parts)], launch::cpu_register_lanes());
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
            rows, h, t, d / (2 * parts) / w, parts, rows_per_unit, cos.dim(0) == b && b > 1, backward,
        )
    });
    Ok(out)
}

/// `x * cos + rotate_half(x) * sin` for `x: [B, H, T, D]`, tables `[1 or B, T, D]` (f32).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    launch_rope("rope", x, cos, sin, 1, false)
}

/// Backward of [`rope`] (the transpose of the rotation) for upstream `dy`.
pub fn rope_backward(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    launch_rope("rope_backward", dy, cos, sin, 1, true)
}

/// [`rope`] over `parts` equal sections of the head, each rotated within itself (rotate-half of
/// the section) by the matching section of the tables, as HF's `apply_multidimensional_rope`
/// with `parts` position dimensions: Gemma 4's image patches use 2 (tables from
/// [`axial_tables`]). `D` must be a multiple of `2 * parts`; `parts = 1` is [`rope`].
pub fn rope_parts(x: &Tensor, cos: &Tensor, sin: &Tensor, parts: usize) -> Result<Tensor> {
    launch_rope("rope_parts", x, cos, sin, parts, false)
}

/// Backward of [`rope_parts`] for upstream `dy`.
pub fn rope_parts_backward(dy: &Tensor, cos: &Tensor, sin: &Tensor, parts: usize) -> Result<Tensor> {
    launch_rope("rope_parts_backward", dy, cos, sin, parts, true)
}

/// Host cos/sin tables `[positions.len(), head_dim]` as HF builds them: `inv_freq_i =
/// base^(-2i/D) / factor` (linear scaling), `emb = cat(freqs, freqs)`, computed in f32.
pub fn tables(positions: &[usize], head_dim: usize, base: f64, linear_factor: f64) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f32> = default_inv_freq(head_dim, base).iter().map(|f| f / linear_factor as f32).collect();
    let positions: Vec<f32> = positions.iter().map(|&p| p as f32).collect();
    tables_from(&positions, &inv)
}

/// HF's default inverse frequencies, `base^(-2i/D)` for `i < D/2`, as f32.
pub fn default_inv_freq(head_dim: usize, base: f64) -> Vec<f32> {
    (0..head_dim / 2).map(|i| (1.0 / base.powf((2 * i) as f64 / head_dim as f64)) as f32).collect()
}

/// HF's proportional RoPE (`rope_type: "proportional"`, Gemma 4's full-attention layers): the
/// first `floor(partial_rotary_factor · D / 2)` frequencies `base^(-2i/D)` (the exponent over the
/// whole head), divided by `factor`, then zeros, `D / 2` in all: the channels with a zero
/// frequency are left as they are.
pub fn proportional_inv_freq(head_dim: usize, base: f64, partial_rotary_factor: f64, factor: f64) -> Vec<f32> {
    let rotated = (partial_rotary_factor * head_dim as f64 / 2.0).floor() as usize;
    (0..head_dim / 2)
        .map(
            |i| {
                if i < rotated {
                    (1.0 / base.powf((2 * i) as f64 / head_dim as f64)) as f32 / factor as f32
                } else {
                    0.0
                }
            },
        )
        .collect()
}

/// Host cos/sin tables `[positions.len(), 2 · inv_freq.len()]` from inverse frequencies:
/// `emb = cat(p · inv_freq, p · inv_freq)`, computed in f32 as HF does.
pub fn tables_from(positions: &[f32], inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions.len() * 2 * inv_freq.len());
    let mut sin = Vec::with_capacity(cos.capacity());
    for &p in positions {
        for _ in 0..2 {
            for f in inv_freq {
                let a = p * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    (cos, sin)
}

/// Axial 2D tables `[positions.len(), head_dim]` for [`rope_parts`] with 2 parts, as Gemma 4's
/// vision rotary embedding builds them: frequencies `base^(-2i/(D/2))` for `i < D/4`, the first
/// half of each row from the first coordinate, the second half from the second (`[h, h, w, w]`).
/// `head_dim` must be a multiple of 4.
pub fn axial_tables(positions: &[[f32; 2]], head_dim: usize, base: f64) -> (Vec<f32>, Vec<f32>) {
    let inv = default_inv_freq(head_dim / 2, base);
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(cos.capacity());
    for p in positions {
        for axis in p {
            let (c, s) = tables_from(&[*axis], &inv);
            cos.extend(c);
            sin.extend(s);
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

    proptest! {
        #![proptest_config(crate::test_util::cases(16))]
        #[test]
        fn rope_parts_matches_reference(b in 1usize..3, h in 1usize..3, t in 1usize..7, quarter in 1usize..5, parts in 1usize..4, per_batch in any::<bool>(), dt in dtype_strategy(), seed in any::<u64>()) {
            let dev = device();
            let d = 2 * parts * quarter;
            let tb = if per_batch { b } else { 1 };
            // Random angles: every table entry its own value.
            let cos = random_tensor(&dev, &[tb, t, d], DType::F32, seed ^ 2, 1.0);
            let sin = random_tensor(&dev, &[tb, t, d], DType::F32, seed ^ 3, 1.0);
            let (ch, sh) = (cos.to_f32_vec().unwrap(), sin.to_f32_vec().unwrap());
            let x = random_tensor(&dev, &[b, h, t, d], dt, seed, 2.0);
            let dy = random_tensor(&dev, &[b, h, t, d], dt, seed ^ 1, 1.0);
            let (xh, dyh) = (x.to_f32_vec().unwrap(), dy.to_f32_vec().unwrap());
            let tol = Tol { abs: dt.tol().abs * 2.0, rel: dt.tol().rel };
            let y = super::rope_parts(&x, &cos, &sin, parts).unwrap().to_f32_vec().unwrap();
            assert_close("rope_parts", &y, &r::rope_parts(&xh, &ch, &sh, b, h, t, d, tb, parts), tol);
            let dx = super::rope_parts_backward(&dy, &cos, &sin, parts).unwrap().to_f32_vec().unwrap();
            assert_close("rope_parts_backward", &dx, &r::rope_parts_backward(&dyh, &ch, &sh, b, h, t, d, tb, parts), tol);
        }
    }

    #[test]
    fn two_parts_rotate_each_half_of_the_head_by_its_own_position() {
        // D = 8, two parts of 4: the first rotated by the first coordinate, the second by the
        // second; a part's first channel pairs with its third.
        let dev = device();
        let (cos, sin) = super::axial_tables(&[[1.0, 3.0]], 8, 100.0);
        let x: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        let xt = Tensor::from_f32(&dev, &x, &[1, 1, 1, 8], DType::F32).unwrap();
        let ct = Tensor::from_f32(&dev, &cos, &[1, 1, 8], DType::F32).unwrap();
        let st = Tensor::from_f32(&dev, &sin, &[1, 1, 8], DType::F32).unwrap();
        let y = super::rope_parts(&xt, &ct, &st, 2).unwrap().to_f32_vec().unwrap();
        // Frequencies over a part of 4: [1, 100^-0.5] = [1, 0.1].
        for (k, pos) in [(0usize, 1.0f32), (1, 3.0)] {
            for (i, f) in [1.0f32, 0.1].into_iter().enumerate() {
                let (a, b) = (x[4 * k + i], x[4 * k + i + 2]);
                let (c, s) = ((pos * f).cos(), (pos * f).sin());
                assert!((y[4 * k + i] - (a * c - b * s)).abs() < 1e-5, "{y:?}");
                assert!((y[4 * k + i + 2] - (b * c + a * s)).abs() < 1e-5, "{y:?}");
            }
        }
        // One part is plain RoPE.
        let (c1, s1) = super::tables(&[2, 5], 8, 10_000.0, 1.0);
        let x2 = random_tensor(&dev, &[1, 2, 2, 8], DType::F32, 9, 1.0);
        let (c1, s1) = (
            Tensor::from_f32(&dev, &c1, &[1, 2, 8], DType::F32).unwrap(),
            Tensor::from_f32(&dev, &s1, &[1, 2, 8], DType::F32).unwrap(),
        );
        assert_eq!(
            super::rope_parts(&x2, &c1, &s1, 1).unwrap().to_f32_vec().unwrap(),
            super::rope(&x2, &c1, &s1).unwrap().to_f32_vec().unwrap()
        );
    }

    #[test]
    fn proportional_frequencies_leave_the_tail_unrotated() {
        // D = 8, partial 0.5: two rotated frequencies base^(-2i/8), then two zeros.
        let inv = super::proportional_inv_freq(8, 10_000.0, 0.5, 1.0);
        assert_eq!(inv.len(), 4);
        assert!((inv[0] - 1.0).abs() < 1e-7 && (inv[1] - 0.1).abs() < 1e-7 && inv[2] == 0.0 && inv[3] == 0.0);
        let (cos, sin) = super::tables_from(&[7.0], &inv);
        assert_eq!((cos[2], sin[2], cos[7], sin[7]), (1.0, 0.0, 1.0, 0.0));
        // A factor divides the rotated ones; 0.25 of D = 6 rotates floor(0.75) = 0 of them.
        assert!((super::proportional_inv_freq(8, 10_000.0, 0.5, 4.0)[1] - 0.025).abs() < 1e-7);
        assert!(super::proportional_inv_freq(6, 10_000.0, 0.25, 1.0).iter().all(|&f| f == 0.0));
        // Full proportion is the default table.
        assert_eq!(super::proportional_inv_freq(8, 500.0, 1.0, 1.0), super::default_inv_freq(8, 500.0));
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
        let x = random_tensor(&dev, &[1, 1, 2, 6], DType::F32, 1, 1.0);
        let t = Tensor::from_f32(&dev, &[0.0; 12], &[1, 2, 6], DType::F32).unwrap();
        let e = super::rope_parts(&x, &t, &t, 2).unwrap_err().to_string();
        assert!(e.contains("rope_parts") && e.contains("multiple of 4"), "{e}");
        assert!(super::rope_parts(&x, &t, &t, 0).unwrap_err().to_string().contains("at least 1"));
    }
}
