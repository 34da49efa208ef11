//! The trainer and generation on the bundled tiny model: gradient accumulation equivalence
//! (1 x 8 = 2 x 4 = 4 x 2 = 8 x 1), packed rows equal to padded ones, exact resume from a checkpoint, KV-cache decoding equal to
//! full recomputation, and a merged adapter giving the adapter's logits.

use lapidary::core::{DType, Device, Tensor};
use lapidary::data::{Collated, Example, collate, collate_packed, pack};
use lapidary::demo::{bundled_model, write_dataset};
use lapidary::gemma3::{Batch, Gemma3ForConditionalGeneration, GenerateOptions, Sampling, argmax};
use lapidary::gemma3::{ForwardOptions, OpenOptions};
use lapidary::model::{AdapterHost, Model};
use lapidary::nn::safetensors::LoadTensor;
use lapidary::train::{Gradients, RowCounts};
use lapidary::train::{Schedule, TrainConfig, Trainer};
use std::path::{Path, PathBuf};

/// LoRA r 4 on the bundled model, 6 steps of 2 x 2 rows of `dir/train.jsonl`, output in `dir/out`.
pub(crate) fn config(dir: &Path) -> TrainConfig {
    TrainConfig {
        model: bundled_model(),
        data: dir.join("train.jsonl"),
        eval_fraction: 0.0,
        output_dir: dir.join("out"),
        lora_r: 4,
        lora_alpha: 8.0,
        learning_rate: 1e-2,
        lr_scheduler: Schedule::Cosine,
        warmup_steps: 1,
        max_steps: 6,
        micro_batch_size: 2,
        grad_accum_steps: 2,
        max_len: 64,
        seed: 11,
        ..TrainConfig::default()
    }
}

fn dataset(rows: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), "train", rows, 5).unwrap();
    dir
}

fn split(trainer: &Trainer, rows: &[&Example], per: usize) -> Vec<Collated> {
    rows.chunks(per).map(|c| collate(c, trainer.processor()).unwrap()).collect()
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    let dir = dataset(8);
    let dev = Device::from_env_or_cpu().unwrap();
    // The adapter's B starts at zero (A's gradient would be zero): take one step first so that
    // every tensor has a non-zero gradient, then compare the splits from that state.
    let cfg = TrainConfig { warmup_steps: 0, ..config(dir.path()) };
    let mut trainer = Trainer::new(cfg, &dev).unwrap();
    let rows: Vec<&Example> = trainer.train_examples().iter().collect();
    let rows: Vec<Example> = rows.into_iter().cloned().collect();
    let refs: Vec<&Example> = rows.iter().collect();
    let first = split(&trainer, &refs, 8);
    trainer.step_on(&first).unwrap();
    let mut results = Vec::new();
    for per in [8, 4, 2, 1] {
        let Gradients { loss, grads, label_tokens: labels, .. } =
            trainer.gradients_on(&split(&trainer, &refs, per)).unwrap();
        let flat: Vec<Vec<f32>> = grads.iter().map(|g| g.as_ref().unwrap().to_f32_vec().unwrap()).collect();
        results.push((per, loss, labels, flat));
    }
    let (_, loss0, labels0, g0) = &results[0];
    for (per, loss, labels, g) in &results[1..] {
        assert_eq!(labels, labels0);
        assert!((loss - loss0).abs() <= 1e-5 * loss0.abs(), "{per} rows a micro-batch: loss {loss} vs {loss0}");
        for (t, (a, b)) in g.iter().zip(g0).enumerate() {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "tensor {t} has a zero gradient");
            let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst <= 1e-4 * scale, "{per} rows a micro-batch: tensor {t} differs by {worst} (scale {scale})");
        }
    }
}

/// A step reads nothing back from the device, however many tensors it trains: its loss,
/// gradient norm and checks wait there, and one read brings those of every step since the last
/// read. Each read waits for the device; a few a step (or one per tensor) stall a GPU.
#[test]
fn steps_read_nothing_until_their_figures_are_read_at_once() {
    let dir = dataset(8);
    let dev = Device::from_env_or_cpu().unwrap();
    let cfg = TrainConfig { target_modules: Some(vec!["all-linear".into()]), ..config(dir.path()) };
    let mut one_by_one = Trainer::new(cfg.clone(), &dev).unwrap();
    let want: Vec<_> = (0..4).map(|_| one_by_one.step().unwrap()).collect();
    let mut trainer = Trainer::new(cfg, &dev).unwrap();
    let tensors = trainer.trainable_names().len();
    trainer.step().unwrap();
    let before = lapidary::core::host_reads();
    for _ in 0..3 {
        trainer.step_unread().unwrap();
    }
    let unread = lapidary::core::host_reads() - before;
    let got = trainer.read_steps().unwrap();
    let reads = lapidary::core::host_reads() - before;
    println!("3 steps of 2 micro-batches, {tensors} trainable tensors: {unread} reads, then {reads} for their figures");
    assert!(tensors > 10, "the check needs many tensors ({tensors})");
    assert_eq!((unread, reads), (0, 1), "reads from the device: while stepping, then for the figures");
    // The same figures as steps read one at a time, clipping included.
    assert_eq!(got, want[1..], "figures of steps read together");
    assert!(got.iter().all(|s| s.loss.is_finite() && s.grad_norm > 0.0), "{got:?}");
    assert!(trainer.read_steps().unwrap().is_empty());
}

/// A non-finite loss found when the figures are read, steps after it: that step and the later
/// ones changed nothing, the error names the step, and the trainer refuses to go on.
#[test]
fn a_non_finite_step_read_late_leaves_the_weights_as_they_were() {
    let dir = dataset(8);
    let dev = Device::from_env_or_cpu().unwrap();
    let model = model_with_nan(dir.path(), &bundled_model(), "language_model.model.layers.0.mlp.down_proj.weight");
    let mut trainer = Trainer::new(TrainConfig { model, ..config(dir.path()) }, &dev).unwrap();
    let weights = |t: &Trainer| -> Vec<Vec<f32>> {
        t.tape().trainable_params().iter().map(|(_, v)| v.value().to_f32_vec().unwrap()).collect()
    };
    let before = weights(&trainer);
    for _ in 0..3 {
        trainer.step_unread().unwrap();
    }
    let err = trainer.read_steps().unwrap_err().to_string();
    assert!(err.contains("step 1:") && err.contains("the loss is NaN"), "{err}");
    assert_eq!(weights(&trainer), before, "a skipped step changed the weights");
    let again = trainer.step_unread().unwrap_err().to_string();
    assert_eq!(again, err, "a trainer goes on after a non-finite step");
    assert!(trainer.save_checkpoint().is_err());
}

#[test]
fn packed_rows_give_the_padded_batchs_loss_and_gradients() {
    let dir = dataset(8);
    let dev = Device::from_env_or_cpu().unwrap();
    let cfg = TrainConfig { warmup_steps: 0, ..config(dir.path()) };
    let mut trainer = Trainer::new(cfg, &dev).unwrap();
    let rows: Vec<Example> = trainer.train_examples().to_vec();
    let refs: Vec<&Example> = rows.iter().collect();
    trainer.step_on(&split(&trainer, &refs, 8)).unwrap();
    let Gradients { loss: loss0, grads: g0, label_tokens: labels0, tokens: tokens0 } =
        trainer.gradients_on(&split(&trainer, &refs, 8)).unwrap();
    // First-fit decreasing into rows of up to 3 conversations' worth of tokens.
    let lengths: Vec<usize> = rows.iter().map(|e| e.input_ids.len()).collect();
    let longest = *lengths.iter().max().unwrap();
    let bins = pack::first_fit_decreasing(&lengths, 3 * longest);
    assert!(bins.len() < rows.len() && bins.iter().any(|b| b.len() > 1), "bins {bins:?}");
    let groups: Vec<Vec<&Example>> = bins.iter().map(|b| b.iter().map(|&i| &rows[i]).collect()).collect();
    // One micro-batch of every packed row, and one packed row per micro-batch.
    for per in [groups.len(), 1] {
        let micro: Vec<Collated> =
            groups.chunks(per).map(|g| collate_packed(g, trainer.processor()).unwrap()).collect();
        let padded: usize = split(&trainer, &refs, 8).iter().map(|c| c.batch * c.seq).sum();
        let packed: usize = micro.iter().map(|c| c.batch * c.seq).sum();
        println!(
            "{} conversations in {} packed rows: {packed} token slots vs {padded} padded",
            rows.len(),
            groups.len()
        );
        let Gradients { loss, grads: g, label_tokens: labels, tokens } = trainer.gradients_on(&micro).unwrap();
        assert_eq!((labels, tokens), (labels0, tokens0));
        assert!((loss - loss0).abs() <= 1e-5 * loss0.abs(), "packed loss {loss} vs {loss0}");
        for (t, (a, b)) in g.iter().zip(&g0).enumerate() {
            let (a, b) = (a.as_ref().unwrap().to_f32_vec().unwrap(), b.as_ref().unwrap().to_f32_vec().unwrap());
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "tensor {t} has a zero gradient");
            let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "packed ({per} a micro-batch): tensor {t} differs by {worst} (scale {scale})"
            );
        }
    }
}

#[test]
fn a_packed_run_trains_on_fewer_fuller_rows() {
    let dir = dataset(8);
    let dev = Device::from_env_or_cpu().unwrap();
    let cfg = TrainConfig { packing: true, max_len: 160, max_steps: 2, grad_accum_steps: 1, ..config(dir.path()) };
    let mut trainer = Trainer::new(cfg, &dev).unwrap();
    assert!(trainer.rows_per_epoch() < trainer.train_examples().len());
    let s = trainer.step().unwrap();
    let unpacked = Trainer::new(TrainConfig { max_steps: 2, grad_accum_steps: 1, ..config(dir.path()) }, &dev)
        .unwrap()
        .step()
        .unwrap();
    println!(
        "packed step: {} tokens, padding {:.3}; unpacked step: {} tokens, padding {:.3}",
        s.tokens,
        s.padding_fraction(),
        unpacked.tokens,
        unpacked.padding_fraction()
    );
    assert!(s.loss.is_finite() && s.tokens > unpacked.tokens);
}

#[test]
fn resume_continues_exactly() {
    let dir = dataset(10);
    let dev = Device::from_env_or_cpu().unwrap();
    // With LoRA dropout on: its masks must be drawn again identically after the resume.
    let config = |p: &Path| TrainConfig { lora_dropout: 0.1, ..config(p) };
    let mut straight = Trainer::new(config(dir.path()), &dev).unwrap();
    let want: Vec<f64> = (0..6).map(|_| straight.step().unwrap().loss).collect();
    assert!(want[5] < want[0], "the loss should fall: {want:?}");

    let mut first = Trainer::new(config(dir.path()), &dev).unwrap();
    let got_a: Vec<f64> = (0..3).map(|_| first.step().unwrap().loss).collect();
    let ck = first.save_checkpoint().unwrap();
    drop(first);
    assert!(ck.join("adapter_model.safetensors").is_file() && ck.join("optimizer.safetensors").is_file());
    let mut resumed = Trainer::new(config(dir.path()), &dev).unwrap();
    resumed.resume(&ck).unwrap();
    assert_eq!(resumed.state.step, 3);
    let got_b: Vec<f64> = (0..3).map(|_| resumed.step().unwrap().loss).collect();
    let got: Vec<f64> = got_a.into_iter().chain(got_b).collect();
    assert_eq!(got, want, "the loss curve after resume must equal the uninterrupted one");

    // A checkpoint of another configuration is refused, naming the directory.
    let mut other = config(dir.path());
    other.lora_r = 8;
    let err = Trainer::new(other, &dev).unwrap().resume(&ck).err().unwrap().to_string();
    assert!(err.contains("checkpoint-000003") && err.contains("lora_r: 4 -> 8"), "{err}");
    // So is one of other data or optimizer settings, each named.
    let other = TrainConfig { learning_rate: 5e-3, data: dir.path().join("other.jsonl"), ..config(dir.path()) };
    std::fs::copy(dir.path().join("train.jsonl"), dir.path().join("other.jsonl")).unwrap();
    let err = Trainer::new(other, &dev).unwrap().resume(&ck).err().unwrap().to_string();
    assert!(err.contains("learning_rate: 0.01 -> 0.005") && err.contains("data: "), "{err}");
}

#[test]
fn run_writes_adapter_metrics_and_plot() {
    let dir = dataset(12);
    let dev = Device::from_env_or_cpu().unwrap();
    let mut cfg = config(dir.path());
    cfg.eval_fraction = 0.25;
    cfg.eval_every = 2;
    let mut t = Trainer::new(cfg, &dev).unwrap();
    assert_eq!(t.rows(), RowCounts { train: 9, held_out: 3 });
    let s = t.run(false).unwrap();
    assert_eq!(s.steps, 6);
    let out = dir.path().join("out");
    for f in ["final/adapter_model.safetensors", "final/adapter_config.json", "metrics.jsonl", "loss.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let recs = lapidary::train::metrics::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(recs.iter().filter(|r| r.get("loss").is_some()).count(), 6);
    assert_eq!(recs.iter().filter(|r| r.get("eval_loss").is_some()).count(), 4); // steps 0, 2, 4, 6
    assert!(s.eval_after.unwrap() < s.eval_before.unwrap(), "{s:?}");
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    let dir = dataset(1);
    let dev = Device::from_env_or_cpu().unwrap();
    let model_dir = bundled_model();
    let p = lapidary::data::Processor::from_model_dir(&model_dir).unwrap();
    let model = Gemma3ForConditionalGeneration::open(&model_dir, &dev, &OpenOptions::default()).unwrap();
    let tape = model.tape().clone();
    let conv: lapidary::data::template::Conversation =
        serde_json::from_str(std::fs::read_to_string(dir.path().join("train.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    let mut conv = conv;
    conv.messages.truncate(1);
    let (ids, images) = p.encode_prompt(&conv, dir.path()).unwrap();
    let pv = Tensor::from_f32(&dev, &p.pixels(&images[0]).unwrap(), &[1, 3, 32, 32], DType::F32).unwrap();
    let image_id = model.config().image_token_index;
    // 40 tokens: past the sliding window (32) of the local layers.
    let opts = GenerateOptions { max_new_tokens: 40, sampling: Sampling::Greedy, stop: vec![] };
    let fast = model.generate(&p.prompt(&conv, dir.path()).unwrap(), &opts).unwrap();
    let mut seq = ids.clone();
    let vocab = model.config().text.vocab_size;
    for (k, &tok) in fast.iter().enumerate() {
        let _g = tape.no_grad();
        let out = model.forward(&Batch::prompt(&seq, image_id, Some(pv.clone())), &ForwardOptions::default()).unwrap();
        let logits = out.logits.value().to_f32_vec().unwrap();
        let last = &logits[(seq.len() - 1) * vocab..];
        assert_eq!(argmax(last), tok, "token {k}");
        seq.push(tok);
    }
    // The cached step's logits themselves.
    let mut cache = lapidary::gemma3::KvCache::new(model.config().text.layer_types.len());
    model.prefill(&Batch::prompt(&ids, image_id, Some(pv.clone())), &mut cache).unwrap();
    let mut got = Vec::new();
    for &t in &fast[..35] {
        got = model.decode_step(t, &mut cache).unwrap();
    }
    let full_seq: Vec<u32> = ids.iter().chain(&fast[..35]).copied().collect();
    let _g = tape.no_grad();
    let out = model.forward(&Batch::prompt(&full_seq, image_id, Some(pv)), &ForwardOptions::default()).unwrap();
    let logits = out.logits.value().to_f32_vec().unwrap();
    let want = &logits[(full_seq.len() - 1) * vocab..];
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "cached logits differ by {worst} (scale {scale})");
}

fn fixtures() -> PathBuf {
    crate::repo_path("tests/fixtures/tiny-gemma3")
}

#[test]
fn merged_adapter_gives_the_adapter_logits() {
    let dev = Device::from_env_or_cpu().unwrap();
    let out = tempfile::tempdir().unwrap();
    let n = lapidary::merge::run(
        &fixtures().join("model"),
        &fixtures().join("adapter"),
        out.path(),
        DType::F32,
        &dev,
        false,
    )
    .unwrap();
    assert!(n > 0);
    let case = fixtures().join("cases/adapter_two_rows_one_image_each.safetensors");
    let batch = lapidary::gemma3::Batch::read(&case, &dev).unwrap();
    let merged = Gemma3ForConditionalGeneration::open(out.path(), &dev, &OpenOptions::default()).unwrap();
    let got = merged.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap();
    let f = lapidary::nn::safetensors::SafetensorsFiles::open(&case).unwrap();
    let want = f.load("logits", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "merged logits differ from PEFT's by {worst} (scale {scale})");
    // bf16 storage: within bf16 tolerance.
    let out16 = tempfile::tempdir().unwrap();
    lapidary::merge::run(
        &fixtures().join("model"),
        &fixtures().join("adapter"),
        out16.path(),
        DType::BF16,
        &dev,
        false,
    )
    .unwrap();
    let m16 = Gemma3ForConditionalGeneration::open(out16.path(), &dev, &OpenOptions::default()).unwrap();
    let got16 = m16.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap();
    let worst16 = got16.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst16 <= 3e-2 * scale, "bf16 merged logits differ by {worst16} (scale {scale})");
    println!("merge: f32 worst {:.2e}, bf16 worst {:.2e} (relative to max |logit|)", worst / scale, worst16 / scale);
}

/// Gemma 4's merge: both fixtures' PEFT adapters (vision clipped linears and every decoder
/// projection) folded in give PEFT's logits where the attention mask is 1, and the merged
/// checkpoint keeps the tensors that are no parameter (clip bounds, layer scalars, the
/// standardization), unchanged.
#[test]
fn gemma4_merged_adapters_give_peft_logits_and_keep_the_buffers() {
    let dev = Device::from_env_or_cpu().unwrap();
    for fixture in ["tiny-gemma4-dense", "tiny-gemma4-e"] {
        let root = crate::repo_path("tests/fixtures").join(fixture);
        let out = tempfile::tempdir().unwrap();
        let n = lapidary::merge::run(&root.join("model"), &root.join("adapter"), out.path(), DType::F32, &dev, false)
            .unwrap();
        assert!(n > 40, "{fixture}: {n} merged linears");
        let case = root.join("cases/adapter_two_images_and_padded_text_row.safetensors");
        let batch = lapidary::model::Batch::read(&case, &dev).unwrap();
        let merged = lapidary::registry::open(out.path(), &dev, &OpenOptions::default()).unwrap();
        let got = merged.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap();
        let f = lapidary::nn::safetensors::SafetensorsFiles::open(&case).unwrap();
        let want = f.load("logits", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
        let vocab = want.len() / batch.attention_mask.len();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = (0..batch.attention_mask.len())
            .filter(|&i| batch.attention_mask[i] == 1)
            .flat_map(|i| (i * vocab..(i + 1) * vocab).map(|j| (got[j] - want[j]).abs()))
            .fold(0f32, f32::max);
        println!("{fixture}: merged vs PEFT worst {:.2e} (relative to max |logit|)", worst / scale);
        assert!(worst <= 1e-4 * scale, "{fixture}: merged logits differ from PEFT's by {worst} (scale {scale})");
        let base = lapidary::nn::safetensors::SafetensorsFiles::open(root.join("model")).unwrap();
        let written = lapidary::nn::safetensors::SafetensorsFiles::open(out.path()).unwrap();
        let missing: Vec<&str> = base.names().filter(|k| written.entry(k).is_none()).collect();
        assert!(missing.is_empty(), "{fixture}: merged checkpoint lacks {missing:?}");
        for key in base.names().filter(|k| k.ends_with("input_max") || k.ends_with("layer_scalar")) {
            assert_eq!(base.bytes(key).unwrap(), written.bytes(key).unwrap(), "{fixture}: {key} changed");
        }
    }
}

#[test]
fn lora_dropout_changes_training_gradients_and_survives_checkpointing() {
    let dir = dataset(4);
    let dev = Device::from_env_or_cpu().unwrap();
    let grads = |p: f32, ckpt: bool, steps: usize| {
        let cfg = TrainConfig { lora_dropout: p, gradient_checkpointing: ckpt, warmup_steps: 0, ..config(dir.path()) };
        let mut t = Trainer::new(cfg, &dev).unwrap();
        let rows: Vec<Example> = t.train_examples().to_vec();
        let refs: Vec<&Example> = rows.iter().collect();
        for _ in 0..steps {
            let b = split(&t, &refs, 2);
            t.step_on(&b).unwrap();
        }
        let Gradients { loss, grads: g, .. } = t.gradients_on(&split(&t, &refs, 2)).unwrap();
        (loss, g.iter().map(|g| g.as_ref().unwrap().to_f32_vec().unwrap()).collect::<Vec<_>>())
    };
    let (plain_loss, plain) = grads(0.0, false, 1);
    let (drop_loss, dropped) = grads(0.5, false, 1);
    assert_ne!(plain, dropped, "dropout must change the gradients");
    assert_ne!(plain_loss, drop_loss);
    let (ck_loss, ck) = grads(0.5, true, 1);
    assert_eq!((drop_loss, &dropped), (ck_loss, &ck), "a checkpointed recompute must redraw the same masks");
}

/// A copy of the bundled model whose `tensor` has a NaN as its first value.
fn model_with_nan(dir: &Path, src: &Path, tensor: &str) -> PathBuf {
    let dst = dir.join("nan-model");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    set_first_value_nan(&dst.join("model.safetensors"), tensor);
    dst
}

/// Writes a NaN over the first value of `tensor` in the safetensors file at `path`.
fn set_first_value_nan(path: &Path, tensor: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = &header[tensor];
    let start = 8 + n + entry["data_offsets"][0].as_u64().unwrap() as usize;
    match entry["dtype"].as_str().unwrap() {
        "F32" => bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
        "BF16" | "F16" => bytes[start..start + 2].copy_from_slice(&[0xc0, 0x7f]),
        other => panic!("{tensor} is {other}"),
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_non_finite_loss_stops_the_run_and_writes_nothing() {
    let dir = dataset(8);
    let dev = Device::from_env_or_cpu().unwrap();
    let model = model_with_nan(dir.path(), &bundled_model(), "language_model.model.layers.0.mlp.down_proj.weight");
    let cfg = TrainConfig { model, save_every: 1, ..config(dir.path()) };
    let out = cfg.output_dir.clone();
    let mut trainer = Trainer::new(cfg, &dev).unwrap();
    let err = trainer.run(false).unwrap_err().to_string();
    assert!(err.contains("step 1") && err.contains("loss is NaN") && err.contains("base weights"), "{err}");
    assert!(!out.join("final").exists(), "an adapter was written after a NaN loss");
    let checkpoints: Vec<_> =
        std::fs::read_dir(&out).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(!checkpoints.iter().any(|n| n.to_string_lossy().starts_with("checkpoint")), "{checkpoints:?}");
}

#[test]
fn merge_never_replaces_its_inputs_or_a_non_empty_directory_unasked() {
    let dev = Device::from_env_or_cpu().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // A copy of the base, so that a failure here could not damage the fixtures.
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(fixtures().join("model")).unwrap().flatten() {
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let before = std::fs::read(model.join("model.safetensors")).unwrap();
    let adapter = fixtures().join("adapter");
    let merge = |out: &Path, overwrite: bool| lapidary::merge::run(&model, &adapter, out, DType::BF16, &dev, overwrite);
    for out in [model.clone(), model.join("sub"), tmp.path().to_path_buf()] {
        let e = merge(&out, true).unwrap_err().to_string();
        assert!(e.contains("would overwrite or sit inside"), "{}: {e}", out.display());
    }
    assert_eq!(std::fs::read(model.join("model.safetensors")).unwrap(), before, "the base changed");
    let out = tmp.path().join("merged");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "user data").unwrap();
    let e = merge(&out, false).unwrap_err().to_string();
    assert!(e.contains("not empty") && e.contains("--overwrite"), "{e}");
    assert!(out.join("keep.txt").exists());
    merge(&out, true).unwrap();
    assert!(out.join("model.safetensors").is_file() && !out.join("keep.txt").exists());
    let staged: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(staged.is_empty(), "a staging directory was left behind");
}

#[test]
fn a_fresh_run_refuses_an_earlier_runs_directory_unless_told_to_replace_it() {
    let dir = dataset(8);
    let dev = Device::from_env_or_cpu().unwrap();
    let cfg = TrainConfig { max_steps: 1, grad_accum_steps: 1, ..config(dir.path()) };
    let out = cfg.output_dir.clone();
    Trainer::new(cfg.clone(), &dev).unwrap().run(false).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let e = Trainer::new(cfg.clone(), &dev).unwrap().run(false).unwrap_err().to_string();
    assert!(e.contains("earlier run") && e.contains("--resume") && e.contains("--overwrite-output-dir"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(),
        metrics,
        "the refused run touched the metrics"
    );
    assert!(out.join("final").is_dir());
    let cfg = TrainConfig { overwrite_output_dir: true, ..cfg };
    Trainer::new(cfg, &dev).unwrap().run(false).unwrap();
    assert!(out.join("final").is_dir() && out.join("metrics.jsonl").is_file());
}

#[test]
fn a_full_fine_tune_saves_every_tensor_in_the_base_checkpoints_shape() {
    let dir = dataset(8);
    let dev = Device::from_env_or_cpu().unwrap();
    let cfg = TrainConfig {
        method: lapidary::train::Method::Full,
        max_steps: 1,
        grad_accum_steps: 1,
        learning_rate: 1e-3,
        ..config(dir.path())
    };
    let out = cfg.output_dir.clone();
    Trainer::new(cfg, &dev).unwrap().run(false).unwrap();
    let base = lapidary::nn::safetensors::SafetensorsFiles::open(&bundled_model()).unwrap();
    let saved = lapidary::nn::safetensors::SafetensorsFiles::open(&out.join("final")).unwrap();
    let mut checked = 0;
    for name in saved.names() {
        let want = &base.entry(name).unwrap_or_else(|| panic!("{name} is not a base tensor")).shape;
        assert_eq!(&saved.entry(name).unwrap().shape, want, "{name}");
        checked += 1;
    }
    assert_eq!(checked, base.names().count(), "the full fine-tune did not save every tensor");
    Gemma3ForConditionalGeneration::open(&out.join("final"), &dev, &OpenOptions::default()).unwrap();
    // The companion files `merge` writes, from the same list: every one the base has (the bundled
    // model has generation_config.json, which a full fine-tune once left out), and config.json
    // with the stored dtype.
    let family = lapidary::registry::family_of(&bundled_model()).unwrap();
    let present: Vec<&str> =
        family.companion_files().iter().copied().filter(|f| bundled_model().join(f).is_file()).collect();
    assert!(present.contains(&"generation_config.json") && present.len() >= 5, "{present:?}");
    for f in present {
        let (a, b) = (std::fs::read(bundled_model().join(f)).unwrap(), std::fs::read(out.join("final").join(f)));
        assert_eq!(b.unwrap_or_else(|e| panic!("final/{f}: {e}")), a, "final/{f} differs from the base's");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("final/config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "float32");
}

#[test]
fn adapters_with_rank_zero_or_non_finite_weights_are_refused() {
    let dev = Device::from_env_or_cpu().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let dst = tmp.path().join(name);
        std::fs::create_dir(&dst).unwrap();
        for e in std::fs::read_dir(fixtures().join("adapter")).unwrap().flatten() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
        dst
    };
    let open = |adapter: &Path| {
        lapidary::cli::open_frozen(&fixtures().join("model"), Some(adapter), &dev).map(|_| ()).unwrap_err().to_string()
    };
    let rank0 = copy("rank0");
    let cfg_path = rank0.join("adapter_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["r"] = 0.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = open(&rank0);
    assert!(e.contains("r is 0") && e.contains("adapter_config.json"), "{e}");

    let nan = copy("nan");
    let file = nan.join("adapter_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let key = header.as_object().unwrap().keys().find(|k| k.ends_with("lora_B.weight")).unwrap().clone();
    set_first_value_nan(&file, &key);
    let e = open(&nan);
    assert!(e.contains(&key) && e.contains("NaN") && e.contains("finite"), "{e}");
}

#[test]
fn eval_and_generation_refuse_non_finite_results() {
    let dev = Device::from_env_or_cpu().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model =
        model_with_nan(tmp.path(), &fixtures().join("model"), "language_model.model.layers.0.mlp.down_proj.weight");
    let case = fixtures().join("cases/two_rows_one_image_each.safetensors");
    let out = tmp.path().join("out.safetensors");
    let e = lapidary::eval::run(&model, &case, &out, None, &dev, true).unwrap_err().to_string();
    assert!(e.contains("the loss is NaN") && e.contains("non-finite"), "{e}");
    let m = Gemma3ForConditionalGeneration::open(&model, &dev, &OpenOptions::default()).unwrap();
    let opts = GenerateOptions { max_new_tokens: 3, sampling: Sampling::Greedy, stop: vec![] };
    let e = m.generate(&Collated::prompt(&[2, 5, 7], u32::MAX, vec![]), &opts).unwrap_err().to_string();
    assert!(e.contains("logits of step 0") && e.contains("non-finite"), "{e}");
}

#[test]
fn a_parquet_dataset_trains_as_the_same_rows_in_jsonl() {
    // The processor fixture's rows, as JSONL with image files and as parquet written by
    // `datasets` with the images embedded (row groups of 2): the same batches, the same losses.
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::from_env_or_cpu().unwrap();
    let run = |data: &str, out: &str| {
        let cfg = TrainConfig {
            data: lapidary::repo_path(data),
            output_dir: dir.path().join(out),
            max_steps: 3,
            max_len: 128,
            packing: true,
            ..config(dir.path())
        };
        let mut trainer = Trainer::new(cfg, &dev).unwrap();
        assert_eq!(trainer.rows().train, 5);
        (0..3).map(|_| trainer.step().unwrap().loss).collect::<Vec<f64>>()
    };
    let jsonl = run("tests/fixtures/processor/data.jsonl", "jsonl");
    let parquet = run("tests/fixtures/parquet/messages-images.parquet", "parquet");
    assert!(jsonl.iter().all(|l| l.is_finite() && *l > 0.0), "{jsonl:?}");
    assert_eq!(jsonl, parquet);
}
