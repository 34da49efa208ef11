//! The trainer and generation on the bundled tiny model: gradient accumulation equivalence
//! (1 x 8 = 2 x 4 = 4 x 2 = 8 x 1), exact resume from a checkpoint, KV-cache decoding equal to
//! full recomputation, and a merged adapter giving the adapter's logits.

use lapidary::autograd::{Tape, Trainable};
use lapidary::core::{DType, Device, Tensor};
use lapidary::data::{Collated, Example, collate};
use lapidary::demo::{bundled_model, write_dataset};
use lapidary::gemma3::{Batch, Gemma3ForConditionalGeneration, GenerateOptions, Sampling, argmax};
use lapidary::train::{Schedule, TrainConfig, Trainer};
use std::path::{Path, PathBuf};

fn config(dir: &Path) -> TrainConfig {
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
        let (loss, grads, labels, _) = trainer.gradients_on(&split(&trainer, &refs, per)).unwrap();
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
    assert!(err.contains("checkpoint-000003"), "{err}");
}

#[test]
fn run_writes_adapter_metrics_and_plot() {
    let dir = dataset(12);
    let dev = Device::from_env_or_cpu().unwrap();
    let mut cfg = config(dir.path());
    cfg.eval_fraction = 0.25;
    cfg.eval_every = 2;
    let mut t = Trainer::new(cfg, &dev).unwrap();
    assert_eq!(t.sizes(), (9, 3));
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
    let tape = Tape::new();
    let model = Gemma3ForConditionalGeneration::open(&model_dir, &dev, DType::F32, &tape, Trainable::No).unwrap();
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
    let fast = model.generate(&tape, &ids, Some(&pv), &opts).unwrap();
    let mut seq = ids.clone();
    let vocab = model.config().text.vocab_size;
    for (k, &tok) in fast.iter().enumerate() {
        let _g = tape.no_grad();
        let out = model.forward(&tape, &Batch::prompt(&seq, image_id, Some(pv.clone())), false).unwrap();
        let logits = out.logits.value().to_f32_vec().unwrap();
        let last = &logits[(seq.len() - 1) * vocab..];
        assert_eq!(argmax(last), tok, "token {k}");
        seq.push(tok);
    }
    // The cached step's logits themselves.
    let mut cache = lapidary::gemma3::KvCache::new(model.config().text.layer_types.len());
    model.prefill(&tape, &Batch::prompt(&ids, image_id, Some(pv.clone())), &mut cache).unwrap();
    let mut got = Vec::new();
    for &t in &fast[..35] {
        got = model.decode_step(&tape, t, &mut cache).unwrap();
    }
    let full_seq: Vec<u32> = ids.iter().chain(&fast[..35]).copied().collect();
    let _g = tape.no_grad();
    let out = model.forward(&tape, &Batch::prompt(&full_seq, image_id, Some(pv)), false).unwrap();
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
    let n = lapidary::merge::run(&fixtures().join("model"), &fixtures().join("adapter"), out.path(), DType::F32, &dev)
        .unwrap();
    assert!(n > 0);
    let case = fixtures().join("cases/adapter_two_rows_one_image_each.safetensors");
    let batch = lapidary::eval::read_batch(&case, &dev).unwrap();
    let tape = Tape::new();
    let merged = Gemma3ForConditionalGeneration::open(out.path(), &dev, DType::F32, &tape, Trainable::No).unwrap();
    let got = merged.forward(&tape, &batch, false).unwrap().logits.value().to_f32_vec().unwrap();
    let f = lapidary::nn::safetensors::SafetensorsFiles::open(&case).unwrap();
    let want = f.load("logits", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "merged logits differ from PEFT's by {worst} (scale {scale})");
    // bf16 storage: within bf16 tolerance.
    let out16 = tempfile::tempdir().unwrap();
    lapidary::merge::run(&fixtures().join("model"), &fixtures().join("adapter"), out16.path(), DType::BF16, &dev)
        .unwrap();
    let m16 = Gemma3ForConditionalGeneration::open(out16.path(), &dev, DType::F32, &tape, Trainable::No).unwrap();
    let got16 = m16.forward(&tape, &batch, false).unwrap().logits.value().to_f32_vec().unwrap();
    let worst16 = got16.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst16 <= 3e-2 * scale, "bf16 merged logits differ by {worst16} (scale {scale})");
    println!("merge: f32 worst {:.2e}, bf16 worst {:.2e} (relative to max |logit|)", worst / scale, worst16 / scale);
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
        let (loss, g, _, _) = t.gradients_on(&split(&t, &refs, 2)).unwrap();
        (loss, g.iter().map(|g| g.as_ref().unwrap().to_f32_vec().unwrap()).collect::<Vec<_>>())
    };
    let (plain_loss, plain) = grads(0.0, false, 1);
    let (drop_loss, dropped) = grads(0.5, false, 1);
    assert_ne!(plain, dropped, "dropout must change the gradients");
    assert_ne!(plain_loss, drop_loss);
    let (ck_loss, ck) = grads(0.5, true, 1);
    assert_eq!((drop_loss, &dropped), (ck_loss, &ck), "a checkpointed recompute must redraw the same masks");
}
