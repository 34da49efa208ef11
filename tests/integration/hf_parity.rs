//! Parity with HF transformers on the committed tiny Gemma 3 fixtures (f32 tolerance: 1e-4 of
//! each tensor's largest value; worst seen about 2e-6): image features, hidden states, logits,
//! loss and every gradient, from both checkpoint layouts and config schemas, with and without
//! checkpointing; bf16 weights give HF's loss within 1e-2.

use lapidary::autograd::{Tape, Trainable};
use lapidary::core::{DType, Device};
use lapidary::gemma3::MultiModalProjector;
use lapidary::gemma3::{ForwardOptions, OpenOptions};
use lapidary::model::{AdapterHost, Checkpointing, Model};
use lapidary::nn::safetensors::LoadTensor;
use lapidary::nn::safetensors::SafetensorsFiles;
use lapidary::nn::{Scope, Weights};
use lapidary::siglip::{SiglipVisionConfig, SiglipVisionModel};
use std::path::PathBuf;

pub(crate) fn fixtures() -> PathBuf {
    crate::repo_path("tests/fixtures/tiny-gemma3")
}

/// Worst |got - want| relative to the largest |want|.
pub(crate) fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    rel_err_floor(got, want, 0.0)
}

/// As [`rel_err`], with the scale at least `floor` (for gradients that are zero in theory, such
/// as SigLIP's k_proj biases: softmax is invariant to a shift of every score).
fn rel_err_floor(got: &[f32], want: &[f32], floor: f64) -> f64 {
    let scale = want.iter().fold(floor, |m, x| m.max(x.abs() as f64));
    got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn image_features_match_hf() {
    let dev = Device::from_env_or_cpu().unwrap();
    let cfg = lapidary::gemma3::Gemma3Config::from_file(fixtures().join("model/config.json")).unwrap();
    let vcfg = SiglipVisionConfig::from_file(fixtures().join("model/config.json")).unwrap();
    for (case, layout) in [("two_rows_one_image_each", "model"), ("two_images_and_padded_text_row", "model-hub")] {
        let f = SafetensorsFiles::open(fixtures().join("cases").join(format!("{case}.safetensors"))).unwrap();
        let want = f.load("image_features", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
        for checkpointing in [false, true] {
            let w = Weights::open(fixtures().join(layout), &dev, DType::F32)
                .unwrap()
                .with_alias("vision_tower.", "vision_tower.vision_model.");
            let tape = Tape::new();
            let root = Scope::new(&w, &tape, Trainable::No);
            let tower = SiglipVisionModel::load(&vcfg, &root.at("vision_tower")).unwrap();
            let proj = MultiModalProjector::load(&cfg, &root.at("multi_modal_projector")).unwrap();
            let pixels = tape.input(f.load("pixel_values", &dev, DType::F32).unwrap());
            let feats =
                proj.forward(&tower.forward(&pixels, Checkpointing::each_layer_if(checkpointing)).unwrap()).unwrap();
            assert_eq!(feats.shape(), f.entry("image_features").unwrap().shape.as_slice());
            let err = rel_err(&feats.value().to_f32_vec().unwrap(), &want);
            println!("{case} ({layout}, checkpointing {checkpointing}): image features max rel err {err:.2e}");
            assert!(err < 1e-4, "{case} ({layout}): image features differ from HF by {err:.2e} (relative)");
            let unused = w.unused();
            assert!(unused.iter().all(|n| n.starts_with("language_model.")), "vision weights left unused: {unused:?}");
        }
    }
}

pub(crate) fn load_batch(case: &str, dev: &Device) -> (lapidary::gemma3::Batch, SafetensorsFiles) {
    let f = SafetensorsFiles::open(fixtures().join("cases").join(format!("{case}.safetensors"))).unwrap();
    let (ids, shape) = f.load_i64("input_ids").unwrap();
    let batch = lapidary::gemma3::Batch {
        batch: shape[0],
        seq: shape[1],
        input_ids: ids,
        attention_mask: f.load_i64("attention_mask").unwrap().0,
        token_type_ids: f.load_i64("token_type_ids").unwrap().0,
        labels: Some(f.load_i64("labels").unwrap().0),
        pixel_values: f.entry("pixel_values").map(|_| f.load("pixel_values", dev, DType::F32).unwrap()),
        image_position_ids: None,
        soft_tokens_per_image: None,
        position_ids: None,
    };
    (batch, f)
}

pub(crate) const CASES: [&str; 3] = ["two_rows_one_image_each", "two_images_and_padded_text_row", "text_only"];

#[test]
fn logits_and_loss_match_hf() {
    use lapidary::gemma3::Gemma3ForConditionalGeneration;
    let dev = Device::from_env_or_cpu().unwrap();
    for layout in ["model", "model-hub"] {
        for case in CASES {
            let (batch, f) = load_batch(case, &dev);
            let model =
                Gemma3ForConditionalGeneration::open(fixtures().join(layout), &dev, &OpenOptions::default()).unwrap();
            let out = model.forward(&batch, &ForwardOptions::default()).unwrap();
            let want = f.load("logits", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
            let err = rel_err(&out.logits.value().to_f32_vec().unwrap(), &want);
            assert_eq!(out.hidden_states.len(), 4);
            for (i, hs) in out.hidden_states.iter().enumerate() {
                let want_h = f.load(&format!("hidden_states.{i}"), &dev, DType::F32).unwrap().to_f32_vec().unwrap();
                let e = rel_err(&hs.value().to_f32_vec().unwrap(), &want_h);
                assert!(e < 1e-4, "{case} ({layout}): hidden state {i} differs from HF by {e:.2e}");
            }
            let loss = out.loss.unwrap().value().to_f32_vec().unwrap()[0];
            let want_loss = f.load("loss", &dev, DType::F32).unwrap().to_f32_vec().unwrap()[0];
            let loss_err = ((loss - want_loss) / want_loss).abs();
            if err >= 1e-4 {
                let got = out.logits.value().to_f32_vec().unwrap();
                let v = want.len() / (batch.batch * batch.seq);
                for pos in 0..batch.batch * batch.seq {
                    let d = (0..v).map(|j| (got[pos * v + j] - want[pos * v + j]).abs()).fold(0f32, f32::max);
                    if d > 1e-3 {
                        println!(
                            "  row {} pos {}: max |diff| {d:.3} mask {}",
                            pos / batch.seq,
                            pos % batch.seq,
                            batch.attention_mask[pos]
                        );
                    }
                }
            }
            println!(
                "{case} ({layout}): logits max rel err {err:.2e}, loss {loss:.6} vs HF {want_loss:.6} (rel {loss_err:.1e})"
            );
            assert!(err < 1e-4, "{case} ({layout}): logits differ from HF by {err:.2e}");
            assert!(loss_err < 1e-5, "{case} ({layout}): loss {loss} vs HF {want_loss}");
        }
    }
}

#[test]
fn bf16_weights_give_hf_loss_within_1e_2() {
    use lapidary::gemma3::Gemma3ForConditionalGeneration;
    let dev = Device::from_env_or_cpu().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap()).unwrap();
    for case in CASES {
        let (mut batch, _) = load_batch(case, &dev);
        if let Some(px) = &batch.pixel_values {
            batch.pixel_values = Some(
                lapidary::core::Tensor::from_f32(&dev, &px.to_f32_vec().unwrap(), px.shape(), DType::BF16).unwrap(),
            );
        }
        let open = OpenOptions { dtype: DType::BF16, ..OpenOptions::default() };
        let model = Gemma3ForConditionalGeneration::open(fixtures().join("model-bf16"), &dev, &open).unwrap();
        let loss =
            model.forward(&batch, &ForwardOptions::default()).unwrap().loss.unwrap().value().to_f32_vec().unwrap()[0]
                as f64;
        let want = manifest["cases"][case]["bf16_loss"].as_f64().unwrap();
        println!("{case} (bf16): loss {loss:.5} vs HF bf16 {want:.5}");
        assert!(((loss - want) / want).abs() < 1e-2, "{case}: bf16 loss {loss} vs HF {want}");
    }
}

#[test]
fn every_gradient_matches_hf() {
    use lapidary::autograd::BackwardOptions;
    use lapidary::gemma3::Gemma3ForConditionalGeneration;
    let dev = Device::from_env_or_cpu().unwrap();
    for case in CASES {
        let (batch, f) = load_batch(case, &dev);
        // The training path (`loss`: head and cross-entropy fused in chunks) too.
        for (checkpointing, fused) in [(false, false), (true, false), (true, true)] {
            let model =
                Gemma3ForConditionalGeneration::open(fixtures().join("model"), &dev, &OpenOptions::all(Trainable::Yes))
                    .unwrap();
            let tape = model.tape().clone();
            let pixels = batch.pixel_values.as_ref().map(|p| tape.param("pixel_values", p.clone(), Trainable::Yes));
            let loss = if fused {
                model.loss(&batch, &crate::forward_options(pixels.as_ref(), checkpointing)).unwrap()
            } else {
                model.forward(&batch, &crate::forward_options(pixels.as_ref(), checkpointing)).unwrap().loss.unwrap()
            };
            let want_loss = f.load("loss", &dev, DType::F32).unwrap().to_f32_vec().unwrap()[0];
            let got_loss = loss.value().to_f32_vec().unwrap()[0];
            assert!(((got_loss - want_loss) / want_loss).abs() < 1e-5, "{case}: loss {got_loss} vs HF {want_loss}");
            // A text-only batch never reaches the vision tower or the projector (nor does HF's).
            let mut opts = BackwardOptions::default();
            if pixels.is_none() {
                opts.allow_missing = SafetensorsFiles::open(fixtures().join("model"))
                    .unwrap()
                    .names()
                    .filter(|n| lapidary::gemma3::part_of(n).is_vision_side())
                    .map(str::to_string)
                    .collect();
            }
            let (grads, report) = tape.backward_with(&loss, &opts).unwrap();
            let mut worst = (0f64, String::new());
            let mut compared = 0;
            for (name, g) in grads.named() {
                let want_name = format!("grad.{name}");
                let want = f
                    .load(&want_name, &dev, DType::F32)
                    .unwrap_or_else(|e| panic!("{case}: {e}"))
                    .to_f32_vec()
                    .unwrap();
                // k_proj biases have an exactly-zero gradient in theory: compare with a floor.
                let got = g.to_f32_vec().unwrap();
                let scale = want.iter().fold(1e-3f64, |m, x| m.max(x.abs() as f64));
                let err = got.iter().zip(&want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max) / scale;
                if err > worst.0 {
                    worst = (err, name.to_string());
                }
                compared += 1;
            }
            // Image batches: all 80 parameters and the pixels; text-only: the 41 of the decoder.
            let expected = if pixels.is_some() { 81 } else { 41 };
            assert_eq!(
                report.rows.iter().filter(|r| r.has_grad).count(),
                expected,
                "{case}: trainable tensors with a gradient"
            );
            println!(
                "{case} (checkpointing {checkpointing}, fused head {fused}): {compared} gradients, worst rel err {:.2e} ({})",
                worst.0, worst.1
            );
            assert_eq!(compared, expected, "{case}: gradients compared");
            assert!(worst.0 < 1e-4, "{case}: gradient {} differs from HF by {:.2e}", worst.1, worst.0);
        }
    }
}

#[test]
fn eval_command_writes_hf_comparable_results() {
    let dev = Device::from_env_or_cpu().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (case, layout) in [("two_rows_one_image_each", "model-hub"), ("text_only", "model")] {
        let batch = fixtures().join("cases").join(format!("{case}.safetensors"));
        let out = dir.path().join(format!("{case}.out.safetensors"));
        lapidary::eval::run(&fixtures().join(layout), &batch, &out, None, &dev, false).unwrap();
        let got = SafetensorsFiles::open(&out).unwrap();
        let want = SafetensorsFiles::open(&batch).unwrap();
        assert_eq!(got.entry("logits").unwrap().shape, want.entry("logits").unwrap().shape);
        let l = |f: &SafetensorsFiles, n: &str| f.load(n, &dev, DType::F32).unwrap().to_f32_vec().unwrap();
        assert!(rel_err(&l(&got, "logits"), &l(&want, "logits")) < 1e-4, "{case}: logits");
        assert!(rel_err(&l(&got, "loss"), &l(&want, "loss")) < 1e-5, "{case}: loss");
        let grads: Vec<&str> = got.names().filter(|n| n.starts_with("grad.")).collect();
        assert_eq!(grads.len(), if case == "text_only" { 41 } else { 80 }, "{case}");
        for g in grads {
            // Stored under the checkpoint's own keys: the hub layout's vision names.
            let want_name = g.replace("vision_tower.vision_model.", "vision_tower.");
            assert!(rel_err_floor(&l(&got, g), &l(&want, &want_name), 1e-3) < 1e-4, "{case}: {g}");
            // In the parameter's checkpoint shape (the patch embedding as a conv kernel).
            let model = SafetensorsFiles::open(&fixtures().join(layout)).unwrap();
            let param =
                model.entry(g.strip_prefix("grad.").unwrap()).unwrap_or_else(|| panic!("{g}: no such parameter"));
            assert_eq!(got.entry(g).unwrap().shape, param.shape, "{case}: {g}");
            if layout == "model-hub" && g.contains("vision_tower") {
                assert!(g.starts_with("grad.vision_tower.vision_model."), "{g}");
            }
        }
        let out2 = dir.path().join("nograd.safetensors");
        lapidary::eval::run(&fixtures().join(layout), &batch, &out2, None, &dev, true).unwrap();
        assert_eq!(SafetensorsFiles::open(&out2).unwrap().names().count(), 2);
    }
    let e = lapidary::eval::run(
        &fixtures().join("model"),
        &fixtures().join("manifest.json"),
        &dir.path().join("x"),
        None,
        &dev,
        true,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("manifest.json: not a valid safetensors file"), "{e}");
}

#[test]
fn peft_adapter_gives_peft_logits_loss_and_adapter_gradients() {
    let dev = Device::from_env_or_cpu().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let batch = fixtures().join("cases/adapter_two_rows_one_image_each.safetensors");
    let out = dir.path().join("out.safetensors");
    lapidary::eval::run(&fixtures().join("model"), &batch, &out, Some(&fixtures().join("adapter")), &dev, false)
        .unwrap();
    let got = SafetensorsFiles::open(&out).unwrap();
    let want = SafetensorsFiles::open(&batch).unwrap();
    let l = |f: &SafetensorsFiles, n: &str| f.load(n, &dev, DType::F32).unwrap().to_f32_vec().unwrap();
    let e_logits = rel_err(&l(&got, "logits"), &l(&want, "logits"));
    let e_loss = rel_err(&l(&got, "loss"), &l(&want, "loss"));
    let grads: Vec<&str> = got.names().filter(|n| n.starts_with("grad.")).collect();
    assert_eq!(grads.len(), 66, "every adapter tensor, and only those");
    let mut worst = 0f64;
    for g in &grads {
        worst = worst.max(rel_err_floor(&l(&got, g), &l(&want, g), 1e-3));
    }
    println!(
        "adapter: logits rel err {e_logits:.2e}, loss rel err {e_loss:.2e}, worst adapter gradient rel err {worst:.2e}"
    );
    assert!(e_logits < 1e-4 && e_loss < 1e-5 && worst < 1e-4);
}

#[test]
fn bad_inputs_are_clear_errors() {
    use lapidary::gemma3::Gemma3ForConditionalGeneration;
    let dev = Device::from_env_or_cpu().unwrap();
    // One image for a batch whose rows hold two images' worth of image tokens.
    let (mut batch, _) = load_batch("two_rows_one_image_each", &dev);
    let px = batch.pixel_values.take().unwrap();
    let one = px.to_f32_vec().unwrap()[..px.numel() / 2].to_vec();
    batch.pixel_values = Some(lapidary::core::Tensor::from_f32(&dev, &one, &[1, 3, 32, 32], DType::F32).unwrap());
    let model = Gemma3ForConditionalGeneration::open(fixtures().join("model"), &dev, &OpenOptions::default()).unwrap();
    let e = model.forward(&batch, &ForwardOptions::default()).err().unwrap().to_string();
    assert!(e.contains("8 image tokens but 1 image(s) x 4 tokens per image"), "{e}");

    // A checkpoint missing a tensor, and one with a tensor the model does not know.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("model/config.json"), dir.path().join("config.json")).unwrap();
    let src = SafetensorsFiles::open(fixtures().join("model")).unwrap();
    let entries = |skip: &str, extra: bool| {
        let mut v: Vec<_> = src
            .names()
            .filter(|n| *n != skip)
            .map(|n| lapidary::nn::safetensors::entry_of(n, &src.load(n, &dev, DType::F32).unwrap()).unwrap())
            .collect();
        if extra {
            v.push(
                lapidary::nn::safetensors::entry_of(
                    "vision_tower.head.weight",
                    &src.load("vision_tower.post_layernorm.weight", &dev, DType::F32).unwrap(),
                )
                .unwrap(),
            );
        }
        v
    };
    let path = dir.path().join("model.safetensors");
    lapidary::nn::safetensors::save(&path, &entries("language_model.model.layers.1.self_attn.k_norm.weight", false))
        .unwrap();
    let e = Gemma3ForConditionalGeneration::open(dir.path(), &dev, &OpenOptions::default()).err().unwrap().to_string();
    assert!(
        e.contains("missing tensor language_model.model.layers.1.self_attn.k_norm.weight (expected shape [16])"),
        "{e}"
    );
    lapidary::nn::safetensors::save(&path, &entries("", true)).unwrap();
    let e = Gemma3ForConditionalGeneration::open(dir.path(), &dev, &OpenOptions::default()).err().unwrap().to_string();
    assert!(e.contains("1 unexpected tensor(s)") && e.contains("vision_tower.head.weight"), "{e}");
}

/// An adapter made here (random A and B on the vision attention and the language MLP), saved in
/// PEFT's format and loaded back, gives the same logits; the files are what PEFT reads.
#[test]
fn adapters_made_here_round_trip_through_peft_files() {
    use lapidary::core::rng::SplitMix64;
    use lapidary::gemma3::Gemma3ForConditionalGeneration;
    use lapidary::lora::{
        LoraConfig, LoraInit, LoraTargets, PeftAdapterConfig, adapter_tensors, attach_lora_to, save_peft_adapter,
    };
    let dev = Device::from_env_or_cpu().unwrap();
    let (batch, _) = load_batch("two_rows_one_image_each", &dev);
    let cfg = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        use_rslora: false,
        targets: LoraTargets::Layers { vision: true, language: true, attention: true, mlp: true },
        init: LoraInit::Random(0.3),
        dropout: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut model =
        Gemma3ForConditionalGeneration::open(fixtures().join("model"), &dev, &OpenOptions::default()).unwrap();
    let tape = model.tape().clone();
    let base_logits = model.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap();
    let paths = attach_lora_to(&cfg, &mut model, &dev, &mut SplitMix64::new(5)).unwrap();
    assert_eq!(paths.len(), 33);
    let logits = model.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap();
    assert!(rel_err(&logits, &base_logits) > 1e-3, "the adapter changes the logits");
    let linears: Vec<&lapidary::nn::Linear> = model.linears_mut().into_iter().map(|l| &*l).collect();
    let tensors = adapter_tensors(&linears, &tape).unwrap();
    assert_eq!(tensors.len(), 66);
    let modules: Vec<String> = paths.iter().map(|p| p.rsplit('.').next().unwrap().to_string()).collect();
    save_peft_adapter(
        dir.path(),
        &PeftAdapterConfig { r: 2, lora_alpha: 4.0, use_rslora: false, lora_dropout: 0.0, modules_to_save: vec![] },
        &modules,
        &tensors,
    )
    .unwrap();

    let out = dir.path().join("out.safetensors");
    let batch_file = fixtures().join("cases/two_rows_one_image_each.safetensors");
    lapidary::eval::run(&fixtures().join("model"), &batch_file, &out, Some(dir.path()), &dev, true).unwrap();
    let reloaded =
        SafetensorsFiles::open(&out).unwrap().load("logits", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
    assert_eq!(reloaded, logits, "saved and reloaded adapter gives the same logits");
    // For tools/reference/check_adapter.py: keep the adapter and our logits.
    if let Some(keep) = std::env::var_os("LAPIDARY_KEEP_ADAPTER") {
        let keep = std::path::PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        for f in ["adapter_model.safetensors", "adapter_config.json", "out.safetensors"] {
            std::fs::copy(dir.path().join(f), keep.join(f)).unwrap();
        }
    }
}

/// One AdamW step on the PEFT adapter from its gradients gives torch's AdamW result.
#[test]
fn adamw_step_on_the_adapter_matches_torch() {
    use lapidary::gemma3::Gemma3ForConditionalGeneration;
    use lapidary::kernels::optim::{AdamWStep, adamw_step};
    use lapidary::lora::load_peft_adapter;
    let dev = Device::from_env_or_cpu().unwrap();
    let (batch, f) = load_batch("adapter_two_rows_one_image_each", &dev);
    let mut model =
        Gemma3ForConditionalGeneration::open(fixtures().join("model"), &dev, &OpenOptions::default()).unwrap();
    let tape = model.tape().clone();
    let n = load_peft_adapter(
        &fixtures().join("adapter"),
        model.linears_mut(),
        Gemma3ForConditionalGeneration::peft_path,
        &tape,
        &dev,
        Trainable::Yes,
    )
    .unwrap();
    assert_eq!(n, 33);
    let loss = model.forward(&batch, &ForwardOptions::default()).unwrap().loss.unwrap();
    let (grads, _) = tape.backward(&loss).unwrap();
    let linears: Vec<&lapidary::nn::Linear> = model.linears_mut().into_iter().map(|l| &*l).collect();
    let mut before_step = std::collections::HashMap::new();
    for l in &linears {
        for v in l.adapter().unwrap().params() {
            before_step.insert(tape.leaf_name(v.id()).unwrap(), v.value().to_f32_vec().unwrap());
        }
    }
    let (mut worst, mut excluded, mut total) = (0f64, 0usize, 0usize);
    for l in linears {
        for v in l.adapter().unwrap().params() {
            let name = tape.leaf_name(v.id()).unwrap();
            let m = lapidary::core::Tensor::zeros(&dev, v.shape(), DType::F32).unwrap();
            let s = lapidary::core::Tensor::zeros(&dev, v.shape(), DType::F32).unwrap();
            let h = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 1 };
            adamw_step(v.value(), grads.get(&v).unwrap(), &m, &s, h).unwrap();
            let want = f.load(&format!("after_adamw_step.{name}"), &dev, DType::F32).unwrap().to_f32_vec().unwrap();
            // AdamW's first step is lr·g/(|g|+eps): its direction is only as determined as the
            // gradient. Elements whose gradient is below the gradient parity tolerance (1e-4 of
            // the tensor's largest) are noise-level in both implementations; they are compared
            // against the same formula on this gradient instead of against torch's.
            let g = grads.get(&v).unwrap().to_f32_vec().unwrap();
            let before = before_step.remove(&name).expect("kept before the step");
            let gmax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
            let got = v.value().to_f32_vec().unwrap();
            let own: Vec<f32> = before
                .iter()
                .zip(&g)
                .map(|(&w, &gi)| {
                    let (m, s) = (0.1 * gi, 0.001 * gi * gi);
                    let (mh, sh) = (m / 0.1, s / 0.001);
                    w * (1.0 - 1e-2 * 0.01) - 1e-2 * mh / (sh.sqrt() + 1e-8)
                })
                .collect();
            let reference: Vec<f32> =
                (0..g.len()).map(|i| if g[i].abs() > 1e-4 * gmax { want[i] } else { own[i] }).collect();
            excluded += g.iter().filter(|x| x.abs() <= 1e-4 * gmax).count();
            total += g.len();
            worst = worst.max(rel_err(&got, &reference));
        }
    }
    println!(
        "adapter after one AdamW step: worst rel err {worst:.2e} ({excluded} of {total} values with a noise-level \
         gradient checked against the formula instead of torch)"
    );
    assert!(
        excluded * 100 < total,
        "{excluded} of {total} gradients are noise-level: the fixture no longer tests much"
    );
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn peft_adapter_with_the_projector_in_modules_to_save_gives_pefts_logits() {
    let dev = Device::from_env_or_cpu().unwrap();
    let (batch, _) = load_batch("two_rows_one_image_each", &dev);
    let lapidary::cli::FrozenModel { model, adapted } =
        lapidary::cli::open_frozen(&fixtures().join("model"), Some(&fixtures().join("adapter-projector")), &dev)
            .unwrap();
    assert_eq!(adapted, 3 + 2 + 2, "q_proj in 3 decoder and 2 vision layers, fc1 in 2 vision layers");
    let out = model.forward(&batch, &ForwardOptions::default()).unwrap();
    let f = SafetensorsFiles::open(fixtures().join("cases/adapter_projector.safetensors")).unwrap();
    let want = f.load("logits", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
    let got = out.logits.value().to_f32_vec().unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "logits differ from PEFT's by {worst} (scale {scale})");
    let want_loss = f.load("loss", &dev, DType::F32).unwrap().to_f32_vec().unwrap()[0];
    let loss = out.loss.unwrap().value().to_f32_vec().unwrap()[0];
    assert!((loss - want_loss).abs() <= 1e-4 * want_loss.abs(), "loss {loss} vs PEFT's {want_loss}");
}
