//! `lapidary export-gguf` on the bundled tiny VLM with a trained adapter: every exported tensor
//! equals the merged model's (f32), the text file read back gives the merged model's logits
//! (f32, f16, bf16, Q8_0 within measured bounds), and names, shapes, types and metadata equal
//! what llama.cpp's converter writes for the same checkpoint (tests/fixtures/gguf-export,
//! from tools/reference/gguf_export_reference.py).

use lapidary::core::Device;
use lapidary::demo::{bundled_model, write_dataset};
use lapidary::export::OutType;
use lapidary::gemma3::Batch;
use lapidary::gemma3::ForwardOptions;
use lapidary::nn::gguf::{GgufFile, Value};
use lapidary::train::{TrainConfig, Trainer};
use std::path::{Path, PathBuf};

/// A LoRA adapter on every linear of the bundled model after a few steps (B no longer zero).
fn trained_adapter(dir: &Path) -> PathBuf {
    write_dataset(dir, "train", 8, 5).unwrap();
    let d = TrainConfig::default();
    let cfg = TrainConfig {
        learning_rate: 2e-2,
        lr_scheduler: d.lr_scheduler,
        warmup_steps: d.warmup_steps,
        max_steps: 3,
        grad_accum_steps: d.grad_accum_steps,
        seed: 3,
        ..crate::training::config(dir)
    };
    let dev = Device::from_env_or_cpu().unwrap();
    Trainer::new(cfg, &dev).unwrap().run(false).unwrap();
    dir.join("out/final")
}

fn text_logits(model: &Path, adapter: Option<&Path>, ids: &[u32], dev: &Device) -> Vec<f32> {
    let m = lapidary::cli::open_frozen(model, adapter, dev).unwrap().model;
    let batch = Batch::prompt(ids, usize::MAX, None);
    m.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap()
}

/// `‖got - want‖₂ / ‖want‖₂`.
fn relative_l2(got: &[f32], want: &[f32]) -> f32 {
    let d: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let w: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (d / w).sqrt() as f32
}

fn worst_relative(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn exported_files_hold_the_merged_model() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = trained_adapter(tmp.path());
    let dev = Device::from_env_or_cpu().unwrap();
    let model = bundled_model();
    // Tokens past the sliding window (32), so sliding and global layers differ.
    let ids: Vec<u32> = (0..48u32).map(|i| [2, 4, 100, 37][i as usize % 4] + (i * 7) % 200).collect();
    let want = text_logits(&model, Some(&adapter), &ids, &dev);
    let base = text_logits(&model, None, &ids, &dev);
    assert!(worst_relative(&base, &want) > 1e-3, "the adapter should change the logits");

    let out = tmp.path().join("gguf");
    let e = lapidary::export::run(&model, Some(&adapter), &out, OutType::F32, false, &dev).unwrap();
    assert!(e.merged > 0);
    let mmproj = e.mmproj.clone().expect("a vision model gets an mmproj file");
    // Every tensor: the merged value (plus one where llama.cpp stores 1 + w), exactly in f32.
    let params = lapidary::merge::merged_params(&model, Some(&adapter), &dev).unwrap().params;
    let layout = lapidary::registry::family_of(&model).unwrap().gguf_export(&model).unwrap();
    let (text_f, proj_f) = (GgufFile::open(&e.text).unwrap(), GgufFile::open(&mmproj).unwrap());
    assert_eq!(text_f.tensors.len() + proj_f.tensors.len(), params.len());
    for p in &params {
        let t = layout.tensor(&p.name).unwrap();
        let name = t.name;
        assert_eq!(t.vision, name.starts_with("v.") || name.starts_with("mm."), "{name}");
        let f = if t.vision { &proj_f } else { &text_f };
        let (values, shape) = f.tensor_f32(&name).unwrap();
        assert_eq!(shape, p.shape, "{name}");
        let shift = if t.plus_one { 1.0 } else { 0.0 };
        let tol = if name == "mm.input_projection.weight" { 1e-3 } else { 0.0 };
        for (a, b) in values.iter().zip(&p.values) {
            assert!((a - (b + shift)).abs() <= tol * b.abs().max(1e-2), "{name}: {a} vs {}", b + shift);
        }
    }
    // An existing export is not replaced unasked.
    let again = lapidary::export::run(&model, Some(&adapter), &out, OutType::F32, false, &dev);
    assert!(again.unwrap_err().to_string().contains("--overwrite"));

    // The text file read back: the merged model's logits.
    let mut report = Vec::new();
    // Bounds on the relative L2 error of the logits, and on the worst one relative to the largest.
    let cases = [
        (OutType::F32, 1e-6, 1e-5),
        (OutType::F16, 1e-2, 1e-2),
        (OutType::Bf16, 1e-2, 3e-2),
        (OutType::Q8_0, 3e-2, 5e-2),
    ];
    for (t, l2_bound, worst_bound) in cases {
        let e = lapidary::export::run(&model, Some(&adapter), &out, t, true, &dev).unwrap();
        let got = text_logits(&e.text, None, &ids, &dev);
        let (l2, w) = (relative_l2(&got, &want), worst_relative(&got, &want));
        report.push(format!("{t:?} {l2:.2e} / {w:.2e}"));
        assert!(l2 <= l2_bound, "{t:?}: logits {l2:.2e} (relative L2) from the merged model's (bound {l2_bound:.0e})");
        assert!(w <= worst_bound, "{t:?}: worst logit {w:.2e} of the largest off (bound {worst_bound:.0e})");
    }
    println!("export-gguf read back, logit error relative L2 / worst relative to max |logit|: {}", report.join(", "));
}

/// The converter's listing of one file of the bundled Gemma 3.
fn listing(kind: &str) -> serde_json::Value {
    listing_in("listing.json", kind)
}

/// The converter's listing of one file, from `file` in tests/fixtures/gguf-export.
fn listing_in(file: &str, kind: &str) -> serde_json::Value {
    let path = crate::repo_path(&format!("tests/fixtures/gguf-export/{file}"));
    let all: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all[kind].clone()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::U64(_) => "UINT",
        Value::I64(_) => "INT",
        Value::F64(_) => "FLOAT",
        Value::Bool(_) => "BOOL",
        Value::Str(_) => "STRING",
        Value::Array(_) => "ARRAY",
    }
}

fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::U64(x) => (*x).into(),
        Value::I64(x) => (*x).into(),
        Value::F64(x) => (*x).into(),
        Value::Bool(x) => (*x).into(),
        Value::Str(x) => x.clone().into(),
        Value::Array(a) => a.iter().map(json_of).collect(),
    }
}

fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(1.0),
        _ => match (a.as_array(), b.as_array()) {
            (Some(x), Some(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
            _ => a == b,
        },
    }
}

fn check_against_converter(file: &Path, kind: &str, extra_keys: &[&str]) {
    check_against_listing(file, listing(kind), kind, extra_keys)
}

fn check_against_listing(file: &Path, want: serde_json::Value, kind: &str, extra_keys: &[&str]) {
    let f = GgufFile::open(file).unwrap();
    let want_meta = want["metadata"].as_object().unwrap();
    for (key, w) in want_meta {
        let got = f.get(key).unwrap_or_else(|| panic!("{kind}: metadata {key} missing"));
        let wt = w["type"][0].as_str().unwrap();
        assert!(wt.starts_with(type_name(got)), "{kind}: {key} is {got:?}, the converter writes {wt}");
        let wv = &w["value"];
        let gv = json_of(got);
        if let Some(len) = wv.get("len") {
            let ga = gv.as_array().unwrap();
            assert_eq!(ga.len() as u64, len.as_u64().unwrap(), "{kind}: {key} length");
            let head = wv["head"].as_array().unwrap();
            let tail = wv["tail"].as_array().unwrap();
            assert!(same(&ga[..head.len()].to_vec().into(), &wv["head"]), "{kind}: {key} head");
            assert!(same(&ga[ga.len() - tail.len()..].to_vec().into(), &wv["tail"]), "{kind}: {key} tail");
        } else {
            assert!(same(&gv, wv), "{kind}: {key} = {gv}, the converter writes {wv}");
        }
    }
    for key in f.metadata.keys() {
        assert!(want_meta.contains_key(key) || extra_keys.contains(&key.as_str()), "{kind}: extra metadata {key}");
    }
    let want_t = want["tensors"].as_object().unwrap();
    assert_eq!(f.tensors.len(), want_t.len(), "{kind}: tensor count");
    for (name, w) in want_t {
        let t = f.tensors.get(name).unwrap_or_else(|| panic!("{kind}: tensor {name} missing"));
        let shape: Vec<usize> = w["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape, shape, "{kind}: {name} shape");
        let ty = format!("{:?}", t.ggml_type).to_uppercase();
        assert_eq!(ty, w["type"].as_str().unwrap(), "{kind}: {name} type");
    }
}

#[test]
fn export_writes_what_llama_cpps_converter_writes() {
    let dev = Device::from_env_or_cpu().unwrap();
    let out = tempfile::tempdir().unwrap();
    for (t, label) in [(OutType::F16, "f16"), (OutType::Q8_0, "q8_0")] {
        let e = lapidary::export::run(&bundled_model(), None, out.path(), t, false, &dev).unwrap();
        assert_eq!(e.merged, 0);
        // The tiny model's layers (3 sliding, then 1 global) are not llama.cpp's default of one
        // global in six: written per layer, a key the converter has no need of for real Gemma 3.
        check_against_converter(&e.text, &format!("text-{label}"), &["gemma3.attention.sliding_window_pattern"]);
        check_against_converter(e.mmproj.as_ref().unwrap(), &format!("mmproj-{label}"), &[]);
    }
    // Without a vision tower (a text-only GGUF written back out) there is no mmproj file; the
    // tokenizer and metadata survive the round trip.
    let text_only = out.path().join("tiny-vlm-f16.gguf");
    let again = tempfile::tempdir().unwrap();
    let e = lapidary::export::run(&text_only, None, again.path(), OutType::F16, false, &dev).unwrap();
    assert!(e.mmproj.is_none());
    check_against_converter(&e.text, "text-f16", &["gemma3.attention.sliding_window_pattern"]);
}

/// `src` copied to `dst` (files only, one level).
fn copy_files(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// `[out, p·p·3]` rows in (row, column, channel) order, as the `[out, 3, p, p]` kernel.
fn as_conv(values: &[f32], out: usize, p: usize) -> Vec<f32> {
    let mut conv = vec![0f32; values.len()];
    for (i, v) in values.iter().enumerate() {
        let (o, rest) = (i / (3 * p * p), i % (3 * p * p));
        let (y, x, c) = (rest / (3 * p), rest / 3 % p, rest % 3);
        conv[((o * 3 + c) * p + y) * p + x] = *v;
    }
    assert_eq!(conv.len(), out * 3 * p * p);
    conv
}

#[test]
fn gemma4_export_writes_what_llama_cpps_converter_writes_with_the_merged_values() {
    // Both tiny Gemma 4s (dense; E-series with per-layer embeddings, KV sharing and the
    // double-wide MLP): names, shapes, types and metadata of the text and mmproj files in f16 and
    // Q8_0 as llama.cpp's converter writes them (tests/fixtures/gguf-export/listing-gemma4.json);
    // then in f32 with the fixture's PEFT adapter folded in, every tensor the merged model's value
    // (the patch projection as a convolution kernel) and every buffer the checkpoint's.
    let dev = Device::from_env_or_cpu().unwrap();
    for kind in ["dense", "e"] {
        let tmp = tempfile::tempdir().unwrap();
        // The converter names the model after its directory.
        let model = tmp.path().join(format!("tiny-gemma4-{kind}"));
        let fixture = crate::repo_path(&format!("tests/fixtures/tiny-gemma4-{kind}"));
        copy_files(&fixture.join("model"), &model);
        for (t, label) in [(OutType::F16, "f16"), (OutType::Q8_0, "q8_0")] {
            let e = lapidary::export::run(&model, None, &tmp.path().join("out"), t, false, &dev).unwrap();
            for (file, part) in [(&e.text, "text"), (e.mmproj.as_ref().expect("an mmproj file"), "mmproj")] {
                let name = format!("{kind}-{part}-{label}");
                check_against_listing(file, listing_in("listing-gemma4.json", &name), &name, &[]);
            }
        }
        let adapter = fixture.join("adapter");
        let e =
            lapidary::export::run(&model, Some(&adapter), &tmp.path().join("f32"), OutType::F32, false, &dev).unwrap();
        assert!(e.merged > 0, "{kind}: the adapter is folded in");
        let params = lapidary::merge::merged_params(&model, Some(&adapter), &dev).unwrap().params;
        let layout = lapidary::registry::family_of(&model).unwrap().gguf_export(&model).unwrap();
        let (text_f, proj_f) = (GgufFile::open(&e.text).unwrap(), GgufFile::open(e.mmproj.as_ref().unwrap()).unwrap());
        let extras = layout.extra_tensors();
        assert_eq!(text_f.tensors.len() + proj_f.tensors.len(), params.len() + extras.len(), "{kind}");
        let mut checked = 0;
        let mut check = |name: &str, vision: bool, want: &[f32]| {
            let f = if vision { &proj_f } else { &text_f };
            let (got, _) = f.tensor_f32(name).unwrap_or_else(|e| panic!("{kind}: {name}: {e}"));
            assert_eq!(got, want, "{kind}: {name}");
            checked += 1;
        };
        for p in &params {
            let t = layout.tensor(&p.name).unwrap_or_else(|| panic!("{kind}: {} has no GGUF name", p.name));
            let want = match t.patches_as_conv {
                Some(patch) => as_conv(&p.values, p.shape[0], patch),
                None => p.values.clone(),
            };
            check(&t.name, t.vision, &want);
        }
        for x in &extras {
            check(&x.tensor.name, x.tensor.vision, &x.values);
        }
        let scalars = extras.iter().filter(|x| x.tensor.name.ends_with("layer_output_scale.weight")).count();
        assert_eq!(
            scalars,
            text_f.tensors.keys().filter(|n| n.starts_with("blk.") && n.ends_with(".attn_norm.weight")).count()
        );
        println!(
            "gemma4 {kind} export-gguf: {checked} tensors equal the merged model's ({} buffers and tables)",
            extras.len()
        );
    }
}

/// The real Gemma 3 270M exported to f16 is, byte for byte, the file transformers loaded with the
/// same token ids and logits as lapidary on the source (tools/reference/check_export.py, figures
/// in the fixture).
#[test]
fn the_270m_export_is_the_file_transformers_was_checked_on() {
    use sha2::Digest;
    let Some(source) = crate::gguf::gemma3_gguf() else { return };
    let path = crate::repo_path("tests/fixtures/gguf-export/transformers_checked.json");
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(rec["token_ids_equal"], true);
    assert!(rec["logits_max_rel_diff"].as_f64().unwrap() < 1e-2, "{rec}");
    let dev = Device::from_env_or_cpu().unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = lapidary::export::run(&source, None, out.path(), OutType::F16, false, &dev).unwrap();
    assert_eq!(e.text.file_name().unwrap().to_str().unwrap(), rec["export"].as_str().unwrap());
    assert!(e.mmproj.is_none());
    let bytes = std::fs::read(&e.text).unwrap();
    let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, rec["sha256"].as_str().unwrap(), "the export differs from the file transformers checked");
}
