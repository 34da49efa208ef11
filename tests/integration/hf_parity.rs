//! Parity with HF transformers on the committed tiny Gemma 3 fixtures: the SigLIP tower and the
//! projector reproduce HF's image features (`image_hidden_states`) in f32, from both checkpoint
//! layouts, with and without checkpointing.

use lapidary::autograd::{Tape, Trainable};
use lapidary::core::{DType, Device};
use lapidary::gemma3::MultiModalProjector;
use lapidary::nn::Weights;
use lapidary::nn::safetensors::SafetensorsFiles;
use lapidary::siglip::{SiglipVisionConfig, SiglipVisionModel};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gemma3")
}

/// Worst |got - want| relative to the largest |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
    got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn image_features_match_hf() {
    let dev = Device::cpu().unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("model/config.json")).unwrap()).unwrap();
    let vcfg = SiglipVisionConfig::from_file(fixtures().join("model/config.json")).unwrap();
    let text_hidden = config["text_config"]["hidden_size"].as_u64().unwrap() as usize;
    let mm = config["mm_tokens_per_image"].as_u64().unwrap() as usize;
    for (case, layout) in [("two_rows_one_image_each", "model"), ("two_images_and_padded_text_row", "model-hub")] {
        let f = SafetensorsFiles::open(fixtures().join("cases").join(format!("{case}.safetensors"))).unwrap();
        let want = f.load("image_features", &dev, DType::F32).unwrap().to_f32_vec().unwrap();
        for checkpointing in [false, true] {
            let w = Weights::open(fixtures().join(layout), &dev, DType::F32).unwrap().with_alias("vision_tower.", "vision_tower.vision_model.");
            let tape = Tape::new();
            let tower = SiglipVisionModel::load(&vcfg, &w, "vision_tower.", &tape, Trainable::No).unwrap();
            let proj = MultiModalProjector::load(
                &w,
                "multi_modal_projector.",
                vcfg.hidden_size,
                text_hidden,
                vcfg.grid(),
                mm,
                vcfg.layer_norm_eps,
                &tape,
                Trainable::No,
            )
            .unwrap();
            let pixels = tape.input(f.load("pixel_values", &dev, DType::F32).unwrap());
            let feats = proj.forward(&tower.forward(&pixels, checkpointing).unwrap()).unwrap();
            assert_eq!(feats.shape(), f.entry("image_features").unwrap().shape.as_slice());
            let err = rel_err(&feats.value().to_f32_vec().unwrap(), &want);
            println!("{case} ({layout}, checkpointing {checkpointing}): image features max rel err {err:.2e}");
            assert!(err < 1e-4, "{case} ({layout}): image features differ from HF by {err:.2e} (relative)");
            let unused = w.unused();
            assert!(unused.iter().all(|n| n.starts_with("language_model.")), "vision weights left unused: {unused:?}");
        }
    }
}
