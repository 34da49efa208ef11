//! The data pipeline against HF's Gemma3Processor (fixtures from tools/reference/make_demo.py):
//! chat template, token ids, labels, token_type_ids and pixel values of every row of a JSONL file
//! with PNG (alpha), greyscale JPEG and WebP images; the tokenizer on varied text; bad rows;
//! `lapidary data inspect`'s report.

use lapidary::core::Device;
use lapidary::data::{Dataset, EncodeOptions, OnBadRow, Processor, collate, template};
use lapidary::nn::safetensors::LoadTensor;
use lapidary::nn::safetensors::SafetensorsFiles;
use std::path::PathBuf;

fn root() -> PathBuf {
    crate::repo_path("")
}

fn processor() -> Processor {
    Processor::from_model_dir(&root().join("assets/tiny-vlm")).unwrap()
}

#[test]
fn rows_match_hf_processor() {
    let p = processor();
    let dir = root().join("tests/fixtures/processor");
    let ds = Dataset::load(&dir.join("data.jsonl"), &p, &EncodeOptions::default(), OnBadRow::Error).unwrap();
    let want = SafetensorsFiles::open(dir.join("expected.safetensors")).unwrap();
    let texts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let rows: Vec<String> =
        std::fs::read_to_string(dir.join("data.jsonl")).unwrap().lines().map(String::from).collect();
    assert_eq!(ds.len(), rows.len());
    let dev = Device::from_env_or_cpu().unwrap();
    let mut worst_pixel = 0f32;
    for (i, ex) in ds.examples.iter().enumerate() {
        let conv: template::Conversation = serde_json::from_str(&rows[i]).unwrap();
        let lapidary::data::ImageProcessing::Fixed { tokens, .. } = p.images else { panic!("Gemma 3 images") };
        let rendered = template::render(&conv, tokens, false).unwrap();
        assert_eq!(rendered.text, texts["texts"][i].as_str().unwrap(), "row {i}: rendered text");
        let ids = |name: &str| want.load_i64(&format!("row{i}.{name}")).unwrap().0;
        let got_ids: Vec<i64> = ex.input_ids.iter().map(|&x| x as i64).collect();
        assert_eq!(got_ids, ids("input_ids"), "row {i}: input_ids");
        assert_eq!(ex.labels, ids("labels"), "row {i}: labels");
        let tt: Vec<i64> = ex.token_type_ids.iter().map(|&x| x as i64).collect();
        assert_eq!(tt, ids("token_type_ids"), "row {i}: token_type_ids");
        let c = collate(&[ex], &p).unwrap();
        assert_eq!(c.attention_mask, ids("attention_mask"), "row {i}: attention_mask");
        let key = format!("row{i}.pixel_values");
        match want.entry(&key) {
            Some(e) => {
                assert_eq!(e.shape[0], c.images, "row {i}: image count");
                let hf = want.load(&key, &dev, lapidary::core::DType::F32).unwrap().to_f32_vec().unwrap();
                assert_eq!(hf.len(), c.pixel_values.len());
                let row_worst = hf.iter().zip(&c.pixel_values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                println!("row {i}: worst pixel difference {row_worst:e}");
                worst_pixel = worst_pixel.max(row_worst);
            }
            None => assert_eq!(c.images, 0, "row {i}: HF has no pixel values"),
        }
    }
    println!("worst pixel difference vs Gemma3Processor (PIL backend): {worst_pixel:e}");
    // The same 8-bit values (JPEG included: libjpeg, as PIL): only f32 rounding of the
    // normalization differs (one 8-bit level would be 2/255).
    assert!(worst_pixel <= 1e-6, "worst pixel difference {worst_pixel}");
}

#[test]
fn tokenizer_matches_hf_on_varied_text() {
    let p = processor();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/processor/expected.json")).unwrap())
            .unwrap();
    let text = v["tokenizer_sample"]["text"].as_str().unwrap();
    let want: Vec<u32> =
        v["tokenizer_sample"]["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let got = p.tokenizer.encode(text, true).unwrap();
    assert_eq!(got.ids, want);
    assert_eq!(p.tokenizer.decode(&got.ids, true).unwrap(), text.replace("<start_of_turn>", ""));
}

#[test]
fn collator_pads_right_and_counts_labels() {
    let p = processor();
    let dir = root().join("tests/fixtures/processor");
    let ds = Dataset::load(&dir.join("data.jsonl"), &p, &EncodeOptions::default(), OnBadRow::Error).unwrap();
    let rows: Vec<_> = ds.examples.iter().take(2).collect();
    let c = collate(&rows, &p).unwrap();
    let (a, b) = (rows[0].input_ids.len(), rows[1].input_ids.len());
    assert_eq!(c.seq, a.max(b));
    let short = if a < b { 0 } else { 1 };
    let n = rows[short].input_ids.len();
    for col in n..c.seq {
        let at = short * c.seq + col;
        assert_eq!((c.input_ids[at], c.attention_mask[at], c.labels[at], c.token_type_ids[at]), (0, 0, -100, 0));
    }
    let want: usize = rows.iter().map(|r| r.labels.iter().skip(1).filter(|&&l| l != -100).count()).sum();
    // The model's batch of these rows counts them (the one rule for loss targets).
    let dev = lapidary::core::Device::from_env_or_cpu().unwrap();
    let model = lapidary::registry::open(&root().join("assets/tiny-vlm"), &dev, &Default::default()).unwrap();
    let batch = model.batch(&c, &dev).unwrap();
    assert_eq!(batch.label_count(), want);
    assert_eq!(batch.pixel_values.as_ref().map(|p| p.shape().to_vec()), Some(vec![c.images, 3, 32, 32]));
    assert!(want > 0);
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_rows_name_file_and_line_or_are_skipped_and_reported() {
    let p = processor();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("tests/fixtures/processor/images/exact.png"), tmp.path().join("ok.png")).unwrap();
    std::fs::write(tmp.path().join("broken.png"), b"\x89PNG but not really").unwrap();
    let good = r#"{"messages":[{"role":"user","content":[{"type":"image","path":"ok.png"},{"type":"text","text":"What?"}]},{"role":"assistant","content":"A dot."}]}"#;
    let cases = [
        ("{not json", "not a conversation"),
        (&good.replace("ok.png", "missing.png") as &str, "missing.png not found"),
        (&good.replace("ok.png", "broken.png"), "cannot decode"),
        (r#"{"messages":[{"role":"user","content":"only a question"}]}"#, "no token to train on"),
        (&good.replace("\"A dot.\"", "\"<image_soft_token>\""), "image tokens must come only from image parts"),
        (
            &good.replace("\"path\":\"ok.png\"", "\"url\":\"https://example.com/ok.png\""),
            "remote images are not downloaded",
        ),
        (&good.replace("\"role\":\"assistant\"", "\"role\":\"user\""), "turns must alternate"),
    ];
    for (k, (row, why)) in cases.iter().enumerate() {
        let path = write(tmp.path(), &format!("d{k}.jsonl"), &format!("{good}\n\n{row}\n{good}\n"));
        let err = Dataset::load(&path, &p, &EncodeOptions::default(), OnBadRow::Error).unwrap_err().to_string();
        assert!(err.contains(&format!("d{k}.jsonl:3:")) && err.contains(why), "case {k}: {err}");
        let ds = Dataset::load(&path, &p, &EncodeOptions::default(), OnBadRow::Skip).unwrap();
        assert_eq!((ds.len(), ds.skipped.len(), ds.skipped[0].at), (2, 1, lapidary::data::RowAt::Line(3)), "case {k}");
        assert!(ds.skipped_report().contains(why));
    }
    // A line that is not UTF-8 (Latin-1 text) is a bad row named by its line, not a failure to
    // read the whole file; Windows line ends are read as line ends.
    let latin1 = good.replace("A dot.", "Un caf\u{e9}.").replace('\u{e9}', "\u{1}");
    let mut bytes = format!("{good}\r\n\r\n").into_bytes();
    bytes.extend(latin1.as_bytes().iter().map(|&b| if b == 1 { 0xe9 } else { b }));
    bytes.extend(format!("\r\n{good}\r\n").into_bytes());
    let path = tmp.path().join("latin1.jsonl");
    std::fs::write(&path, &bytes).unwrap();
    let err = Dataset::load(&path, &p, &EncodeOptions::default(), OnBadRow::Error).unwrap_err().to_string();
    assert!(err.contains("latin1.jsonl:3:") && err.contains("not UTF-8") && err.contains("column 143"), "{err}");
    let ds = Dataset::load(&path, &p, &EncodeOptions::default(), OnBadRow::Skip).unwrap();
    assert_eq!((ds.len(), ds.skipped.len(), ds.skipped[0].at), (2, 1, lapidary::data::RowAt::Line(3)));
}

#[test]
fn image_parts_name_their_file_under_path_image_or_url() {
    let p = processor();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("tests/fixtures/processor/images/exact.png"), tmp.path().join("ok.png")).unwrap();
    let rows: Vec<String> = ["path", "image", "url"]
        .iter()
        .map(|key| {
            format!(
                r#"{{"messages":[{{"role":"user","content":[{{"type":"image","{key}":"ok.png"}},{{"type":"text","text":"What?"}}]}},{{"role":"assistant","content":"A dot."}}]}}"#
            )
        })
        .collect();
    let path = write(tmp.path(), "d.jsonl", &rows.join("\n"));
    let ds = Dataset::load(&path, &p, &EncodeOptions::default(), OnBadRow::Error).unwrap();
    assert_eq!(ds.len(), 3);
    assert!(ds.examples.iter().all(|e| e.input_ids == ds.examples[0].input_ids && e.images == ds.examples[0].images));
}

#[test]
fn truncation_never_cuts_an_image_block() {
    let p = processor();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("tests/fixtures/processor/images/exact.png"), tmp.path().join("ok.png")).unwrap();
    let row = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"Look:"},{"type":"image","path":"ok.png"}]},{"role":"assistant","content":"A dot on a field of noise, seen from far away."}]}"#;
    let path = write(tmp.path(), "d.jsonl", row);
    let full = Dataset::load(&path, &p, &EncodeOptions::default(), OnBadRow::Error).unwrap();
    let len = full.examples[0].input_ids.len();
    let eoi = full.examples[0].input_ids.iter().position(|&i| i == p.tokenizer.eoi_id).unwrap();
    // Cutting text of the answer is allowed; the labels are cut with it.
    let opts = EncodeOptions { max_len: len - 3, ..Default::default() };
    let cut = Dataset::load(&path, &p, &opts, OnBadRow::Error).unwrap();
    assert_eq!(cut.examples[0].input_ids[..], full.examples[0].input_ids[..len - 3]);
    assert_eq!(cut.examples[0].labels.len(), len - 3);
    // And counted: the row, its length before the cut, a report naming both.
    assert_eq!((full.cut_rows(), full.cut_report(opts.max_len)), (vec![], String::new()));
    assert_eq!(cut.cut_rows(), [(lapidary::data::RowAt::Line(1), len)]);
    let report = cut.cut_report(opts.max_len);
    assert!(report.contains(&format!("1 of 1 rows longer than max_len {}", len - 3)), "{report}");
    assert!(report.contains(&format!("longest {len} tokens; line 1)")), "{report}");
    // Cutting into the image block is an error, or a counted skip.
    let opts = EncodeOptions { max_len: eoi, ..Default::default() };
    let err = Dataset::load(&path, &p, &opts, OnBadRow::Error).unwrap_err().to_string();
    assert!(err.contains("d.jsonl:1:") && err.contains("cut an image block"), "{err}");
    let err = Dataset::load(&path, &p, &opts, OnBadRow::Skip).unwrap_err().to_string();
    assert!(err.contains("no usable row (1 skipped"), "{err}");
}

/// A copy of the bundled model directory with `edit` applied to one of its JSON files.
fn model_with(file: &str, edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(root().join("assets/tiny-vlm")).unwrap().flatten() {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let path = dir.path().join(file);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    dir
}

#[test]
fn processor_configs_of_the_wrong_type_or_range_are_refused() {
    let ip = |key: &'static str, val: serde_json::Value| {
        move |v: &mut serde_json::Value| v["image_processor"][key] = val.clone()
    };
    let cases: Vec<(tempfile::TempDir, &str)> = vec![
        (model_with("processor_config.json", ip("image_mean", serde_json::json!(["0.5", "0.5", "0.5"]))), "image_mean"),
        (model_with("processor_config.json", ip("image_std", serde_json::json!([0.5, 0.0, 0.5]))), "image_std[1]"),
        (model_with("processor_config.json", ip("image_std", serde_json::json!([0.5, 0.5]))), "expected 3 numbers"),
        (model_with("processor_config.json", ip("rescale_factor", serde_json::json!("1/255"))), "rescale_factor"),
        (model_with("processor_config.json", ip("size", serde_json::json!({"height": 0, "width": 32}))), "size.height"),
        (model_with("processor_config.json", |v| v["image_seq_length"] = serde_json::json!("16")), "image_seq_length"),
        (model_with("config.json", |v| v["text_config"]["vocab_size"] = serde_json::json!(64)), "vocab_size is 64"),
        (model_with("processor_config.json", ip("do_pan_and_scan", serde_json::json!(true))), "do_pan_and_scan"),
        (model_with("processor_config.json", ip("do_resize", serde_json::json!(false))), "do_resize"),
        (model_with("processor_config.json", ip("resample", serde_json::json!(3))), "resample is 3"),
        (model_with("processor_config.json", ip("do_normalize", serde_json::json!("no"))), "do_normalize"),
    ];
    for (dir, want) in cases {
        let e = Processor::from_model_dir(dir.path()).err().expect("refused").to_string();
        assert!(e.contains(want), "expected {want:?} in: {e}");
    }
}

#[test]
fn images_decoded_while_loading_are_not_decoded_again() {
    let p = processor();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("ok.png");
    std::fs::copy(root().join("tests/fixtures/processor/images/exact.png"), &img).unwrap();
    let want = p.pixels(&img).unwrap();
    let row = r#"{"messages":[{"role":"user","content":[{"type":"image","path":"ok.png"},{"type":"text","text":"What?"}]},{"role":"assistant","content":"A dot."}]}"#;
    let path = write(tmp.path(), "d.jsonl", row);
    let ds = Dataset::load(&path, &p, &EncodeOptions::default(), OnBadRow::Error).unwrap();
    assert_eq!(ds.len(), 1);
    // The file is gone: the pixels can only come from what loading kept.
    std::fs::remove_file(&img).unwrap();
    assert_eq!(p.pixels(&img).unwrap(), want);
    let other = tmp.path().join("never-loaded.png");
    assert!(p.pixels(&other).is_err());
}

#[test]
fn data_inspect_reports_the_rows_tokens_costs_and_a_row_with_its_trained_tokens_marked() {
    let data = root().join("tests/fixtures/parquet/bad-rows.parquet");
    let cfg = lapidary::train::TrainConfig {
        model: root().join("assets/tiny-vlm"),
        data: data.clone(),
        micro_batch_size: 2,
        ..Default::default()
    };
    let report = lapidary::inspect::run(&cfg.model, &cfg.data, &cfg).unwrap();
    // The figures are the dataset's, the unusable rows listed with their reasons.
    let ds = Dataset::load(&data, &processor(), &EncodeOptions::default(), OnBadRow::Skip).unwrap();
    let tokens: usize = ds.examples.iter().map(|e| e.input_ids.len()).sum();
    assert!(report.contains(&format!("rows: 2 used, 4 skipped, 0 cut to max_len {}", cfg.max_len)), "{report}");
    assert!(report.contains(&format!("tokens: {tokens} (")), "{report}");
    assert!(report.contains("bad-rows.parquet row 1: column images[0]: cannot decode the image"), "{report}");
    assert!(report.contains("bad-rows.parquet row 4: column messages is null"), "{report}");
    assert!(report.contains("padded: 2 sequences in 1 micro-batches"), "{report}");
    assert!(report.contains("packed: 1 sequences in 1 micro-batches"), "{report}");
    // The row shown: its image collapsed, the answer marked as trained and the question not.
    assert!(report.contains("bad-rows.parquet row 0 as the model sees it"), "{report}");
    assert!(report.contains("<image_soft_token>×") && report.contains("What is in the image?"), "{report}");
    assert!(report.contains("«A red circle.<end_of_turn>\n»"), "{report}");
    assert!(!report.contains("«What"), "{report}");
}
