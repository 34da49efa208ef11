//! Attention tests: every mask kind, GQA, odd sizes, all dtypes, against the f64 reference.

use super::reference::{self as r, Dims};
use super::*;
use crate::test_util::*;
use lapidary_core::DType;
use lapidary_testkit::{Tol, TolExt};
use proptest::prelude::*;

fn host(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(30))]
    #[test]
    fn attention_matches_reference(
        b in 1usize..3, hkv in 1usize..3, groups in 1usize..3, t in 1usize..12, d in 1usize..10,
        causal in any::<bool>(), window in proptest::option::of(1usize..6), use_blocks in any::<bool>(),
        use_pad in any::<bool>(), dt in dtype_strategy(), seed in any::<u64>(),
    ) {
        let dev = device();
        let h = hkv * groups;
        let s = t;
        let dims = Dims { b, h, hkv, t, s, d };
        let q = random_tensor(&dev, &[b, h, t, d], dt, seed, 1.0);
        let k = random_tensor(&dev, &[b, hkv, s, d], dt, seed ^ 1, 1.0);
        let v = random_tensor(&dev, &[b, hkv, s, d], dt, seed ^ 2, 1.0);
        let dout = random_tensor(&dev, &[b, h, t, d], dt, seed ^ 3, 1.0);
        // Block ids: a run of "image" tokens with id 1 in the middle, another with id 2 after it.
        let blocks: Vec<f32> = (0..b * s).map(|i| { let p = i % s; if p > 0 && p < 1 + s / 3 { 1.0 } else if p > s / 3 && p < 1 + 2 * s / 3 { 2.0 } else { 0.0 } }).collect();
        // Padding: the last key of batch row 0 is padding (left-padding style on row 1: the first).
        let keep: Vec<f32> = (0..b * s).map(|i| { let (bi, p) = (i / s, i % s); if (bi == 0 && p == s - 1 && s > 1) || (bi == 1 && p == 0) { 0.0 } else { 1.0 } }).collect();
        let mut mask = AttentionMask { causal, window: if causal { window } else { None }, ..Default::default() };
        if use_blocks { mask = mask.with_blocks(Tensor::from_f32(&dev, &blocks, &[b, s], DType::F32).unwrap()); }
        if use_pad { mask = mask.with_key_padding(Tensor::from_f32(&dev, &keep, &[b, s], DType::F32).unwrap()); }
        let scale = 1.0 / (d as f32).sqrt();
        let (qh, kh, vh, dh) = (host(&q), host(&k), host(&v), host(&dout));
        let p = r::probs(&qh, &kh, dims, scale, &mask, use_blocks.then_some(&blocks[..]), use_pad.then_some(&keep[..]));
        let (out, saved) = attention(&q, &k, &v, scale, &mask).unwrap();
        let tol = Tol { abs: dt.tol().abs * 2.0, rel: dt.tol().rel * 2.0 };
        assert_close("attention probs", &host(&saved.probs), &p.iter().map(|&x| x as f32).collect::<Vec<_>>(), tol);
        assert_close("attention out", &host(&out), &r::forward(&p, &vh, dims), tol);
        let g = attention_backward(&q, &saved, &dout, scale).unwrap();
        let (dq, dk, dv) = r::backward(&qh, &kh, &vh, &p, &dh, dims, scale);
        let tg = Tol { abs: dt.tol().abs * 4.0 * (s as f64).sqrt(), rel: dt.tol().rel * 4.0 };
        assert_close("attention dq", &host(&g.q), &dq, tg);
        assert_close("attention dk", &host(&g.k), &dk, tg);
        assert_close("attention dv", &host(&g.v), &dv, tg);
    }
}

#[test]
fn sliding_window_and_blocks_follow_the_definition() {
    // window 2, causal: query 3 sees keys 2, 3; with block ids, query 1 (block 1) also sees key 2.
    let m = AttentionMask::sliding(2);
    let allowed: Vec<usize> = (0..5).filter(|&k| m.allows(None, None, 5, 0, 3, k)).collect();
    assert_eq!(allowed, vec![2, 3]);
    let blocks = [0.0, 1.0, 1.0, 0.0, 0.0];
    let allowed: Vec<usize> = (0..5).filter(|&k| m.allows(Some(&blocks), None, 5, 0, 1, k)).collect();
    assert_eq!(allowed, vec![0, 1, 2]);
}

#[test]
fn gqa_shape_error_is_clear() {
    let dev = device();
    let q = random_tensor(&dev, &[1, 3, 4, 8], DType::F32, 1, 1.0);
    let k = random_tensor(&dev, &[1, 2, 4, 8], DType::F32, 2, 1.0);
    let e = attention(&q, &k, &k, 1.0, &AttentionMask::causal()).unwrap_err().to_string();
    assert!(e.contains("attention: k") && e.contains("divisible by Hkv"), "{e}");
}
