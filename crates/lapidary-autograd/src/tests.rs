//! Tape tests: every differentiable op against central differences, the gradient-flow report's
//! errors, checkpointing (gradients reach parameters behind a frozen input; results equal the
//! non-checkpointed ones bit for bit), and no-grad scopes.

use crate::gradcheck::{fd_check, op_cases};
use crate::{BackwardOptions, FrozenPanels, Tape, Trainable, Var, checkpoint, ops};
use lapidary_core::{DType, Device, Result, Tensor};
use lapidary_kernels::matmul::Layout;
use lapidary_testkit::random_values;

fn dev() -> Device {
    Device::from_env_or_cpu().unwrap()
}

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(&dev(), v, shape, DType::F32).unwrap()
}

#[test]
fn every_op_matches_finite_differences() {
    for (i, (name, shapes, op)) in op_cases().into_iter().enumerate() {
        let shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        // fd_check errors on any element out of tolerance; what is left to check is that the
        // gradients it compared are not trivially zero.
        let r = fd_check(name, &shapes, 100 + i as u64, op.as_ref()).unwrap();
        assert_eq!(r.nonzero_inputs, r.inputs, "{name}: an input got an all-zero gradient");
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
    let base = ops::matmul(x, w, None, Layout::AB)?;
    let low = ops::matmul(&ops::matmul(x, a, None, Layout::AB)?, b, None, Layout::AB)?;
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

#[test]
fn packed_matmul_gives_the_dense_products_and_input_gradient() {
    use lapidary_kernels::quant::{PackFormat, PackedMatrix};
    for format in [PackFormat::Bf16, PackFormat::Nf4, PackFormat::Nf4DoubleQuant] {
        let w = PackedMatrix::pack(&dev(), &random_values(7 * 130, 4, 1.0), &[7, 130], format).unwrap();
        let w = std::rc::Rc::new(w);
        let grads = |packed: bool| {
            let tape = Tape::new();
            let x = tape.param("x", t(&random_values(3 * 2 * 130, 5, 1.0), &[3, 2, 130]), Trainable::Yes);
            let bias = tape.param("bias", t(&random_values(7, 6, 1.0), &[7]), Trainable::Yes);
            let y = if packed {
                ops::matmul_packed(&x, &w, Some(&bias)).unwrap()
            } else {
                let dense = tape.input(w.to_f32().unwrap());
                ops::matmul(&x, &dense, Some(&bias), Layout::ABt).unwrap()
            };
            let loss = ops::sum_all(&ops::mul(&y, &y).unwrap()).unwrap();
            let (g, _) = tape.backward(&loss).unwrap();
            (
                y.value().to_f32_vec().unwrap(),
                g.by_name("x").unwrap().to_f32_vec().unwrap(),
                g.by_name("bias").unwrap().to_f32_vec().unwrap(),
            )
        };
        assert_eq!(grads(true), grads(false), "{format:?}");
    }
}

#[test]
fn chunked_linear_cross_entropy_equals_the_unfused_ops() {
    // 11 rows (4 ignored), hidden 6, vocab 13; chunks of 1, 3 and all rows; with and without a
    // normalizer; gradients for both h and w.
    let (n, hid, vocab) = (11, 6, 13);
    let labels: Vec<i64> = (0..n).map(|i| if i % 3 == 1 { -100 } else { (i * 5 % vocab) as i64 }).collect();
    let hv = random_values(n * hid, 41, 1.0);
    let wv = random_values(vocab * hid, 42, 1.0);
    let run = |fused: Option<Option<usize>>, normalizer: Option<f32>, softcap: Option<f32>| {
        let tape = Tape::new();
        let h = tape.param("h", t(&hv, &[n, hid]), Trainable::Yes);
        let w = tape.param("w", t(&wv, &[vocab, hid]), Trainable::Yes);
        let loss = match fused {
            Some(chunk_rows) => {
                let how = ops::HeadLoss { chunk_rows, softcap };
                ops::linear_cross_entropy(&h, &w, &FrozenPanels::default(), &labels, normalizer, how).unwrap()
            }
            None => {
                let mut logits = ops::matmul(&h, &w, None, Layout::ABt).unwrap();
                if let Some(cap) = softcap {
                    logits = ops::softcap(&logits, cap).unwrap();
                }
                ops::cross_entropy(&logits, &labels, normalizer).unwrap()
            }
        };
        let (grads, _) = tape.backward(&loss).unwrap();
        let g = |name: &str| grads.by_name(name).unwrap().to_f32_vec().unwrap();
        (loss.value().to_f32_vec().unwrap()[0], g("h"), g("w"))
    };
    // A cap of 1.5 saturates many of these logits (|h · w| reaches ~3): the capped gradient differs.
    for (normalizer, softcap) in [(None, None), (Some(17.0), None), (None, Some(1.5)), (Some(17.0), Some(30.0))] {
        let (loss, dh, dw) = run(None, normalizer, softcap);
        for chunk in [Some(1), Some(3), None] {
            let (l, h, w) = run(Some(chunk), normalizer, softcap);
            assert!((l - loss).abs() <= 1e-5 * loss.abs(), "chunk {chunk:?}: loss {l} vs {loss}");
            lapidary_testkit::assert_close(&format!("dh, chunk {chunk:?}"), &h, &dh, lapidary_testkit::Tol::F32);
            lapidary_testkit::assert_close(&format!("dw, chunk {chunk:?}"), &w, &dw, lapidary_testkit::Tol::F32);
            for i in (0..n).filter(|i| labels[*i] == -100) {
                assert!(h[i * hid..(i + 1) * hid].iter().all(|&v| v == 0.0), "ignored row {i} got a gradient");
            }
        }
    }
}

#[test]
fn linear_cross_entropy_scales_its_gradient_by_the_upstream_one() {
    // The gradient is computed in the forward pass for an upstream gradient of 1: a loss scaled
    // afterwards (as a loss scale or an accumulation weight does) must scale it, and a frozen
    // head must give h the same gradient as a trainable one.
    let (n, hid, vocab) = (7, 5, 9);
    let labels: Vec<i64> = (0..n).map(|i| if i == 2 { -100 } else { (i * 4 % vocab) as i64 }).collect();
    let hv = random_values(n * hid, 51, 1.0);
    let wv = random_values(vocab * hid, 52, 1.0);
    let run = |fused: bool, w_trainable: Trainable, factor: f32| {
        let tape = Tape::new();
        let h = tape.param("h", t(&hv, &[n, hid]), Trainable::Yes);
        let w = tape.param("w", t(&wv, &[vocab, hid]), w_trainable);
        let loss = if fused {
            ops::linear_cross_entropy(&h, &w, &FrozenPanels::default(), &labels, None, ops::HeadLoss::chunks(2))
                .unwrap()
        } else {
            ops::cross_entropy(&ops::matmul(&h, &w, None, Layout::ABt).unwrap(), &labels, None).unwrap()
        };
        let (grads, _) = tape.backward(&ops::scale(&loss, factor).unwrap()).unwrap();
        grads.by_name("h").unwrap().to_f32_vec().unwrap()
    };
    for factor in [1.0, -2.5, 1024.0] {
        let want = run(false, Trainable::Yes, factor);
        for w_trainable in [Trainable::Yes, Trainable::No] {
            let got = run(true, w_trainable, factor);
            lapidary_testkit::assert_close(&format!("dh x{factor}"), &got, &want, lapidary_testkit::Tol::F32);
        }
    }
    // Without recording, the same loss and nothing kept for a backward pass.
    let tape = Tape::new();
    let h = tape.param("h", t(&hv, &[n, hid]), Trainable::Yes);
    let w = tape.param("w", t(&wv, &[vocab, hid]), Trainable::No);
    let recorded = ops::linear_cross_entropy(&h, &w, &FrozenPanels::default(), &labels, None, ops::HeadLoss::default())
        .unwrap()
        .value()
        .to_f32_vec()
        .unwrap();
    let _guard = tape.no_grad();
    let plain =
        ops::linear_cross_entropy(&h, &w, &FrozenPanels::default(), &labels, None, ops::HeadLoss::default()).unwrap();
    assert!(!plain.requires_grad());
    assert_eq!(plain.value().to_f32_vec().unwrap(), recorded);
}

#[test]
fn kept_head_panels_serve_only_the_weight_they_were_made_from() {
    // One FrozenPanels across calls: the same frozen head twice (its forms made once, then
    // reused), then another head: every loss and gradient as with nothing kept.
    let (n, hid, vocab) = (9, 6, 40);
    let labels: Vec<i64> = (0..n).map(|i| (i * 7 % vocab) as i64).collect();
    let hv = random_values(n * hid, 61, 1.0);
    let kept = FrozenPanels::default();
    let run = |wv: &[f32], panels: &FrozenPanels| {
        let tape = Tape::new();
        let h = tape.param("h", t(&hv, &[n, hid]), Trainable::Yes);
        let w = tape.param("w", t(wv, &[vocab, hid]), Trainable::No);
        let loss = ops::linear_cross_entropy(&h, &w, panels, &labels, None, ops::HeadLoss::chunks(4)).unwrap();
        let (grads, _) = tape.backward(&loss).unwrap();
        (loss.value().to_f32_vec().unwrap(), grads.by_name("h").unwrap().to_f32_vec().unwrap())
    };
    for (i, seed) in [62, 62, 63].into_iter().enumerate() {
        let wv = random_values(vocab * hid, seed, 1.0);
        let (want_loss, want_dh) = run(&wv, &FrozenPanels::default());
        let (loss, dh) = run(&wv, &kept);
        let cpu = Device::from_env_or_cpu().unwrap().is_cpu();
        assert_eq!(kept.held(), (cpu, cpu), "call {i}");
        lapidary_testkit::assert_close(&format!("loss, call {i}"), &loss, &want_loss, lapidary_testkit::Tol::F32);
        lapidary_testkit::assert_close(&format!("dh, call {i}"), &dh, &want_dh, lapidary_testkit::Tol::F32);
    }
}

#[test]
fn linear_cross_entropy_errors_name_what_is_wrong() {
    let tape = Tape::new();
    let h = tape.param("h", t(&random_values(6, 1, 1.0), &[2, 3]), Trainable::Yes);
    let w = tape.param("w", t(&random_values(8, 2, 1.0), &[2, 4]), Trainable::Yes);
    let e = ops::linear_cross_entropy(&h, &w, &FrozenPanels::default(), &[0, 1], None, ops::HeadLoss::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[N, H] and [V, H]"), "{e}");
    let w = tape.param("w3", t(&random_values(6, 2, 1.0), &[2, 3]), Trainable::Yes);
    let e = ops::linear_cross_entropy(&h, &w, &FrozenPanels::default(), &[-100, -100], None, ops::HeadLoss::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no label to count"), "{e}");
    let e = ops::linear_cross_entropy(&h, &w, &FrozenPanels::default(), &[0], None, ops::HeadLoss::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 labels for 2 rows"), "{e}");
    let e = ops::linear_cross_entropy(&h, &w, &FrozenPanels::default(), &[-100, 5], None, ops::HeadLoss::chunks(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 5 at position 1 is outside the vocabulary 0..2"), "{e}");
}
