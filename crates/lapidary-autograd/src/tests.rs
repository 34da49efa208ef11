//! Tape tests: every differentiable op against central differences, the gradient-flow report's
//! errors, checkpointing (gradients reach parameters behind a frozen input; results equal the
//! non-checkpointed ones bit for bit), and no-grad scopes.

use crate::{BackwardOptions, Tape, Trainable, Var, checkpoint, ops};
use lapidary_core::{DType, Device, Result, Tensor};
use lapidary_kernels::attention::AttentionMask;
use lapidary_testkit::{Tol, central_differences, random_values, worst_excess};

fn dev() -> Device {
    Device::cpu().unwrap()
}

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(&dev(), v, shape, DType::F32).unwrap()
}

/// Checks `op` on inputs of the given shapes: the tape's gradient of `Σ op(x) · r` (random `r`)
/// against central differences of the same forward.
pub(crate) fn fd_check(name: &str, shapes: &[&[usize]], seed: u64, op: &dyn Fn(&[Var]) -> Result<Var>) -> f64 {
    let inputs: Vec<Vec<f32>> =
        shapes.iter().enumerate().map(|(i, s)| random_values(s.iter().product(), seed + i as u64, 1.0)).collect();
    let loss_of = |vals: &[Vec<f32>], tape: &Tape, trainable: bool| -> Result<(Var, Vec<Var>)> {
        let vars: Vec<Var> = vals
            .iter()
            .zip(shapes)
            .enumerate()
            .map(|(i, (v, s))| {
                tape.param(format!("{name}.in{i}"), t(v, s), if trainable { Trainable::Yes } else { Trainable::No })
            })
            .collect();
        let y = op(&vars)?;
        let r = tape.input(t(&random_values(y.value().numel(), seed ^ 0xabc, 1.0), y.shape()));
        Ok((ops::sum_all(&ops::mul(&y, &r)?)?, vars))
    };
    let tape = Tape::new();
    let (loss, vars) = loss_of(&inputs, &tape, true).unwrap();
    let (grads, _) = tape.backward(&loss).unwrap();
    let mut worst = 0f64;
    for (i, v) in vars.iter().enumerate() {
        let analytic = grads.get(v).unwrap().to_f32_vec().unwrap();
        let numeric = central_differences(
            |x| {
                let mut vals = inputs.clone();
                vals[i] = x.to_vec();
                let tape = Tape::new();
                let (l, _) = loss_of(&vals, &tape, false).unwrap();
                l.value().to_f32_vec().unwrap()[0] as f64
            },
            &inputs[i],
            1e-2,
        );
        let (excess, at) = worst_excess(&analytic, &numeric, Tol { abs: 5e-3, rel: 1e-2 });
        assert!(
            excess <= 1.0,
            "{name}: input {i} element {at}: tape {} vs finite differences {}",
            analytic[at],
            numeric[at]
        );
        worst = worst.max(excess);
    }
    worst
}

/// Every differentiable op, with the shapes each is checked on. Shared with `check-grad`.
pub(crate) fn op_cases() -> Vec<(&'static str, Vec<Vec<usize>>, Box<dyn Fn(&[Var]) -> Result<Var>>)> {
    let rope_tabs = || {
        let (c, s) = lapidary_kernels::rope::tables(&[0, 1, 2], 4, 10_000.0, 1.0);
        (t(&c, &[1, 3, 4]), t(&s, &[1, 3, 4]))
    };
    vec![
        (
            "matmul",
            vec![vec![2, 3, 4], vec![5, 4], vec![5]],
            Box::new(|v: &[Var]| ops::matmul(&v[0], &v[1], Some(&v[2]), false, true)),
        ),
        (
            "matmul_trans_a",
            vec![vec![2, 4, 3], vec![2, 4, 5]],
            Box::new(|v: &[Var]| ops::matmul(&v[0], &v[1], None, true, false)),
        ),
        ("add_broadcast", vec![vec![3, 4], vec![4]], Box::new(|v: &[Var]| ops::add(&v[0], &v[1]))),
        ("mul_broadcast", vec![vec![3, 4], vec![4]], Box::new(|v: &[Var]| ops::mul(&v[0], &v[1]))),
        ("scale", vec![vec![7]], Box::new(|v: &[Var]| ops::scale(&v[0], -1.5))),
        ("gelu_tanh", vec![vec![9]], Box::new(|v: &[Var]| ops::gelu_tanh(&v[0]))),
        ("geglu", vec![vec![2, 5], vec![2, 5]], Box::new(|v: &[Var]| ops::geglu(&v[0], &v[1]))),
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
        ("reshape", vec![vec![2, 6]], Box::new(|v: &[Var]| ops::reshape(&v[0], &[3, 4]))),
        ("cross_entropy", vec![vec![4, 5]], Box::new(|v: &[Var]| ops::cross_entropy(&v[0], &[1, -100, 4, 0], None))),
    ]
}

#[test]
fn every_op_matches_finite_differences() {
    for (i, (name, shapes, op)) in op_cases().into_iter().enumerate() {
        let shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        fd_check(name, &shapes, 100 + i as u64, op.as_ref());
    }
}

#[test]
fn unused_trainable_leaf_is_an_error_naming_it() {
    let tape = Tape::new();
    let x = tape.param("used", t(&[1., 2.], &[2]), Trainable::Yes);
    let _unused = tape.param("vision.lora_A", t(&[1., 2.], &[2]), Trainable::Yes);
    let loss = ops::sum_all(&ops::scale(&x, 2.0).unwrap()).unwrap();
    let e = tape.backward(&loss).unwrap_err().to_string();
    assert!(e.contains("vision.lora_A (no gradient)") && !e.contains("used ("), "{e}");

    let tape = Tape::new();
    let x = tape.param("used", t(&[1., 2.], &[2]), Trainable::Yes);
    let _unused = tape.param("vision.lora_A", t(&[1., 2.], &[2]), Trainable::Yes);
    let loss = ops::sum_all(&ops::scale(&x, 2.0).unwrap()).unwrap();
    let opts = BackwardOptions { allow_missing: vec!["vision.lora_A".into()] };
    let (grads, report) = tape.backward_with(&loss, &opts).unwrap();
    assert_eq!(grads.by_name("used").unwrap().to_f32_vec().unwrap(), vec![2., 2.]);
    assert_eq!(report.rows.len(), 2);
    assert_eq!(report.nonzero(), 1);
}

#[test]
fn non_finite_gradient_is_an_error() {
    let tape = Tape::new();
    let x = tape.param("w", t(&[1., f32::NAN], &[2]), Trainable::Yes);
    let loss = ops::sum_all(&ops::mul(&x, &x).unwrap()).unwrap();
    let e = tape.backward(&loss).unwrap_err().to_string();
    assert!(e.contains("w (non-finite gradient)"), "{e}");
}

#[test]
fn frozen_leaves_get_no_gradient_and_no_node() {
    let tape = Tape::new();
    let w = tape.param("frozen", t(&[1., 2., 3.], &[3]), Trainable::No);
    let x = tape.input(t(&[1., 1., 1.], &[3]));
    let y = ops::mul(&x, &w).unwrap();
    assert!(!y.requires_grad());
    assert_eq!(tape.len(), 0, "nothing requires a gradient, so nothing is recorded");
    let a = tape.param("a", t(&[0.5, 0.5, 0.5], &[3]), Trainable::Yes);
    let loss = ops::sum_all(&ops::mul(&y, &a).unwrap()).unwrap();
    let (grads, report) = tape.backward(&loss).unwrap();
    assert!(grads.get(&w).is_none() && grads.by_name("frozen").is_none());
    assert!(report.frozen_touched.is_empty());
    assert_eq!(grads.get(&a).unwrap().to_f32_vec().unwrap(), vec![1., 2., 3.]);
}

#[test]
fn no_grad_scope_records_nothing() {
    let tape = Tape::new();
    let a = tape.param("a", t(&[1., 2.], &[2]), Trainable::Yes);
    {
        let _g = tape.no_grad();
        let y = ops::scale(&a, 3.0).unwrap();
        assert!(!y.requires_grad());
    }
    assert!(tape.is_empty());
    assert!(ops::scale(&a, 3.0).unwrap().requires_grad());
}

/// A layer whose only trainable tensors are its parameters: `gelu(x · w_frozen + x · a · b)`.
fn adapter_layer(x: &Var, w: &Var, a: &Var, b: &Var) -> Result<Var> {
    let base = ops::matmul(x, w, None, false, false)?;
    let low = ops::matmul(&ops::matmul(x, a, None, false, false)?, b, None, false, false)?;
    ops::gelu_tanh(&ops::add(&base, &low)?)
}

fn two_layer_loss(checkpointed: bool) -> (Vec<(String, Vec<f32>)>, f32) {
    let tape = Tape::new();
    // The activation input comes from frozen weights: it requires no gradient.
    let frozen_embed = tape.param("embed", t(&random_values(12, 1, 1.0), &[3, 4]), Trainable::No);
    let x = ops::scale(&frozen_embed, 1.0).unwrap();
    assert!(!x.requires_grad());
    let mut h = x;
    for layer in 0..2 {
        let w = tape.param(format!("l{layer}.w"), t(&random_values(16, 10 + layer, 1.0), &[4, 4]), Trainable::No);
        let a = tape.param(format!("l{layer}.lora_a"), t(&random_values(8, 20 + layer, 1.0), &[4, 2]), Trainable::Yes);
        let b = tape.param(format!("l{layer}.lora_b"), t(&random_values(8, 30 + layer, 1.0), &[2, 4]), Trainable::Yes);
        h = if checkpointed {
            checkpoint(&[&h], &[&w, &a, &b], |_, ins, ps| Ok(vec![adapter_layer(&ins[0], &ps[0], &ps[1], &ps[2])?]))
                .unwrap()
                .pop()
                .unwrap()
        } else {
            adapter_layer(&h, &w, &a, &b).unwrap()
        };
    }
    let loss = ops::sum_all(&ops::mul(&h, &h).unwrap()).unwrap();
    let lv = loss.value().to_f32_vec().unwrap()[0];
    let (grads, report) = tape.backward(&loss).unwrap();
    assert_eq!(report.rows.len(), 4);
    assert_eq!(report.nonzero(), 4, "{report}");
    (grads.named().into_iter().map(|(n, g)| (n.to_string(), g.to_f32_vec().unwrap())).collect(), lv)
}

#[test]
fn checkpointing_reaches_parameters_behind_a_frozen_input_and_matches_bitwise() {
    let (plain, lp) = two_layer_loss(false);
    let (ckpt, lc) = two_layer_loss(true);
    assert_eq!(lp.to_bits(), lc.to_bits());
    assert_eq!(plain.len(), 4);
    assert_eq!(plain.iter().map(|p| &p.0).collect::<Vec<_>>(), ckpt.iter().map(|p| &p.0).collect::<Vec<_>>());
    for ((name, a), (_, b)) in plain.iter().zip(&ckpt) {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name}: checkpointed gradient differs");
    }
}
