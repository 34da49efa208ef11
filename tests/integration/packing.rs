//! Packed rows (several conversations in one row, `position_ids` restarting at 0) against HF run
//! on each conversation alone: every fixture case's rows packed into one row give, at each
//! segment's positions, HF's logits for that row, HF's loss (same label normalization) and HF's
//! gradient of every parameter and of the pixels; two packed rows side by side, with padding,
//! give the same logits; `lapidary eval` reads `position_ids` from a batch file; a sequence that
//! starts inside an image is refused.

use crate::hf_parity::{CASES, fixtures, load_batch, rel_err};
use lapidary::autograd::{BackwardOptions, Trainable};
use lapidary::core::{DType, Device};
use lapidary::gemma3::{Batch, Gemma3ForConditionalGeneration};
use lapidary::gemma3::{ForwardOptions, OpenOptions};
use lapidary::model::{AdapterHost, Model};
use lapidary::nn::safetensors::LoadTensor;
use lapidary::nn::safetensors::{self, SafetensorsFiles};

/// Where each source row's real tokens landed: (packed row, first column, source row, length).
type Placement = Vec<(usize, usize, usize, usize)>;

/// Packs the real (unpadded) tokens of `groups` of `batch`'s rows, one packed row per group,
/// right-padded by `extra` tokens past the longest.
fn pack(batch: &Batch, groups: &[Vec<usize>], extra: usize) -> (Batch, Placement) {
    let t = batch.seq;
    let real = |r: usize| (0..t).filter(|&c| batch.attention_mask[r * t + c] != 0).count();
    let seq = groups.iter().map(|g| g.iter().map(|&r| real(r)).sum::<usize>()).max().unwrap() + extra;
    let n = groups.len() * seq;
    let labels = batch.labels.as_ref().unwrap();
    let mut p = Batch {
        batch: groups.len(),
        seq,
        input_ids: vec![0; n],
        attention_mask: vec![0; n],
        token_type_ids: vec![0; n],
        labels: Some(vec![-100; n]),
        pixel_values: batch.pixel_values.clone(),
        image_position_ids: None,
        soft_tokens_per_image: None,
        position_ids: Some(vec![0; n]),
    };
    let mut placed = Vec::new();
    for (pr, g) in groups.iter().enumerate() {
        let mut at = 0;
        for &r in g {
            let len = real(r);
            for c in 0..len {
                let (src, dst) = (r * t + c, pr * seq + at + c);
                p.input_ids[dst] = batch.input_ids[src];
                p.attention_mask[dst] = 1;
                p.token_type_ids[dst] = batch.token_type_ids[src];
                p.labels.as_mut().unwrap()[dst] = labels[src];
                p.position_ids.as_mut().unwrap()[dst] = c as i64;
            }
            placed.push((pr, at, r, len));
            at += len;
        }
    }
    (p, placed)
}

/// Worst relative error of the packed logits against `want` (`[B, T, V]` of the source batch)
/// over every placed segment's positions.
fn segment_err(got: &[f32], packed: &Batch, want: &[f32], src_seq: usize, placed: &Placement) -> f64 {
    let v = got.len() / (packed.batch * packed.seq);
    let (mut g, mut w) = (Vec::new(), Vec::new());
    for &(pr, at, r, len) in placed {
        g.extend_from_slice(&got[(pr * packed.seq + at) * v..(pr * packed.seq + at + len) * v]);
        w.extend_from_slice(&want[r * src_seq * v..(r * src_seq + len) * v]);
    }
    rel_err(&g, &w)
}

#[test]
fn a_packed_row_gives_each_conversation_hfs_logits_loss_and_gradients() {
    let dev = Device::from_env_or_cpu().unwrap();
    let names: Vec<String> =
        SafetensorsFiles::open(fixtures().join("model")).unwrap().names().map(str::to_string).collect();
    for case in CASES {
        let (batch, f) = load_batch(case, &dev);
        let (packed, placed) = pack(&batch, &[(0..batch.batch).collect()], 3);
        assert_eq!(packed.batch, 1);
        for checkpointing in [false, true] {
            let model =
                Gemma3ForConditionalGeneration::open(fixtures().join("model"), &dev, &OpenOptions::all(Trainable::Yes))
                    .unwrap();
            let tape = model.tape().clone();
            let pixels = packed.pixel_values.as_ref().map(|p| tape.param("pixel_values", p.clone(), Trainable::Yes));
            let out = model.forward(&packed, &crate::forward_options(pixels.as_ref(), checkpointing)).unwrap();
            let want = f.load("logits", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
            let err = segment_err(&out.logits.value().to_f32_vec().unwrap(), &packed, &want, batch.seq, &placed);
            let loss = out.loss.unwrap();
            let got_loss = loss.value().to_f32_vec().unwrap()[0];
            let want_loss = f.load("loss", &dev, DType::F32).unwrap().to_f32_vec().unwrap()[0];
            assert!(err < 1e-4, "{case}: packed logits differ from HF's per-row logits by {err:.2e}");
            assert!(
                ((got_loss - want_loss) / want_loss).abs() < 1e-5,
                "{case}: packed loss {got_loss} vs HF {want_loss}"
            );
            let mut opts = BackwardOptions::default();
            if pixels.is_none() {
                opts.allow_missing = names
                    .iter()
                    .filter(|n| n.starts_with("vision_tower.") || n.starts_with("multi_modal_projector."))
                    .cloned()
                    .collect();
            }
            let (grads, _) = tape.backward_with(&loss, &opts).unwrap();
            let mut worst = (0f64, String::new());
            let mut compared = 0;
            for (name, g) in grads.named() {
                let want = f.load(&format!("grad.{name}"), &dev, DType::F32).unwrap().to_f32_vec().unwrap();
                let got = g.to_f32_vec().unwrap();
                let scale = want.iter().fold(1e-3f64, |m, x| m.max(x.abs() as f64));
                let e = got.iter().zip(&want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max) / scale;
                if e > worst.0 {
                    worst = (e, name.to_string());
                }
                compared += 1;
            }
            println!(
                "{case} packed into one row (checkpointing {checkpointing}): logits rel err {err:.2e}, loss {got_loss:.6} \
                 vs HF {want_loss:.6}, {compared} gradients, worst rel err {:.2e} ({})",
                worst.0, worst.1
            );
            assert_eq!(compared, if pixels.is_some() { 81 } else { 41 }, "{case}: gradients compared");
            assert!(worst.0 < 1e-4, "{case}: packed gradient {} differs from HF by {:.2e}", worst.1, worst.0);
        }
    }
}

#[test]
fn packed_rows_side_by_side_match_each_conversation_run_alone() {
    let dev = Device::from_env_or_cpu().unwrap();
    let model = Gemma3ForConditionalGeneration::open(fixtures().join("model"), &dev, &OpenOptions::default()).unwrap();
    // Row 0: both image rows of a case in reverse order; row 1: one row alone, then padding.
    let (batch, _) = load_batch("two_images_and_padded_text_row", &dev);
    let alone = model.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap();
    let (packed, placed) = pack(&batch, &[vec![1, 0], vec![1]], 2);
    // Images follow row order: row 1 of the source has none, so the pixels stay as they are.
    let got = model.forward(&packed, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap();
    let err = segment_err(&got, &packed, &alone, batch.seq, &placed);
    println!("two packed rows: logits rel err {err:.2e} against each conversation alone");
    assert!(err < 1e-5, "packed logits differ from the conversations run alone by {err:.2e}");
}

#[test]
fn a_sequence_starting_inside_an_image_is_refused() {
    let dev = Device::from_env_or_cpu().unwrap();
    let (batch, _) = load_batch("two_rows_one_image_each", &dev);
    let (mut packed, _) = pack(&batch, &[vec![0, 1]], 0);
    let first_image = packed.token_type_ids.iter().position(|&t| t == 1).unwrap();
    packed.position_ids.as_mut().unwrap()[first_image + 1] = 0;
    let model = Gemma3ForConditionalGeneration::open(fixtures().join("model"), &dev, &OpenOptions::default()).unwrap();
    let e = model.forward(&packed, &ForwardOptions::default()).err().expect("a split image is an error").to_string();
    assert!(e.contains("position_ids") && e.contains(&format!("row 0, position {}", first_image + 1)), "{e}");
}

#[test]
fn eval_reads_position_ids_from_the_batch_file() {
    let dev = Device::from_env_or_cpu().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let case = "two_images_and_padded_text_row";
    let (batch, f) = load_batch(case, &dev);
    let (packed, placed) = pack(&batch, &[vec![0, 1]], 1);
    let shape = [packed.batch, packed.seq];
    let mut entries = vec![
        safetensors::entry_i64("input_ids", &packed.input_ids, &shape),
        safetensors::entry_i64("attention_mask", &packed.attention_mask, &shape),
        safetensors::entry_i64("token_type_ids", &packed.token_type_ids, &shape),
        safetensors::entry_i64("labels", packed.labels.as_ref().unwrap(), &shape),
        safetensors::entry_of("pixel_values", packed.pixel_values.as_ref().unwrap()).unwrap(),
    ];
    let path = dir.path().join("packed.safetensors");
    let out = dir.path().join("out.safetensors");
    let model = fixtures().join("model");
    // Without position_ids the two conversations would see each other: the loss differs.
    safetensors::save(&path, &entries).unwrap();
    let unsegmented = lapidary::eval::run(&model, &path, &out, None, &dev, true).unwrap();
    entries.push(safetensors::entry_i64("position_ids", packed.position_ids.as_ref().unwrap(), &shape));
    safetensors::save(&path, &entries).unwrap();
    let loss = lapidary::eval::run(&model, &path, &out, None, &dev, true).unwrap();
    let want_loss = f.load("loss", &dev, DType::F32).unwrap().to_f32_vec().unwrap()[0];
    let got = SafetensorsFiles::open(&out).unwrap().load("logits", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
    let want = f.load("logits", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
    let err = segment_err(&got, &packed, &want, batch.seq, &placed);
    println!(
        "eval of a packed batch file: logits rel err {err:.2e}, loss {loss} vs HF {want_loss} (unsegmented {unsegmented})"
    );
    assert!(err < 1e-4 && ((loss - want_loss) / want_loss).abs() < 1e-5);
    assert!((unsegmented - want_loss).abs() > 1e-3 * want_loss.abs(), "segments changed nothing");
    // A position_ids tensor of the wrong shape is named.
    entries.pop();
    entries.push(safetensors::entry_i64("position_ids", &[0, 1, 2], &[1, 3]));
    safetensors::save(&path, &entries).unwrap();
    let e = lapidary::eval::run(&model, &path, &out, None, &dev, true).unwrap_err().to_string();
    assert!(e.contains("position_ids has shape [1, 3]"), "{e}");
}
