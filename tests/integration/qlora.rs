//! Packed frozen bases (bf16, NF4, NF4 with double-quantized scales) on the tiny Gemma 3 VLM:
//! memory of the base linears, logits error against the f32 base (NF4 vs bf16), and LoRA
//! gradients through a packed base — finite, non-zero, checkpointing bit-identical.

use lapidary::core::Device;
use lapidary::core::rng::SplitMix64;
use lapidary::gemma3::Gemma3ForConditionalGeneration;
use lapidary::gemma3::{ForwardOptions, OpenOptions};
use lapidary::kernels::quant::PackFormat;
use lapidary::lora::{LoraConfig, LoraInit, LoraTargets, attach_lora_to};
use lapidary::model::{AdapterHost, Model};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    crate::repo_path("tests/fixtures/tiny-gemma3")
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// Opens the model, packs every frozen linear in `format`; returns it with (f32 bytes, packed
/// bytes, relative Frobenius error of all packed weights).
fn open_packed(format: Option<PackFormat>) -> (Gemma3ForConditionalGeneration, usize, usize, f64) {
    let dev = Device::from_env_or_cpu().unwrap();
    let mut m = Gemma3ForConditionalGeneration::open(fixtures().join("model"), &dev, &OpenOptions::default()).unwrap();
    let (mut dense, mut packed, mut err2, mut norm2) = (0, 0, 0f64, 0f64);
    for l in m.linears_mut() {
        let (o, i) = l.dims();
        dense += o * i * 4;
        if let Some(f) = format {
            let before = l.weight().unwrap().value().to_f32_vec().unwrap();
            l.pack_base(f).unwrap();
            packed += l.packed_base().unwrap().size_bytes();
            let after = l.weight_f32().unwrap().to_f32_vec().unwrap();
            for (a, b) in before.iter().zip(&after) {
                err2 += ((a - b) as f64).powi(2);
                norm2 += (*a as f64).powi(2);
            }
        }
    }
    (m, dense, packed, if norm2 > 0.0 { (err2 / norm2).sqrt() } else { 0.0 })
}

#[test]
fn packed_bases_memory_and_logits_error() {
    let dev = Device::from_env_or_cpu().unwrap();
    let case = fixtures().join("cases/two_rows_one_image_each.safetensors");
    let batch = lapidary::gemma3::Batch::read(&case, &dev).unwrap();
    let (f32_model, dense, _, _) = open_packed(None);
    let want = f32_model.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap();
    let mut errs = Vec::new();
    for format in [PackFormat::Bf16, PackFormat::Nf4, PackFormat::Nf4DoubleQuant] {
        let (m, _, packed, werr) = open_packed(Some(format));
        // The released f32 weights are no longer tape leaves (the norms still are).
        let leaves = m.tape().leaf_names();
        assert!(leaves.iter().any(|n| n.ends_with("input_layernorm.weight")), "{leaves:?}");
        assert!(leaves.iter().all(|n| !n.ends_with("q_proj.weight")), "{leaves:?}");
        let got = m.forward(&batch, &ForwardOptions::default()).unwrap().logits.value().to_f32_vec().unwrap();
        let e = rel_err(&got, &want);
        println!(
            "{format:?}: base linears {packed} bytes ({:.1}% of f32's {dense}); weights rel. error {werr:.2e}; \
             logits max error {e:.2e} of max |logit|",
            100.0 * packed as f64 / dense as f64
        );
        errs.push((format, e, packed as f64 / dense as f64, werr));
    }
    assert!(errs[0].1 < 1e-2 && (errs[0].2 - 0.5).abs() < 1e-9, "{errs:?}");
    // NF4: 4 bits + one f32 per 64 values = 14.1% of f32; double quant: ~12.9%.
    assert!(errs[1].2 < 0.142 && errs[2].2 < 0.131, "{errs:?}");
    // 4-bit codes: about 10% weight error on Gaussian weights (bf16: 0.2%); on this 3-layer
    // random model the logits move by up to ~25% of the largest logit.
    assert!(errs[0].3 < 3e-3 && errs[1].3 < 0.12 && errs[2].3 < 0.12, "{errs:?}");
    assert!(errs[1].1 > errs[0].1 && errs[1].1 < 0.35 && errs[2].1 < 0.35, "{errs:?}");
}

#[test]
fn lora_gradients_flow_through_a_packed_base() {
    let dev = Device::from_env_or_cpu().unwrap();
    let case = fixtures().join("cases/two_rows_one_image_each.safetensors");
    let batch = lapidary::gemma3::Batch::read(&case, &dev).unwrap();
    let mut results = Vec::new();
    for ckpt in [false, true] {
        let (mut m, _, _, _) = open_packed(Some(PackFormat::Nf4));
        let tape = m.tape().clone();
        let cfg = LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            use_rslora: false,
            targets: LoraTargets::AllLinear,
            init: LoraInit::Random(0.1),
            dropout: None,
        };
        let n = attach_lora_to(&cfg, &mut m, &dev, &mut SplitMix64::new(3)).unwrap().len();
        let loss = m.forward(&batch, &crate::forward_options(None, ckpt)).unwrap().loss.unwrap();
        let (grads, report) = tape.backward(&loss).unwrap();
        assert_eq!(report.nonzero(), 2 * n, "every adapter tensor gets a non-zero gradient");
        assert!(report.frozen_touched.is_empty());
        let mut named: Vec<(String, Vec<f32>)> =
            grads.named().into_iter().map(|(k, g)| (k.to_string(), g.to_f32_vec().unwrap())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        results.push(named);
    }
    assert_eq!(results[0], results[1], "checkpointed gradients must equal the plain ones");
}
