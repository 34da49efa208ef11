//! The text model against transformers 5.24 (the fixtures' `text_only` case, dense and E-series):
//! every hidden state, the logits and the loss where `attention_mask` is 1, and the gradient of
//! every language-model parameter, with checkpointing off and on.

use crate::{Gemma4Config, Gemma4TextModel};
use lapidary_autograd::{Tape, Trainable, ops};
use lapidary_core::{DType, Device};
use lapidary_nn::safetensors::SafetensorsFiles;
use lapidary_nn::{Checkpointing, Scope, Weights};
use lapidary_testkit::max_rel_error;

fn fixture(kind: &str) -> String {
    format!("{}/../../tests/fixtures/tiny-gemma4-{kind}", env!("CARGO_MANIFEST_DIR"))
}

/// `[rows * t, width]` values kept at the rows where `keep` is non-zero.
fn kept_rows(v: &[f32], width: usize, keep: &[i64]) -> Vec<f32> {
    v.chunks(width).zip(keep).filter(|(_, k)| **k != 0).flat_map(|(r, _)| r.iter().copied()).collect()
}

/// Largest error relative to the larger of |want| and a tenth of want's largest magnitude.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    max_rel_error(got, want, 0.1 * scale)
}

/// The case's labels shifted for next-token prediction (-100 at each row's end).
fn shifted(labels: &[i64], t: usize) -> Vec<i64> {
    labels.chunks(t).flat_map(|row| row[1..].iter().copied().chain([-100])).collect()
}

fn text_only_matches_hf(kind: &str, checkpointing: Checkpointing) {
    let dev = Device::from_env_or_cpu().unwrap();
    let cfg = Gemma4Config::from_file(format!("{}/model/config.json", fixture(kind))).unwrap();
    let w = Weights::open(format!("{}/model", fixture(kind)), &dev, DType::F32).unwrap();
    let tape = Tape::new();
    let model =
        Gemma4TextModel::load(&cfg.text, &Scope::new(&w, &tape, Trainable::Yes).at("model").at("language_model"))
            .unwrap();
    let case = SafetensorsFiles::open(format!("{}/cases/text_only.safetensors", fixture(kind))).unwrap();
    let (input_ids, shape) = case.load_i64("input_ids").unwrap();
    let (b, t, hid) = (shape[0], shape[1], cfg.text.hidden_size);
    let (mask, _) = case.load_i64("attention_mask").unwrap();
    let (labels, _) = case.load_i64("labels").unwrap();
    let ids: Vec<u32> = input_ids.iter().map(|&i| i as u32).collect();

    let x = model.embed(&ids).unwrap();
    let ple = model.per_layer_inputs(&ids, &x).unwrap();
    assert_eq!(ple.is_some(), cfg.text.hidden_size_per_layer_input > 0);
    let ctx = model.context(&dev, b, t, None, &mask).unwrap();
    let h = ops::reshape(&x, &[b, t, hid]).unwrap();
    let states = model.forward(&h, ple.as_ref(), &ctx, checkpointing).unwrap();
    assert_eq!(states.len(), cfg.text.num_layers() + 1);
    let mut worst = 0f64;
    for (i, s) in states.iter().enumerate() {
        let (want, _) = case.load_f32(&format!("hidden_states.{i}")).unwrap();
        let got = s.value().to_f32_vec().unwrap();
        let e = rel_err(&kept_rows(&got, hid, &mask), &kept_rows(&want, hid, &mask));
        assert!(e < 1e-4, "{kind}: hidden_states.{i}: relative error {e:e}");
        worst = worst.max(e);
    }
    let rows = ops::reshape(states.last().unwrap(), &[b * t, hid]).unwrap();
    let logits = model.logits(&rows).unwrap();
    let (want, _) = case.load_f32("logits").unwrap();
    let vocab = cfg.text.vocab_size;
    let e = rel_err(&kept_rows(&logits.value().to_f32_vec().unwrap(), vocab, &mask), &kept_rows(&want, vocab, &mask));
    assert!(e < 1e-4, "{kind}: logits: relative error {e:e}");
    worst = worst.max(e);

    let targets = shifted(&labels, t);
    let loss = model.head_loss(&rows, &targets, None).unwrap();
    let unfused = ops::cross_entropy(&logits, &targets, None).unwrap();
    let (want_loss, _) = case.load_f32("loss").unwrap();
    for (what, l) in [("fused", &loss), ("unfused", &unfused)] {
        let got = l.value().to_f32_vec().unwrap()[0];
        assert!(((got - want_loss[0]) / want_loss[0]).abs() < 1e-5, "{kind}: {what} loss {got} vs {}", want_loss[0]);
    }

    let (grads, _) = tape.backward(&loss).unwrap();
    let mut checked = 0;
    for name in case.names() {
        let Some(param) = name.strip_prefix("grad.language_model.") else { continue };
        let (want, _) = case.load_f32(name).unwrap();
        let got = grads
            .by_name(&format!("model.language_model.{param}"))
            .unwrap_or_else(|| panic!("{kind}: no gradient for {param}"))
            .to_f32_vec()
            .unwrap();
        let e = rel_err(&got, &want);
        assert!(e < 1e-4, "{kind}: gradient of {param}: relative error {e:e}");
        worst = worst.max(e);
        checked += 1;
    }
    // Every parameter of the model has its reference gradient (none is left unchecked).
    assert_eq!(checked, tape.params().len(), "{kind}: parameters vs reference gradients");
    eprintln!("{kind} ({checkpointing:?}): {checked} gradients, worst relative error {worst:.1e}");
}

#[test]
fn dense_text_only_matches_transformers() {
    text_only_matches_hf("dense", Checkpointing::Off);
}

#[test]
fn e_series_text_only_matches_transformers() {
    text_only_matches_hf("e", Checkpointing::Off);
}

#[test]
fn e_series_text_only_matches_transformers_checkpointed() {
    // Checkpointed, the K/V a layer stores reach the layers that reuse them as segment outputs.
    text_only_matches_hf("e", Checkpointing::EachLayer);
}

#[test]
fn the_pad_row_gets_no_gradient_through_the_lookup() {
    // torch's embedding with padding_idx: a pad token among real ones (the image placeholders
    // Gemma 4 looks up as pad) reads the pad row but never trains it.
    let dev = Device::from_env_or_cpu().unwrap();
    let tape = Tape::new();
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let table = tape.param(
        "table",
        lapidary_core::Tensor::from_f32(&dev, &values, &[4, 3], DType::F32).unwrap(),
        Trainable::Yes,
    );
    let x = super::text::scaled_embedding(&table, &[2, 0, 1, 0, 3], 0, 2.0).unwrap();
    let got = x.value().to_f32_vec().unwrap();
    let want: Vec<f32> =
        [2, 0, 1, 0, 3].iter().flat_map(|&r| values[r * 3..r * 3 + 3].iter().map(|v| v * 2.0)).collect();
    assert_eq!(got, want);
    let (grads, _) = tape.backward(&ops::sum_all(&x).unwrap()).unwrap();
    let g = grads.by_name("table").unwrap().to_f32_vec().unwrap();
    assert_eq!(g, [0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]);
}
