//! Tests of the gather/scatter ops against the host references, with duplicate indices, unused
//! rows and odd sizes, plus the error messages.

use super::reference as r;
use super::*;
use crate::test_util::*;
use lapidary_core::DType;
use lapidary_testkit::Tol;
use proptest::prelude::*;

proptest! {
    #![proptest_config(crate::test_util::cases(24))]
    #[test]
    fn gather_and_scatter_add_match_reference(v in 1usize..30, c in 1usize..20, n in 1usize..40, dt in dtype_strategy(), seed in any::<u64>()) {
        let dev = device();
        let table = random_tensor(&dev, &[v, c], dt, seed, 1.0);
        let ids: Vec<u32> = lapidary_testkit::random_values(n, seed ^ 9, 1.0).iter().map(|u| (((u + 1.0) / 2.0) * v as f32) as u32 % v as u32).collect();
        let th = table.to_f32_vec().unwrap();
        let out = gather_rows(&table, &ids).unwrap();
        prop_assert_eq!(out.to_f32_vec().unwrap(), r::gather_rows(&th, c, &ids));
        let dy = random_tensor(&dev, &[n, c], dt, seed ^ 3, 1.0);
        let g = gather_rows_backward(&dy, &ids, v).unwrap();
        let tol = Tol { abs: dt.tol().abs * 2.0 * (n as f64).sqrt(), rel: dt.tol().rel };
        assert_close("gather_rows_backward", &g.to_f32_vec().unwrap(), &r::gather_rows_backward(&dy.to_f32_vec().unwrap(), c, &ids, v), tol);
    }

    #[test]
    fn concat_matches_reference(shape in shape_strategy(4, 5), axis_pick in 0usize..4, extra in 1usize..6, dt in dtype_strategy(), seed in any::<u64>()) {
        let dev = device();
        let axis = axis_pick % shape.len();
        let mut shape_b = shape.clone();
        shape_b[axis] = extra;
        let a = random_tensor(&dev, &shape, dt, seed, 1.0);
        let b = random_tensor(&dev, &shape_b, dt, seed ^ 7, 1.0);
        let out = concat(&a, &b, axis).unwrap();
        let mut want_shape = shape.clone();
        want_shape[axis] += extra;
        prop_assert_eq!(out.shape(), want_shape.as_slice());
        let want = r::concat(&a.to_f32_vec().unwrap(), &b.to_f32_vec().unwrap(), shape[..axis].iter().product());
        prop_assert_eq!(out.to_f32_vec().unwrap(), want);
        // Any other dim differing, or the axis past the rank, is an error naming the operand.
        if shape.len() > 1 {
            let mut bad = shape_b.clone();
            let other = (axis + 1) % shape.len();
            bad[other] += 1;
            let e = concat(&a, &random_tensor(&dev, &bad, dt, seed, 1.0), axis).unwrap_err().to_string();
            prop_assert!(e.contains("concat: b"), "{}", e);
        }
        prop_assert!(concat(&a, &b, shape.len()).is_err());
    }

    #[test]
    fn copy_into_overwrites_every_sharing_tensor(n in 1usize..3000, dt in dtype_strategy(), seed in any::<u64>()) {
        let dev = device();
        let dst = random_tensor(&dev, &[n], dt, seed, 1.0);
        let alias = dst.clone();
        let src = random_tensor(&dev, &[n], dt, seed ^ 5, 1.0);
        copy_into(&dst, &src).unwrap();
        prop_assert_eq!(alias.to_f32_vec().unwrap(), src.to_f32_vec().unwrap());
        prop_assert!(copy_into(&dst, &random_tensor(&dev, &[n + 1], dt, seed, 1.0)).is_err());
    }

    #[test]
    fn scatter_rows_and_backward(n in 2usize..30, c in 1usize..12, dt in dtype_strategy(), seed in any::<u64>()) {
        let dev = device();
        let rows: Vec<u32> = (0..n as u32).filter(|i| (i * 7 + seed as u32).is_multiple_of(3)).collect();
        let dst = random_tensor(&dev, &[n, c], dt, seed, 1.0);
        let src = random_tensor(&dev, &[rows.len().max(1), c], dt, seed ^ 1, 1.0);
        if rows.is_empty() { return Ok(()); }
        let (dh, sh) = (dst.to_f32_vec().unwrap(), src.to_f32_vec().unwrap());
        let out = scatter_rows(&dst, &src, &rows).unwrap().to_f32_vec().unwrap();
        let mut want = dh.clone();
        for (i, &r) in rows.iter().enumerate() { want[r as usize * c..(r as usize + 1) * c].copy_from_slice(&sh[i * c..(i + 1) * c]); }
        prop_assert_eq!(&out, &want);
        let dy = random_tensor(&dev, &[n, c], dt, seed ^ 2, 1.0);
        let dyh = dy.to_f32_vec().unwrap();
        let (ddst, dsrc) = scatter_rows_backward(&dy, &rows).unwrap();
        let mut want_dst = dyh.clone();
        for &r in &rows { want_dst[r as usize * c..(r as usize + 1) * c].iter_mut().for_each(|x| *x = 0.0); }
        prop_assert_eq!(ddst.to_f32_vec().unwrap(), want_dst);
        prop_assert_eq!(dsrc.to_f32_vec().unwrap(), r::gather_rows(&dyh, c, &rows));
    }

    #[test]
    fn im2col_and_pool_match_reference(n in 1usize..3, ch in 1usize..4, gh in 1usize..4, gw in 1usize..4, p in 1usize..5, k in 1usize..3, grid in 1usize..4, c in 1usize..9, dt in dtype_strategy(), seed in any::<u64>()) {
        let dev = device();
        let (h, w) = (gh * p, gw * p);
        let px = random_tensor(&dev, &[n, ch, h, w], dt, seed, 1.0);
        let pxh = px.to_f32_vec().unwrap();
        let cols = im2col(&px, p).unwrap();
        let want = r::im2col(&pxh, n, ch, h, w, p);
        prop_assert_eq!(cols.to_f32_vec().unwrap(), want.clone());
        // The backward is the inverse map.
        let back = im2col_backward(&cols, px.shape(), p).unwrap();
        prop_assert_eq!(back.to_f32_vec().unwrap(), pxh);
        let side = grid * k;
        let x = random_tensor(&dev, &[n, side * side, c], dt, seed ^ 4, 1.0);
        let xh = x.to_f32_vec().unwrap();
        let y = avg_pool(&x, k).unwrap();
        assert_close("avg_pool", &y.to_f32_vec().unwrap(), &r::avg_pool(&xh, n, side, c, k), dt.tol());
        // Backward is the adjoint: <pool(x), dy> == <x, pool_backward(dy)>.
        let dy = random_tensor(&dev, y.shape(), dt, seed ^ 5, 1.0);
        let dx = avg_pool_backward(&dy, x.shape(), k).unwrap().to_f32_vec().unwrap();
        let lhs: f64 = r::avg_pool(&xh, n, side, c, k).iter().zip(dy.to_f32_vec().unwrap()).map(|(a, b)| *a as f64 * b as f64).sum();
        let rhs: f64 = xh.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
        prop_assert!((lhs - rhs).abs() < 1e-2 * (1.0 + lhs.abs()), "{} vs {}", lhs, rhs);
    }
}

#[test]
fn index_errors_are_clear() {
    let dev = device();
    let t = random_tensor(&dev, &[4, 3], DType::F32, 1, 1.0);
    let e = gather_rows(&t, &[0, 9]).unwrap_err().to_string();
    assert!(e.contains("index 9 at position 1") && e.contains("4 rows"), "{e}");
    let src = random_tensor(&dev, &[2, 3], DType::F32, 2, 1.0);
    let e = scatter_rows(&t, &src, &[1, 1]).unwrap_err().to_string();
    assert!(e.contains("target row 1 appears twice"), "{e}");
    let e = scatter_rows(&t, &src, &[1]).unwrap_err().to_string();
    assert!(e.contains("2 source rows but 1 target"), "{e}");
    let px = random_tensor(&dev, &[1, 3, 10, 10], DType::F32, 3, 1.0);
    let e = im2col(&px, 4).unwrap_err().to_string();
    assert!(e.contains("multiples of 4"), "{e}");
    let x = random_tensor(&dev, &[1, 12, 2], DType::F32, 4, 1.0);
    let e = avg_pool(&x, 2).unwrap_err().to_string();
    assert!(e.contains("side²"), "{e}");
}
