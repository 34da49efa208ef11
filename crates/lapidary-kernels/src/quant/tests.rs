//! NF4 and bf16 packing against the host references: random shapes (odd sizes, partial blocks),
//! the dequantized values exactly equal to the reference's, the quantization error within the
//! code spacing, double-quantized scales close to the originals.

use super::reference as r;
use super::*;
use crate::test_util::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(crate::test_util::cases(24))]
    #[test]
    fn nf4_dequantizes_like_the_reference(rows in 1usize..40, cols in 1usize..150, seed in any::<u64>()) {
        let dev = device();
        let x = lapidary_testkit::random_values(rows * cols, seed, 2.0);
        let p = PackedMatrix::pack(&dev, &x, &[rows, cols], PackFormat::Nf4).unwrap();
        let got = p.to_f32().unwrap().to_f32_vec().unwrap();
        let (codes, absmax) = r::quantize(&x);
        prop_assert_eq!(&got, &r::dequantize(&codes, &absmax));
        // Every value is within half the widest code gap (0.16) of its block's absmax.
        for (i, (a, b)) in x.iter().zip(&got).enumerate() {
            prop_assert!((a - b).abs() <= 0.17 * absmax[i / r::NF4_BLOCK] + 1e-6, "{} vs {}", a, b);
        }
        prop_assert!(p.size_bytes() <= (rows * cols).div_ceil(8) * 4 + (rows * cols).div_ceil(64) * 4);
    }

    #[test]
    fn double_quant_scales_match_the_reference(n in 1usize..3000, seed in any::<u64>()) {
        let dev = device();
        let x = lapidary_testkit::random_values(n, seed, 3.0);
        let p = PackedMatrix::pack(&dev, &x, &[n], PackFormat::Nf4DoubleQuant).unwrap();
        let got = p.to_f32().unwrap().to_f32_vec().unwrap();
        let (codes, absmax) = r::quantize(&x);
        let (c8, s, off) = r::quantize_scales(&absmax);
        let scales = r::dequantize_scales(&c8, &s, off);
        let want = r::dequantize(&codes, &scales);
        for (a, b) in got.iter().zip(&want) {
            prop_assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{} vs {}", a, b);
        }
        for (a, b) in absmax.iter().zip(&scales) {
            prop_assert!((a - b).abs() <= s.iter().fold(0f32, |m, v| m.max(*v)) / 127.0 * 0.51 + 1e-6);
        }
    }

    #[test]
    fn bf16_packing_rounds_like_the_dtype(n in 1usize..500, seed in any::<u64>()) {
        let dev = device();
        let x = lapidary_testkit::random_values(n, seed, 5.0);
        let p = PackedMatrix::pack(&dev, &x, &[n], PackFormat::Bf16).unwrap();
        let want: Vec<f32> = x.iter().map(|&v| DType::BF16.round(v)).collect();
        prop_assert_eq!(p.to_f32().unwrap().to_f32_vec().unwrap(), want);
        prop_assert_eq!(p.size_bytes(), 2 * n);
    }
}

#[test]
fn codes_are_nearest_and_exact_values_survive() {
    for (k, &c) in r::NF4_CODE.iter().enumerate() {
        assert_eq!(r::nearest_code(c) as usize, k);
    }
    let x = [0.0, 1.0, -1.0, 0.5, -0.25];
    let (codes, absmax) = r::quantize(&x);
    let back = r::dequantize(&codes, &absmax);
    assert_eq!((back[0], back[1], back[2]), (0.0, 1.0, -1.0));
}
