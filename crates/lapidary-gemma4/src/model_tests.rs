//! Gemma4ForConditionalGeneration against transformers 5.24 on every case of both fixtures (dense
//! and E-series; two images of different aspect ratios beside a padded text-only row, one image
//! per row, text only): hidden states, logits and loss where `attention_mask` is 1, and the
//! gradient of every parameter and of the pixels, with checkpointing off and on, through the
//! unfused head and the fused training loss; generation after the KV cache against the full
//! pass. Also the batch errors only Gemma 4 raises.

use crate::Gemma4ForConditionalGeneration;
use lapidary_autograd::{BackwardOptions, Trainable};
use lapidary_core::Device;
use lapidary_model::{Batch, ForwardOptions, Model, OpenOptions};
use lapidary_nn::safetensors::SafetensorsFiles;
use lapidary_nn::{AdapterHost, Checkpointing};
use lapidary_testkit::max_rel_error;
use std::path::PathBuf;

fn fixture(kind: &str) -> PathBuf {
    PathBuf::from(format!("{}/../../tests/fixtures/tiny-gemma4-{kind}", env!("CARGO_MANIFEST_DIR")))
}

/// `[rows, width]` values kept at the rows where `keep` is non-zero.
fn kept_rows(v: &[f32], width: usize, keep: &[i64]) -> Vec<f32> {
    v.chunks(width).zip(keep).filter(|(_, k)| **k != 0).flat_map(|(r, _)| r.iter().copied()).collect()
}

/// Largest error relative to the larger of |want| and a tenth of want's largest magnitude.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    max_rel_error(got, want, 0.1 * scale)
}

fn case_matches_hf(kind: &str, case: &str, checkpointing: Checkpointing, fused: bool) {
    let dev = Device::from_env_or_cpu().unwrap();
    let path = fixture(kind).join("cases").join(format!("{case}.safetensors"));
    let model =
        Gemma4ForConditionalGeneration::open(fixture(kind).join("model"), &dev, &OpenOptions::all(Trainable::Yes))
            .unwrap();
    let batch = Batch::read(&path, &dev).unwrap();
    let f = SafetensorsFiles::open(&path).unwrap();
    let tape = model.tape().clone();
    let pixels = batch.pixel_values.as_ref().map(|p| tape.param("pixel_values", p.clone(), Trainable::Yes));
    let opts = ForwardOptions { pixels: pixels.as_ref(), checkpointing, normalizer: None };
    let (hid, vocab) = (model.config().text.hidden_size, model.vocab_size());
    let mut worst = 0f64;
    let loss = if fused {
        model.loss(&batch, &opts).unwrap()
    } else {
        let out = model.forward(&batch, &opts).unwrap();
        for (i, s) in out.hidden_states.iter().enumerate() {
            let (want, _) = f.load_f32(&format!("hidden_states.{i}")).unwrap();
            let got = s.value().to_f32_vec().unwrap();
            let e =
                rel_err(&kept_rows(&got, hid, &batch.attention_mask), &kept_rows(&want, hid, &batch.attention_mask));
            assert!(e < 1e-4, "{kind} {case}: hidden_states.{i}: relative error {e:e}");
            worst = worst.max(e);
        }
        let (want, _) = f.load_f32("logits").unwrap();
        let got = out.logits.value().to_f32_vec().unwrap();
        let e =
            rel_err(&kept_rows(&got, vocab, &batch.attention_mask), &kept_rows(&want, vocab, &batch.attention_mask));
        assert!(e < 1e-4, "{kind} {case}: logits: relative error {e:e}");
        worst = worst.max(e);
        out.loss.unwrap()
    };
    let (want_loss, _) = f.load_f32("loss").unwrap();
    let got_loss = loss.value().to_f32_vec().unwrap()[0];
    assert!(
        ((got_loss - want_loss[0]) / want_loss[0]).abs() < 1e-5,
        "{kind} {case}: loss {got_loss} vs {}",
        want_loss[0]
    );

    // A text-only batch reaches neither the vision tower nor its embedder (nor does HF's).
    let mut bopts = BackwardOptions::default();
    if pixels.is_none() {
        bopts.allow_missing = model.unreachable_without_images();
    }
    let (grads, _) = tape.backward_with(&loss, &bopts).unwrap();
    let mut checked = 0;
    for (name, g) in grads.named() {
        let want_name = format!("grad.{}", name.strip_prefix("model.").unwrap_or(name));
        let (want, _) = f.load_f32(&want_name).unwrap_or_else(|e| panic!("{kind} {case}: {e}"));
        let e = rel_err(&g.to_f32_vec().unwrap(), &want);
        assert!(e < 1e-4, "{kind} {case}: gradient of {name}: relative error {e:e}");
        worst = worst.max(e);
        checked += 1;
    }
    // Every reference gradient was compared (none left out on either side).
    let reference = f.names().filter(|n| n.starts_with("grad.")).count();
    assert_eq!(checked, reference, "{kind} {case}: gradients compared vs reference gradients");
    eprintln!(
        "{kind} {case} ({checkpointing:?}, fused {fused}): {checked} gradients, worst relative error {worst:.1e}"
    );
}

const CASES: [&str; 3] = ["two_images_and_padded_text_row", "one_image_each", "text_only"];

#[test]
fn dense_matches_transformers() {
    for case in CASES {
        case_matches_hf("dense", case, Checkpointing::Off, false);
    }
}

#[test]
fn e_series_matches_transformers() {
    for case in CASES {
        case_matches_hf("e", case, Checkpointing::Off, false);
    }
}

#[test]
fn checkpointed_fused_training_loss_matches_transformers() {
    // Both towers recomputed layer by layer, the head fused with the loss: the training path.
    for kind in ["dense", "e"] {
        case_matches_hf(kind, "two_images_and_padded_text_row", Checkpointing::EachLayer, true);
    }
}

#[test]
fn image_tokens_without_their_images_and_unsupported_modalities_are_clear_errors() {
    let dev = Device::from_env_or_cpu().unwrap();
    let model =
        Gemma4ForConditionalGeneration::open(fixture("e").join("model"), &dev, &OpenOptions::default()).unwrap();
    let path = fixture("e").join("cases/two_images_and_padded_text_row.safetensors");
    let batch = Batch::read(&path, &dev).unwrap();
    let run = |b: &Batch| model.forward(b, &ForwardOptions::default()).err().map(|e| e.to_string()).unwrap_or_default();
    let no_images = Batch { pixel_values: None, image_position_ids: None, ..batch.clone() };
    let e = run(&no_images);
    assert!(e.contains("8 image token(s) but no pixel_values"), "{e}");
    let no_positions = Batch { image_position_ids: None, ..batch.clone() };
    assert!(run(&no_positions).contains("without image_position_ids"), "{}", run(&no_positions));
    let mut cut = batch.clone();
    cut.input_ids[5] = 7; // one placeholder of the first image cut
    let e = run(&cut);
    assert!(e.contains("7 image token(s) but the images give 8 soft tokens ([6, 2] per image)"), "{e}");
    let mut miscounted = batch.clone();
    miscounted.soft_tokens_per_image = Some(vec![6, 3]);
    let e = run(&miscounted);
    assert!(e.contains("image 1 pools to 2 soft tokens but num_soft_tokens_per_image says Some(3)"), "{e}");
    let mut video = batch.clone();
    video.input_ids[30] = model.config().video_token_id as i64;
    let e = run(&video);
    assert!(e.contains("row 1, position 6 is the video soft token"), "{e}");
}

/// The PEFT 0.21 adapter in `adapter` loaded into each fixture gives PEFT's logits, loss and
/// gradient of every adapter tensor on `case`; returns the vision tower's adapter tensors per
/// fixture.
fn adapter_matches_peft(adapter: &str, case: &str) -> Vec<usize> {
    let dev = Device::from_env_or_cpu().unwrap();
    let mut visions = Vec::new();
    for kind in ["dense", "e"] {
        let mut model =
            Gemma4ForConditionalGeneration::open(fixture(kind).join("model"), &dev, &OpenOptions::default()).unwrap();
        let adapted =
            lapidary_lora::load_peft_adapter_into(&fixture(kind).join(adapter), &mut model, &dev, Trainable::Yes)
                .unwrap();
        let path = fixture(kind).join("cases").join(format!("{case}.safetensors"));
        let (batch, f) = (Batch::read(&path, &dev).unwrap(), SafetensorsFiles::open(&path).unwrap());
        let out = model.forward(&batch, &ForwardOptions::default()).unwrap();
        let vocab = model.vocab_size();
        let (want, _) = f.load_f32("logits").unwrap();
        let got = out.logits.value().to_f32_vec().unwrap();
        let e_logits =
            rel_err(&kept_rows(&got, vocab, &batch.attention_mask), &kept_rows(&want, vocab, &batch.attention_mask));
        let loss = out.loss.unwrap();
        let (want_loss, _) = f.load_f32("loss").unwrap();
        let got_loss = loss.value().to_f32_vec().unwrap()[0];
        assert!(e_logits < 1e-4, "{kind} {adapter}: logits: relative error {e_logits:e}");
        assert!(((got_loss - want_loss[0]) / want_loss[0]).abs() < 1e-5, "{kind} {adapter}: loss {got_loss}");
        let (grads, _) = model.tape().backward(&loss).unwrap();
        let mut worst = 0f64;
        let mut vision = 0;
        for (name, g) in grads.named() {
            let (want, _) = f.load_f32(&format!("grad.{name}")).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let e = rel_err(&g.to_f32_vec().unwrap(), &want);
            assert!(e < 1e-4, "{kind} {adapter}: gradient of {name}: relative error {e:e}");
            worst = worst.max(e);
            vision += usize::from(name.contains("vision_tower"));
        }
        let reference = f.names().filter(|n| n.starts_with("grad.")).count();
        assert_eq!((grads.len(), 2 * adapted), (reference, reference), "{kind}: every adapter tensor, and only those");
        assert!(vision > 0, "{kind}: the vision tower's adapters get gradients");
        eprintln!(
            "{kind} {adapter}: {adapted} linears ({vision} vision tensors), logits {e_logits:.1e}, worst gradient {worst:.1e}"
        );
        visions.push(vision);
    }
    visions
}

#[test]
fn peft_adapter_gives_peft_logits_loss_and_gradients_on_both_towers() {
    // The fixture's PEFT 0.21 adapter targets the vision tower's clipped linears by their inner
    // `.linear` and every decoder projection; the base is frozen.
    adapter_matches_peft("adapter", "adapter_two_images_and_padded_text_row");
}

#[test]
fn peft_all_linear_adapter_loads_with_peft_logits_and_gradients() {
    // `target_modules="all-linear"`, as TRL and Unsloth pass it: PEFT also adapts the patch
    // projection, the embedder's projection and (E-series) the per-layer-input projection.
    let visions = adapter_matches_peft("adapter-all-linear", "adapter_all_linear_two_images_and_padded_text_row");
    let layers_only = adapter_matches_peft("adapter", "adapter_two_images_and_padded_text_row");
    for (all, layers) in visions.iter().zip(layers_only) {
        assert_eq!(*all, layers + 2, "the patch projection's A and B besides the layers'");
    }
}

/// The first `len` tokens of row 0 of `batch` (which holds all of the batch's images), unpadded.
fn first_row(batch: &Batch, len: usize) -> Batch {
    Batch {
        batch: 1,
        seq: len,
        input_ids: batch.input_ids[..len].to_vec(),
        attention_mask: vec![1; len],
        token_type_ids: batch.token_type_ids[..len].to_vec(),
        labels: None,
        position_ids: None,
        ..batch.clone()
    }
}

#[test]
fn generation_after_the_kv_cache_gives_the_full_pass_logits() {
    // Row 0 of the two-image case: a prompt of 17 tokens holding both images (bidirectional
    // blocks, longer than the sliding window of 5), then the row's last 4 tokens one at a time
    // after the cache; each step's logits against the full pass's at that position. On the
    // E-series the last layers reuse earlier layers' cached K/V.
    let dev = Device::from_env_or_cpu().unwrap();
    for kind in ["dense", "e"] {
        let model =
            Gemma4ForConditionalGeneration::open(fixture(kind).join("model"), &dev, &OpenOptions::default()).unwrap();
        let path = fixture(kind).join("cases/two_images_and_padded_text_row.safetensors");
        let batch = Batch::read(&path, &dev).unwrap();
        let (prompt_len, len) = (17, batch.attention_mask[..batch.seq].iter().sum::<i64>() as usize);
        let full = model.forward(&first_row(&batch, len), &ForwardOptions::default()).unwrap();
        let vocab = model.vocab_size();
        let want = full.logits.value().to_f32_vec().unwrap();
        let mut cache = crate::KvCache::new(model.config().text.num_layers());
        let mut got = model.prefill(&first_row(&batch, prompt_len), &mut cache).unwrap();
        for pos in prompt_len - 1..len {
            let e = rel_err(&got, &want[pos * vocab..(pos + 1) * vocab]);
            assert!(e < 1e-5, "{kind}: logits at position {pos} after the cache: relative error {e:e}");
            if pos + 1 < len {
                got = model.decode_step(batch.input_ids[pos + 1] as u32, &mut cache).unwrap();
            }
        }
        assert_eq!(cache.len(), len, "{kind}");
        let mut empty = crate::KvCache::new(model.config().text.num_layers());
        let e = model.decode_step(5, &mut empty).unwrap_err().to_string();
        assert!(e.contains("prefill the prompt first"), "{e}");
    }
}
