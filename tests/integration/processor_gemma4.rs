//! The data pipeline against HF's Gemma 4 processing (fixtures from
//! tools/reference/make_gemma4_processor_fixtures.py): Gemma 4's chat format, token ids, labels,
//! mm_token_type_ids, patch pixels, patch positions and soft-token counts of every row of a JSONL
//! file with PNG (alpha), JPEG and WebP images of several aspect ratios (one thinner than a
//! patch row), as Gemma4ImageProcessorPil and the tokenizer give them; the target sizes of
//! `get_aspect_ratio_preserving_size` under the released settings; the generation prompt; bad
//! processor settings; and the batch a Gemma 4 model builds from the collated rows.

use lapidary::core::{DType, Device};
use lapidary::data::patches::PatchConfig;
use lapidary::data::template::{ChatFormat, Conversation, render_as};
use lapidary::data::{Dataset, EncodeOptions, ImageProcessing, OnBadRow, Processor, collate};
use lapidary::nn::safetensors::{LoadTensor, SafetensorsFiles};
use std::path::PathBuf;

fn root() -> PathBuf {
    crate::repo_path("")
}

fn model_dir() -> PathBuf {
    root().join("tests/fixtures/tiny-gemma4-e/model")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/processor-gemma4")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap()
}

#[test]
fn rows_match_hf_gemma4_processing() {
    let p = lapidary::registry::processor(&model_dir()).unwrap();
    assert_eq!(p.format, ChatFormat::Gemma4);
    let ImageProcessing::Patches(cfg) = &p.images else { panic!("Gemma 4 images are patches") };
    assert_eq!((cfg.patch_size, cfg.pooling_kernel, cfg.max_soft_tokens), (4, 2, 70));
    let dir = fixtures();
    let ds = Dataset::load(&dir.join("data.jsonl"), &p, &EncodeOptions::default(), OnBadRow::Error).unwrap();
    let want = SafetensorsFiles::open(dir.join("expected.safetensors")).unwrap();
    let texts = expected();
    let rows: Vec<String> =
        std::fs::read_to_string(dir.join("data.jsonl")).unwrap().lines().map(String::from).collect();
    assert_eq!(ds.len(), rows.len());
    let dev = Device::cpu().unwrap();
    let mut worst_pixel = 0f32;
    let mut images_seen = 0;
    for (i, ex) in ds.examples.iter().enumerate() {
        let conv: Conversation = serde_json::from_str(&rows[i]).unwrap();
        let mut count = |path: &str| Ok(p.image(&dir.join(path)).map_err(|e| e.to_string())?.soft_tokens);
        let rendered = render_as(ChatFormat::Gemma4, &conv, &mut count, false).unwrap();
        assert_eq!(rendered.text, texts["texts"][i].as_str().unwrap(), "row {i}: rendered text");
        let ids = |name: &str| want.load_i64(&format!("row{i}.{name}")).unwrap().0;
        let got_ids: Vec<i64> = ex.input_ids.iter().map(|&x| x as i64).collect();
        assert_eq!(got_ids, ids("input_ids"), "row {i}: input_ids");
        assert_eq!(ex.labels, ids("labels"), "row {i}: labels");
        let c = collate(&[ex], &p).unwrap();
        assert_eq!(c.attention_mask, ids("attention_mask"), "row {i}: attention_mask");
        assert_eq!(c.token_type_ids, ids("mm_token_type_ids"), "row {i}: mm_token_type_ids");
        let key = format!("row{i}.pixel_values");
        match want.entry(&key) {
            Some(e) => {
                assert_eq!(e.shape[0], c.images, "row {i}: image count");
                assert_eq!(&e.shape[1..], &c.image_shape[..], "row {i}: patches per image");
                let hf = want.load(&key, &dev, DType::F32).unwrap().to_f32_vec().unwrap();
                assert_eq!(hf.len(), c.pixel_values.len());
                let row_worst = hf.iter().zip(&c.pixel_values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                worst_pixel = worst_pixel.max(row_worst);
                assert_eq!(c.image_position_ids.as_ref().unwrap(), &ids("image_position_ids"), "row {i}: positions");
                assert_eq!(c.soft_tokens_per_image.as_ref().unwrap(), &ids("num_soft_tokens_per_image"), "row {i}");
                images_seen += c.images;
            }
            None => assert_eq!(c.images, 0, "row {i}: HF has no pixel values"),
        }
    }
    assert_eq!(images_seen, 6);
    println!("worst pixel difference vs Gemma4ImageProcessorPil: {worst_pixel:e}");
    // The same 8-bit values after PIL's bicubic resize: only the f32 rescale may round apart.
    assert!(worst_pixel <= 1e-6, "worst pixel difference {worst_pixel}");
}

#[test]
fn target_sizes_match_hf_under_every_budget() {
    let v = expected();
    let cases = v["target_sizes"].as_array().unwrap();
    assert!(cases.len() > 600);
    for case in cases {
        let (h, w) = (case["height"].as_u64().unwrap() as usize, case["width"].as_u64().unwrap() as usize);
        let cfg = PatchConfig::gemma4(16, 3, case["max_soft_tokens"].as_u64().unwrap() as usize).unwrap();
        let got = cfg.target_size(h, w);
        match case["target"].as_array() {
            Some(t) => {
                let t = (t[0].as_u64().unwrap() as usize, t[1].as_u64().unwrap() as usize);
                assert_eq!(got, Ok(t), "{h}x{w} at {}", case["max_soft_tokens"]);
            }
            None => {
                assert!(got.is_err(), "{h}x{w}: HF refuses ({}), got {got:?}", case["target"]);
            }
        }
    }
}

#[test]
fn the_generation_prompt_opens_a_model_turn_with_thinking_off() {
    let v = expected();
    let g = &v["generation_prompt"];
    let conv: Conversation = serde_json::from_value(serde_json::json!({ "messages": g["messages"] })).unwrap();
    let p = lapidary::registry::processor(&model_dir()).unwrap();
    let dir = fixtures();
    let mut count = |path: &str| Ok(p.image(&dir.join(path)).map_err(|e| e.to_string())?.soft_tokens);
    let rendered = render_as(ChatFormat::Gemma4, &conv, &mut count, true).unwrap();
    let hf = g["text"].as_str().unwrap();
    // HF renders `<|image|>` and its processor expands it: expand the reference the same way.
    let mut expanded = String::new();
    let pieces: Vec<&str> = hf.split("<|image|>").collect();
    let counts: Vec<usize> = rendered.images.iter().map(|path| p.image(&dir.join(path)).unwrap().soft_tokens).collect();
    assert_eq!(pieces.len(), counts.len() + 1);
    expanded.push_str(pieces[0]);
    for (n, rest) in counts.iter().zip(&pieces[1..]) {
        expanded.push_str(&format!("<|image>{}<image|>{rest}", "<|image|>".repeat(*n)));
    }
    assert_eq!(rendered.text, expanded);
    let row = p.prompt(&conv, &dir).unwrap();
    assert_eq!(row.images, 2);
    assert_eq!(row.soft_tokens_per_image.as_ref().unwrap().iter().map(|&n| n as usize).collect::<Vec<_>>(), counts);
}

#[test]
fn bad_gemma4_processor_settings_are_refused_with_the_file() {
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("max_soft_tokens", serde_json::json!(100), "max_soft_tokens is 100"),
        ("patch_size", serde_json::json!(16), "vision_config.patch_size"),
        ("pooling_kernel_size", serde_json::json!(3), "vision_config.pooling_kernel_size"),
        ("resample", serde_json::json!(2), "bicubic"),
        ("do_resize", serde_json::json!(false), "do_resize"),
    ];
    for (key, value, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(model_dir()).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "json" || e == "jinja") {
                std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
            }
        }
        let path = dir.path().join("processor_config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["image_processor"][key] = value;
        std::fs::write(&path, v.to_string()).unwrap();
        let e = Processor::gemma4_from_model_dir(dir.path()).err().expect("refused").to_string();
        assert!(e.contains(want) && e.contains("processor_config.json"), "{key}: expected {want:?} in: {e}");
    }
}

#[test]
fn a_gemma4_model_takes_collated_rows_with_their_patches() {
    let dir = model_dir();
    let p = lapidary::registry::processor(&dir).unwrap();
    let data = fixtures().join("train.jsonl");
    let ds = Dataset::load(&data, &p, &EncodeOptions::default(), OnBadRow::Error).unwrap();
    let dev = Device::cpu().unwrap();
    let model = lapidary::registry::open(&dir, &dev, &Default::default()).unwrap();
    let rows: Vec<_> = ds.examples.iter().collect();
    let c = collate(&rows, &p).unwrap();
    assert_eq!(c.images, 4);
    let batch = model.batch(&c, &dev).unwrap();
    assert_eq!(batch.pixel_values.as_ref().unwrap().shape(), &[4, 280, 48]);
    let out = model.forward(&batch, &Default::default()).unwrap();
    let loss = out.loss.unwrap().value().to_f32_vec().unwrap()[0];
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    // Without the positions the model cannot place the patches: a clear error, not a guess.
    let mut broken = c.clone();
    broken.image_position_ids = None;
    let e = model.batch(&broken, &dev).unwrap_err().to_string();
    assert!(e.contains("patch positions"), "{e}");
}
