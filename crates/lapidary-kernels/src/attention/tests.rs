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

/// Host mask data of one random case: block ids, key padding, segment ids (`[B, S]` each).
struct MaskData {
    blocks: Vec<f32>,
    keep: Vec<f32>,
    segments: Vec<f32>,
}

/// Random ids over `[B, S]`: contiguous runs (images, packed conversations) or scattered ids.
fn random_ids(n: usize, s: usize, seed: u64, zero_bias: f32, runs: bool) -> Vec<f32> {
    let r = random_values(n, seed, 1.0);
    let mut ids = vec![0f32; n];
    for i in 0..n {
        ids[i] = if runs {
            let prev = if i % s == 0 { 0.0 } else { ids[i - 1] };
            if r[i] > 0.6 { prev + 1.0 } else { prev }
        } else if r[i] < zero_bias {
            0.0
        } else if r[i] < 0.4 {
            1.0
        } else {
            2.0
        };
    }
    ids
}

fn mask_data(b: usize, s: usize, seed: u64, runs: bool) -> MaskData {
    let n = b * s;
    let blocks = random_ids(n, s, seed, -0.2, runs);
    // Image blocks are positive ids; runs count from 0, so shift them so some tokens are text.
    let blocks =
        if runs { blocks.iter().map(|&x| if x as usize % 2 == 1 { x } else { 0.0 }).collect() } else { blocks };
    let keep = random_values(n, seed ^ 7, 1.0).iter().map(|&x| if x < -0.7 { 0.0 } else { 1.0 }).collect();
    let segments = random_ids(n, s, seed ^ 11, -1.0, runs);
    MaskData { blocks, keep, segments }
}

/// One random attention problem checked on `path` against the f64 reference: output, the
/// materialized path's probabilities, and dq, dk, dv.
#[allow(clippy::too_many_arguments)]
fn check_case(path: AttentionPath, dims: Dims, dt: DType, mask: AttentionMask, uses: [bool; 3], runs: bool, seed: u64) {
    let md = mask_data(dims.b, dims.s, seed ^ 4, runs);
    check_case_with(path, dims, dt, mask, uses, md, seed);
}

/// [`check_case`] on given mask data.
fn check_case_with(
    path: AttentionPath,
    dims: Dims,
    dt: DType,
    mut mask: AttentionMask,
    uses: [bool; 3],
    md: MaskData,
    seed: u64,
) {
    let dev = device();
    let Dims { b, h, hkv, t, s, d } = dims;
    let q = random_tensor(&dev, &[b, h, t, d], dt, seed, 1.0);
    let k = random_tensor(&dev, &[b, hkv, s, d], dt, seed ^ 1, 1.0);
    let v = random_tensor(&dev, &[b, hkv, s, d], dt, seed ^ 2, 1.0);
    let dout = random_tensor(&dev, &[b, h, t, d], dt, seed ^ 3, 1.0);
    let as_t = |x: &[f32]| Tensor::from_f32(&dev, x, &[b, s], DType::F32).unwrap();
    let [use_blocks, use_pad, use_seg] = uses;
    if use_blocks {
        mask = mask.with_blocks(as_t(&md.blocks));
    }
    if use_pad {
        mask = mask.with_key_padding(as_t(&md.keep));
    }
    if use_seg {
        mask = mask.with_segments(as_t(&md.segments));
    }
    let scale = 1.0 / (d as f32).sqrt();
    let (qh, kh, vh, dh) = (host(&q), host(&k), host(&v), host(&dout));
    let p = r::probs(
        &qh,
        &kh,
        dims,
        scale,
        &mask,
        use_blocks.then_some(&md.blocks[..]),
        use_pad.then_some(&md.keep[..]),
        use_seg.then_some(&md.segments[..]),
    );
    let (out, saved) = attention_with(&q, &k, &v, scale, &mask, path).unwrap();
    let tol = Tol { abs: dt.tol().abs * 2.0, rel: dt.tol().rel * 2.0 };
    match path {
        AttentionPath::Materialized => {
            let probs = saved.probs().expect("the materialized path keeps its probabilities");
            assert_close("attention probs", &host(probs), &p.iter().map(|&x| x as f32).collect::<Vec<_>>(), tol);
        }
        _ => assert!(saved.probs().is_none() && saved.log_sum_exp().is_some(), "the fused path keeps no probabilities"),
    }
    assert_close("attention out", &host(&out), &r::forward(&p, &vh, dims), tol);
    let g = attention_backward(&q, &saved, &dout, scale).unwrap();
    let (dq, dk, dv) = r::backward(&qh, &kh, &vh, &p, &dh, dims, scale);
    let tg = Tol { abs: dt.tol().abs * 4.0 * (s as f64).sqrt(), rel: dt.tol().rel * 4.0 };
    assert_close("attention dq", &host(&g.q), &dq, tg);
    assert_close("attention dk", &host(&g.k), &dk, tg);
    assert_close("attention dv", &host(&g.v), &dv, tg);
}

proptest! {
    #![proptest_config(crate::test_util::cases(24))]
    #[test]
    fn attention_matches_reference(
        b in 1usize..3, hkv in 1usize..3, groups in 1usize..3, t in 1usize..12, d in 1usize..10,
        causal in any::<bool>(), window in proptest::option::of(1usize..6), use_blocks in any::<bool>(),
        blocks_in_window in any::<bool>(), use_pad in any::<bool>(), use_seg in any::<bool>(), runs in any::<bool>(),
        dt in dtype_strategy(), seed in any::<u64>(),
    ) {
        let dims = Dims { b, h: hkv * groups, hkv, t, s: t, d };
        let mask = AttentionMask { causal, window: if causal { window } else { None }, blocks_in_window, ..Default::default() };
        check_case(AttentionPath::Materialized, dims, dt, mask, [use_blocks, use_pad, use_seg], runs, seed);
    }

    #[test]
    fn flash_attention_matches_reference(
        b in 1usize..3, hkv in 1usize..3, groups in 1usize..4, t in 1usize..45, cached in 0usize..4,
        d in prop_oneof![1usize..10, Just(16usize), Just(24usize), Just(72usize)],
        causal in any::<bool>(), window in proptest::option::of(1usize..20), use_blocks in any::<bool>(),
        blocks_in_window in any::<bool>(), use_pad in any::<bool>(), use_seg in any::<bool>(), runs in any::<bool>(),
        dt in dtype_strategy(), seed in any::<u64>(),
    ) {
        // With a KV cache the queries are the last `t` of `s` positions.
        let cached = if causal { cached } else { 0 };
        let dims = Dims { b, h: hkv * groups, hkv, t, s: t + cached, d };
        let mask = AttentionMask {
            causal, window: if causal { window } else { None }, blocks_in_window, q_offset: cached, ..Default::default()
        };
        check_case(AttentionPath::Flash, dims, dt, mask, [use_blocks, use_pad, use_seg], runs, seed);
    }
}

proptest! {
    #![proptest_config(crate::test_util::cases(16))]
    #[test]
    fn tiled_flash_attention_matches_reference(
        b in 1usize..3, hkv in 1usize..3, groups in 1usize..4, t in 1usize..45, cached in 0usize..4,
        d in prop_oneof![1usize..10, Just(16usize), Just(24usize), Just(72usize)],
        causal in any::<bool>(), window in proptest::option::of(1usize..20), use_blocks in any::<bool>(),
        blocks_in_window in any::<bool>(), use_pad in any::<bool>(), use_seg in any::<bool>(), runs in any::<bool>(),
        dt in dtype_strategy(), seed in any::<u64>(),
    ) {
        let cached = if causal { cached } else { 0 };
        let dims = Dims { b, h: hkv * groups, hkv, t, s: t + cached, d };
        let mask = AttentionMask {
            causal, window: if causal { window } else { None }, blocks_in_window, q_offset: cached, ..Default::default()
        };
        check_case(AttentionPath::Tiled, dims, dt, mask, [use_blocks, use_pad, use_seg], runs, seed);
    }
}

/// The tiled kernels in each of `layouts` against the CPU-shaped ones on one case: random q, k, v
/// and dO of `dims` (seeds from `seed`), queries after `dims.s - dims.t` cached tokens, image
/// blocks over keys `block`, the sliding `window`; forward, log-sum-exp and every gradient, with
/// dK and dV in one launch and in one launch each (as wide heads run on a GPU). Returns the
/// largest forward difference of each layout.
fn tiled_against_flash(
    dims: Dims,
    seed: u64,
    block: std::ops::Range<usize>,
    window: usize,
    blocks_in_window: bool,
    layouts: &[super::flash_tiled::TiledShape],
) -> Vec<f32> {
    use super::flash_tiled::tiled_forward;
    use super::flash_tiled_backward::{KvLaunches, tiled_backward_in};
    let dev = device();
    let Dims { b, h, hkv, t, s, d } = dims;
    let q = random_tensor(&dev, &[b, h, t, d], DType::F32, seed, 1.0);
    let k = random_tensor(&dev, &[b, hkv, s, d], DType::F32, seed + 1, 1.0);
    let v = random_tensor(&dev, &[b, hkv, s, d], DType::F32, seed + 2, 1.0);
    let dout = random_tensor(&dev, &[b, h, t, d], DType::F32, seed + 3, 1.0);
    let blocks: Vec<f32> = (0..b * s).map(|i| if block.contains(&(i % s)) { 1.0 } else { 0.0 }).collect();
    let mut mask =
        AttentionMask::sliding(window).with_blocks(Tensor::from_f32(&dev, &blocks, &[b, s], DType::F32).unwrap());
    if blocks_in_window {
        mask = mask.with_blocks_in_window();
    }
    mask.q_offset = s - t;
    let scale = 1.0 / (d as f32).sqrt();
    let (of, sf) = attention_with(&q, &k, &v, scale, &mask, AttentionPath::Flash).unwrap();
    let gf = attention_backward(&q, &sf, &dout, scale).unwrap();
    let lse = sf.log_sum_exp().unwrap();
    let mut offs = Vec::new();
    for &shape in layouts {
        let tol = if shape.bf16_products { DType::BF16.tol() } else { Tol { abs: 1e-5, rel: 1e-4 } };
        let what = |x: &str| format!("{x} at d={d} in {shape:?}");
        let (ot, lt) = tiled_forward(&q, &k, &v, scale, &mask, shape).unwrap();
        assert_close(&what("out"), &host(&ot), &host(&of), tol);
        assert_close(&what("lse"), &host(&lt), &host(lse), tol);
        offs.push(host(&ot).iter().zip(host(&of)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max));
        for kv in [KvLaunches::Together(shape), KvLaunches::Apart { keys: shape, values: shape }] {
            let what = |x: &str| format!("{} ({kv:?})", what(x));
            let g = tiled_backward_in(&q, &k, &v, &of, lse, &dout, scale, &mask, shape, kv).unwrap();
            assert_close(&what("dq"), &host(&g.q), &host(&gf.q), tol);
            assert_close(&what("dk"), &host(&g.k), &host(&gf.k), tol);
            assert_close(&what("dv"), &host(&g.v), &host(&gf.v), tol);
        }
    }
    offs
}

#[test]
fn tiled_kernels_agree_with_the_cpu_shaped_ones_in_every_layout() {
    // Groups of one or several units, one to three groups a cube, a head dimension padded to a
    // multiple of 16, grouped-query heads, queries after a cache, image blocks and a window.
    // Last, f32 tensors with their products in bf16 (as tensor cores would take them): within
    // bf16's tolerance, and measurably off the f32 products.
    use super::flash_tiled::TiledShape;
    let d = 20;
    let layouts: Vec<TiledShape> = [(1, 1, false), (1, 2, false), (2, 2, false), (3, 1, false), (2, 1, true)]
        .into_iter()
        .map(|(groups, units, bf16_products)| TiledShape {
            groups,
            units,
            d,
            dp: 32,
            tensor_cores: false,
            bf16_products,
        })
        .collect();
    let dims = Dims { b: 2, h: 4, hkv: 2, t: 37, s: 40, d };
    let offs = tiled_against_flash(dims, 21, 5..17, 23, false, &layouts);
    for (shape, off) in layouts.iter().zip(offs) {
        assert_eq!(off > 1e-4, shape.bf16_products, "{shape:?}: largest difference {off}");
    }
}

#[test]
fn flash_and_materialized_agree_on_a_long_packed_row() {
    // 150 tokens in three segments (text, image block, text | text), sliding window 37, 8 query
    // heads over 2 kv heads, head dim 72: several key blocks, tiles across segment boundaries.
    let dev = device();
    let (b, h, hkv, t, d) = (2, 8, 2, 150, 72);
    let q = random_tensor(&dev, &[b, h, t, d], DType::F32, 5, 1.0);
    let k = random_tensor(&dev, &[b, hkv, t, d], DType::F32, 6, 1.0);
    let v = random_tensor(&dev, &[b, hkv, t, d], DType::F32, 7, 1.0);
    let dout = random_tensor(&dev, &[b, h, t, d], DType::F32, 8, 1.0);
    let mut positions = vec![0i64; b * t];
    let mut blocks = vec![0f32; b * t];
    for bi in 0..b {
        for i in 0..t {
            let start = if i < 90 { 0 } else { 90 + 30 * bi };
            positions[bi * t + i] = if i >= start { (i - start) as i64 } else { i as i64 };
            if (10..40).contains(&i) {
                blocks[bi * t + i] = 1.0;
            }
        }
    }
    let segments = segments_from_positions(&positions, b, t);
    assert_eq!((segments[89], segments[90], segments[t + 119], segments[t + 120]), (0.0, 1.0, 0.0, 1.0));
    let mask = AttentionMask::sliding(37)
        .with_blocks(Tensor::from_f32(&dev, &blocks, &[b, t], DType::F32).unwrap())
        .with_segments(Tensor::from_f32(&dev, &segments, &[b, t], DType::F32).unwrap());
    let scale = 0.1;
    let (om, sm) = attention_with(&q, &k, &v, scale, &mask, AttentionPath::Materialized).unwrap();
    let gm = attention_backward(&q, &sm, &dout, scale).unwrap();
    let tol = Tol { abs: 1e-5, rel: 1e-4 };
    for path in [AttentionPath::Flash, AttentionPath::Tiled] {
        let (of, sf) = attention_with(&q, &k, &v, scale, &mask, path).unwrap();
        assert_close(&format!("{path:?} out"), &host(&of), &host(&om), tol);
        let gf = attention_backward(&q, &sf, &dout, scale).unwrap();
        assert_close(&format!("{path:?} dq"), &host(&gf.q), &host(&gm.q), tol);
        assert_close(&format!("{path:?} dk"), &host(&gf.k), &host(&gm.k), tol);
        assert_close(&format!("{path:?} dv"), &host(&gf.v), &host(&gm.v), tol);
    }
}

#[test]
fn sliding_window_and_blocks_follow_the_definition() {
    // window 2, causal: query 3 sees keys 2, 3; with block ids, query 1 (block 1) also sees key 2.
    let m = AttentionMask::sliding(2);
    let allowed: Vec<usize> = (0..5).filter(|&k| m.allows(None, None, None, 5, 0, 3, k)).collect();
    assert_eq!(allowed, vec![2, 3]);
    let blocks = [0.0, 1.0, 1.0, 0.0, 0.0];
    let allowed: Vec<usize> = (0..5).filter(|&k| m.allows(Some(&blocks), None, None, 5, 0, 1, k)).collect();
    assert_eq!(allowed, vec![0, 1, 2]);
    // Gemma 4's composition: the window bounds the block. Query 3 of a block over keys 0-3 sees
    // only keys 2, 3 (the window) where Gemma 3's sees the whole block; query 1 still sees the
    // block's later keys 2, 3 (inside the window, which only reaches back).
    let blocks = [1.0, 1.0, 1.0, 1.0, 0.0];
    let seen = |m: &AttentionMask, q: usize| -> Vec<usize> {
        (0..5).filter(|&k| m.allows(Some(&blocks), None, None, 5, 0, q, k)).collect()
    };
    assert_eq!(seen(&m, 3), vec![0, 1, 2, 3]);
    let bounded = AttentionMask::sliding(2).with_blocks_in_window();
    assert_eq!(seen(&bounded, 3), vec![2, 3]);
    assert_eq!(seen(&bounded, 1), vec![0, 1, 2, 3]);
    assert_eq!(seen(&bounded, 4), vec![3, 4]);
}

#[test]
fn blocks_longer_than_the_window_follow_either_composition_on_every_path() {
    // Images of 7 and 5 tokens under a window of 3, so both compositions (Gemma 3's block seen
    // whole, Gemma 4's block bounded by the window) differ from each other; some padding.
    let (b, s) = (2, 23);
    let row: Vec<f32> = [vec![0.0; 3], vec![1.0; 7], vec![0.0; 2], vec![2.0; 5], vec![0.0; 6]].concat();
    let blocks = [row.clone(), row[4..].iter().chain(&row[..4]).copied().collect()].concat();
    let keep: Vec<f32> = (0..b * s).map(|i| if i % s >= s - 2 && i >= s { 0.0 } else { 1.0 }).collect();
    let dims = Dims { b, h: 2, hkv: 1, t: s, s, d: 8 };
    for path in [AttentionPath::Materialized, AttentionPath::Flash, AttentionPath::Tiled] {
        for bounded in [false, true] {
            let mut mask = AttentionMask::sliding(3);
            mask.blocks_in_window = bounded;
            let md = MaskData { blocks: blocks.clone(), keep: keep.clone(), segments: vec![0.0; b * s] };
            check_case_with(path, dims, DType::F32, mask, [true, true, false], md, 41);
        }
    }
}

#[test]
fn head_dim_512_matches_the_reference_on_every_path() {
    // Gemma 4's global layers: head dim 512, grouped-query heads, causal with key padding; f32
    // and bf16; every path against the f64 reference, forward and backward.
    let dims = Dims { b: 1, h: 4, hkv: 2, t: 19, s: 19, d: 512 };
    for (i, path) in [AttentionPath::Materialized, AttentionPath::Flash, AttentionPath::Tiled].into_iter().enumerate() {
        for dt in [DType::F32, DType::BF16] {
            check_case(path, dims, dt, AttentionMask::causal(), [false, true, false], false, 512 + i as u64);
        }
    }
    // The tiled kernels themselves at 512 (a GPU's layouts: one group of one or two units, f32
    // products or bf16 ones), after a cache, with image blocks inside a window, against the
    // CPU-shaped kernels.
    use super::flash_tiled::TiledShape;
    let d = 512;
    let layouts: Vec<TiledShape> = [(1, false), (2, false), (1, true)]
        .into_iter()
        .map(|(units, bf16_products)| TiledShape { groups: 1, units, d, dp: d, tensor_cores: false, bf16_products })
        .collect();
    tiled_against_flash(Dims { b: 1, h: 2, hkv: 1, t: 18, s: 21, d }, 51, 4..12, 6, true, &layouts);
}

#[test]
fn head_dim_512_fits_a_gpu_cube_in_16_bit_products() {
    // One group (16 rows) staged in bf16 within the 100 KiB a GPU cube is given: the forward and
    // dQ kernels as they are, the dK/dV kernel only one accumulator at a time.
    use super::flash_tiled::forward_bytes;
    use super::flash_tiled_backward::{KvPass, dkdv_bytes, dq_bytes};
    let budget = 100 << 10;
    let (dp, bf16) = (512, 2);
    assert!(forward_bytes(1, dp, bf16) <= budget, "forward {}", forward_bytes(1, dp, bf16));
    assert!(dq_bytes(1, dp, bf16) <= budget, "dq {}", dq_bytes(1, dp, bf16));
    assert!(dkdv_bytes(KvPass::BOTH)(1, dp, bf16) > budget, "dk and dv together");
    for pass in [KvPass::KEYS, KvPass::VALUES] {
        let bytes = dkdv_bytes(pass)(1, dp, bf16);
        assert!(bytes <= budget, "{pass:?}: {bytes}");
    }
    // Up to head dim 256 (Gemma 3, Gemma 4's sliding layers) dK and dV stay in one launch.
    for dp in [64, 128, 256] {
        assert!(dkdv_bytes(KvPass::BOTH)(1, dp, bf16) <= budget, "dk and dv together at {dp}");
    }
}

#[test]
fn gqa_shape_error_is_clear() {
    let dev = device();
    let q = random_tensor(&dev, &[1, 3, 4, 8], DType::F32, 1, 1.0);
    let k = random_tensor(&dev, &[1, 2, 4, 8], DType::F32, 2, 1.0);
    let e = attention(&q, &k, &k, 1.0, &AttentionMask::causal()).unwrap_err().to_string();
    assert!(e.contains("attention: k") && e.contains("divisible by Hkv"), "{e}");
}
