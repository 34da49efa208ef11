//! Gradient checking: central differences, a finite-difference check of any op built on the
//! tape, and the catalogue of every differentiable op with the shapes it is checked on (used by
//! this crate's tests and by `cargo xtask check-grad`). f32 throughout: step 1e-2 on O(1) inputs,
//! tolerance 5e-3 absolute + 1e-2 relative.

use crate::{Tape, Trainable, Var, ops};
use lapidary_core::{DType, Device, Error, Result, Tensor};
use lapidary_kernels::attention::AttentionMask;
use lapidary_kernels::matmul::Layout;

/// A differentiable op under test: its inputs' shapes and how to apply it.
pub type OpCase = (&'static str, Vec<Vec<usize>>, Box<dyn Fn(&[Var]) -> Result<Var>>);

/// Central differences `(f(x + h e_i) - f(x - h e_i)) / 2h` for every coordinate of `x`.
pub fn central_differences(mut f: impl FnMut(&[f32]) -> Result<f64>, x: &[f32], h: f32) -> Result<Vec<f64>> {
    let mut x = x.to_vec();
    let mut out = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        let orig = x[i];
        x[i] = orig + h;
        let plus = f(&x)?;
        x[i] = orig - h;
        let minus = f(&x)?;
        x[i] = orig;
        out.push((plus - minus) / (2.0 * h as f64));
    }
    Ok(out)
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    lapidary_core::rng::SplitMix64::new(seed).uniform(n, 1.0)
}

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(&Device::from_env_or_cpu().expect("the test device"), v, shape, DType::F32)
        .expect("valid test tensor")
}

/// Step of the central differences.
pub const STEP: f32 = 1e-2;
/// Allowed `|tape - numeric| <= ABS_TOL + REL_TOL * |numeric|`.
pub const ABS_TOL: f64 = 5e-3;
/// See [`ABS_TOL`].
pub const REL_TOL: f64 = 1e-2;

/// What [`fd_check`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FdReport {
    /// The worst ratio of error to tolerance over every element (≤ 1: within tolerance).
    pub worst: f64,
    /// Inputs checked.
    pub inputs: usize,
    /// Inputs whose tape gradient is finite and not all zero.
    pub nonzero_inputs: usize,
}

/// Checks `op` on random inputs of the given shapes: the tape's gradient of `Σ op(x) · r`
/// (random `r`) against central differences of the same forward, for every input element.
/// An error names the op, the input and the element whose error exceeds the tolerance; otherwise
/// the worst ratio and how many inputs got a finite non-zero gradient.
pub fn fd_check(name: &str, shapes: &[&[usize]], seed: u64, op: &dyn Fn(&[Var]) -> Result<Var>) -> Result<FdReport> {
    let inputs: Vec<Vec<f32>> =
        shapes.iter().enumerate().map(|(i, s)| values(s.iter().product(), seed + i as u64)).collect();
    let loss_of = |vals: &[Vec<f32>], tape: &Tape, trainable: bool| -> Result<(Var, Vec<Var>)> {
        let kind = if trainable { Trainable::Yes } else { Trainable::No };
        let vars: Vec<Var> = vals
            .iter()
            .zip(shapes)
            .enumerate()
            .map(|(i, (v, s))| tape.param(format!("{name}.in{i}"), t(v, s), kind))
            .collect();
        let y = op(&vars)?;
        let r = tape.input(t(&values(y.value().numel(), seed ^ 0xabc), y.shape()));
        Ok((ops::sum_all(&ops::mul(&y, &r)?)?, vars))
    };
    let tape = Tape::new();
    let (loss, vars) = loss_of(&inputs, &tape, true)?;
    let (grads, _) = tape.backward(&loss)?;
    let mut worst = 0f64;
    let mut nonzero_inputs = 0;
    for (i, v) in vars.iter().enumerate() {
        let analytic =
            grads.get(v).ok_or_else(|| Error::invalid(format!("{name}: input {i} got no gradient")))?.to_f32_vec()?;
        if analytic.iter().all(|g| g.is_finite()) && analytic.iter().any(|&g| g != 0.0) {
            nonzero_inputs += 1;
        }
        let numeric = central_differences(
            |x| {
                let mut vals = inputs.clone();
                vals[i] = x.to_vec();
                let (l, _) = loss_of(&vals, &Tape::new(), false)?;
                Ok(l.value().to_f32_vec()?[0] as f64)
            },
            &inputs[i],
            STEP,
        )?;
        for (j, (&a, &n)) in analytic.iter().zip(&numeric).enumerate() {
            let excess = (a as f64 - n).abs() / (ABS_TOL + REL_TOL * n.abs());
            if excess > 1.0 || excess.is_nan() {
                return Err(Error::invalid(format!(
                    "{name}: input {i} element {j}: tape gradient {a} vs finite differences {n}"
                )));
            }
            worst = worst.max(excess);
        }
    }
    Ok(FdReport { worst, inputs: vars.len(), nonzero_inputs })
}

/// Every differentiable op, with the shapes each is checked on. Shared with `check-grad`.
pub fn op_cases() -> Vec<OpCase> {
    let rope_tabs = || {
        let (c, s) = lapidary_kernels::rope::tables(&[0, 1, 2], 4, 10_000.0, 1.0);
        (t(&c, &[1, 3, 4]), t(&s, &[1, 3, 4]))
    };
    vec![
        (
            "matmul",
            vec![vec![2, 3, 4], vec![5, 4], vec![5]],
            Box::new(|v: &[Var]| ops::matmul(&v[0], &v[1], Some(&v[2]), Layout::ABt)),
        ),
        (
            "matmul_trans_a",
            vec![vec![2, 4, 3], vec![2, 4, 5]],
            Box::new(|v: &[Var]| ops::matmul(&v[0], &v[1], None, Layout::AtB)),
        ),
        (
            "matmul_add",
            vec![vec![2, 3, 5], vec![2, 3, 4], vec![5, 4]],
            Box::new(|v: &[Var]| ops::matmul_add(&v[0], &v[1], &v[2], Layout::ABt)),
        ),
        ("add_broadcast", vec![vec![3, 4], vec![4]], Box::new(|v: &[Var]| ops::add(&v[0], &v[1]))),
        ("mul_broadcast", vec![vec![3, 4], vec![4]], Box::new(|v: &[Var]| ops::mul(&v[0], &v[1]))),
        ("scale", vec![vec![7]], Box::new(|v: &[Var]| ops::scale(&v[0], -1.5))),
        ("gelu_tanh", vec![vec![9]], Box::new(|v: &[Var]| ops::gelu_tanh(&v[0]))),
        ("clamp", vec![vec![11]], Box::new(|v: &[Var]| ops::clamp(&v[0], -0.3, 0.35))),
        ("softcap", vec![vec![9]], Box::new(|v: &[Var]| ops::softcap(&v[0], 0.7))),
        ("geglu", vec![vec![2, 5], vec![2, 5]], Box::new(|v: &[Var]| ops::geglu(&v[0], &v[1]))),
        ("gemma_rms_norm", vec![vec![3, 6], vec![6]], Box::new(|v: &[Var]| ops::gemma_rms_norm(&v[0], &v[1], 1e-6))),
        ("rms_norm", vec![vec![3, 6], vec![6]], Box::new(|v: &[Var]| ops::rms_norm(&v[0], &v[1], 1e-6))),
        (
            "layer_norm",
            vec![vec![3, 6], vec![6], vec![6]],
            Box::new(|v: &[Var]| ops::layer_norm(&v[0], &v[1], &v[2], 1e-6)),
        ),
        (
            "rope",
            vec![vec![1, 2, 3, 4]],
            Box::new(move |v: &[Var]| {
                let (c, s) = rope_tabs();
                ops::rope(&v[0], &c, &s)
            }),
        ),
        (
            "rope_parts",
            vec![vec![1, 2, 3, 8]],
            Box::new(|v: &[Var]| {
                let pos = [[0.0, 2.0], [1.0, 0.0], [3.0, 1.0]];
                let (c, s) = lapidary_kernels::rope::axial_tables(&pos, 8, 100.0);
                ops::rope_parts(&v[0], &t(&c, &[1, 3, 8]), &t(&s, &[1, 3, 8]), 2)
            }),
        ),
        (
            "attention_gqa_sliding_blocks",
            vec![vec![1, 2, 5, 3], vec![1, 1, 5, 3], vec![1, 1, 5, 3]],
            Box::new(|v: &[Var]| {
                let blocks = t(&[0., 1., 1., 0., 0.], &[1, 5]);
                ops::attention(&v[0], &v[1], &v[2], 0.6, &AttentionMask::sliding(2).with_blocks(blocks))
            }),
        ),
        ("gather_rows", vec![vec![4, 3]], Box::new(|v: &[Var]| ops::gather_rows(&v[0], &[2, 0, 2, 3]))),
        ("scatter_rows", vec![vec![5, 2], vec![2, 2]], Box::new(|v: &[Var]| ops::scatter_rows(&v[0], &v[1], &[3, 1]))),
        ("im2col", vec![vec![1, 2, 4, 4]], Box::new(|v: &[Var]| ops::im2col(&v[0], 2))),
        ("avg_pool", vec![vec![1, 16, 2]], Box::new(|v: &[Var]| ops::avg_pool(&v[0], 2))),
        ("transpose", vec![vec![2, 3, 4]], Box::new(|v: &[Var]| ops::transpose(&v[0]))),
        ("swap_middle", vec![vec![2, 3, 2, 2]], Box::new(|v: &[Var]| ops::swap_middle(&v[0]))),
        ("reshape", vec![vec![2, 6]], Box::new(|v: &[Var]| ops::reshape(&v[0], &[3, 4]))),
        ("cross_entropy", vec![vec![4, 5]], Box::new(|v: &[Var]| ops::cross_entropy(&v[0], &[1, -100, 4, 0], None))),
        (
            "linear_cross_entropy_chunked",
            vec![vec![5, 3], vec![4, 3]],
            Box::new(|v: &[Var]| {
                ops::linear_cross_entropy(
                    &v[0],
                    &v[1],
                    &crate::FrozenPanels::default(),
                    &[1, -100, 3, 0, 2],
                    Some(3.0),
                    ops::HeadLoss::chunks(2),
                )
            }),
        ),
        (
            "linear_cross_entropy_softcapped",
            vec![vec![5, 3], vec![4, 3]],
            Box::new(|v: &[Var]| {
                let how = ops::HeadLoss { chunk_rows: Some(2), softcap: Some(0.8) };
                ops::linear_cross_entropy(&v[0], &v[1], &crate::FrozenPanels::default(), &[1, -100, 3, 0, 2], None, how)
            }),
        ),
    ]
}
