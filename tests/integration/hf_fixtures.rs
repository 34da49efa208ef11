//! The HF reference fixtures (made by tools/reference/make_fixtures.py with transformers 5.24)
//! load through `lapidary-nn`'s strict loader: both on-disk layouts resolve to the same tensors,
//! bf16 checkpoints convert, and every case carries a gradient for every parameter it touches.
//! The model parity tests build on these files.

use lapidary::core::{DType, Device};
use lapidary::nn::Weights;
use lapidary::nn::safetensors::SafetensorsFiles;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    crate::repo_path("tests/fixtures/tiny-gemma3")
}

#[test]
fn both_layouts_and_bf16_hold_the_same_weights() {
    let dev = Device::from_env_or_cpu().unwrap();
    let new = Weights::open(fixtures().join("model"), &dev, DType::F32).unwrap();
    let hub = Weights::open(fixtures().join("model-hub"), &dev, DType::F32)
        .unwrap()
        .with_alias("vision_tower.", "vision_tower.vision_model.");
    let bf16 = Weights::open(fixtures().join("model-bf16"), &dev, DType::F32).unwrap();
    let names: Vec<String> = new.source().names();
    let bf16_files = SafetensorsFiles::open(fixtures().join("model-bf16")).unwrap();
    assert_eq!(names.len(), 80);
    assert!(names.iter().any(|n| n.starts_with("vision_tower.encoder.")));
    for name in &names {
        let shape = new.source().shape(name).unwrap();
        let a = new.tensor(name, &shape).unwrap().to_f32_vec().unwrap();
        let b = hub.tensor(name, &shape).unwrap().to_f32_vec().unwrap();
        assert_eq!(a, b, "{name}");
        assert_eq!(bf16_files.entry(name).unwrap().dtype, Some(DType::BF16), "{name}");
        let c = bf16.tensor(name, &shape).unwrap().to_f32_vec().unwrap();
        assert_eq!(c, a.iter().map(|&x| DType::BF16.round(x)).collect::<Vec<_>>(), "{name}");
    }
    new.finish(&[]).unwrap();
    hub.finish(&[]).unwrap();
}

#[test]
fn every_case_has_a_gradient_for_every_parameter_it_uses() {
    let model = SafetensorsFiles::open(fixtures().join("model")).unwrap();
    for (case, images) in
        [("two_rows_one_image_each", true), ("two_images_and_padded_text_row", true), ("text_only", false)]
    {
        let f = SafetensorsFiles::open(fixtures().join("cases").join(format!("{case}.safetensors"))).unwrap();
        for name in model.names() {
            let grad = f.entry(&format!("grad.{name}"));
            if lapidary::gemma3::part_of(name).is_vision_side() {
                // A text-only batch never runs the vision tower: HF leaves those gradients unset.
                assert_eq!(grad.is_some(), images, "{case}: grad.{name}");
            } else {
                assert_eq!(grad.expect(name).shape, model.entry(name).unwrap().shape, "{case}: grad.{name}");
            }
        }
        for key in ["input_ids", "attention_mask", "token_type_ids", "labels", "logits", "loss"] {
            assert!(f.entry(key).is_some(), "{case}: {key}");
        }
        assert_eq!(f.entry("pixel_values").is_some(), images, "{case}");
        let (labels, shape) = f.load_i64("labels").unwrap();
        assert_eq!(shape, f.entry("input_ids").unwrap().shape);
        assert!(
            labels.contains(&-100) && labels.iter().any(|&l| l >= 0),
            "{case}: labels mix counted and ignored tokens"
        );
    }
}
