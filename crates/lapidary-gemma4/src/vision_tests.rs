//! The vision tower and embedder against transformers 5.24: the image features (soft tokens in
//! the text width) of both image cases of both fixtures, and the pooling plan on its own.

use crate::vision::Pooling;
use crate::{Gemma4Config, Gemma4VisionModel};
use lapidary_autograd::{Tape, Trainable};
use lapidary_core::{DType, Device, Tensor};
use lapidary_nn::safetensors::SafetensorsFiles;
use lapidary_nn::{Checkpointing, Scope, Weights};
use lapidary_testkit::max_rel_error;

fn fixture(kind: &str) -> String {
    format!("{}/../../tests/fixtures/tiny-gemma4-{kind}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn image_features_match_transformers() {
    let dev = Device::from_env_or_cpu().unwrap();
    for kind in ["dense", "e"] {
        let cfg = Gemma4Config::from_file(format!("{}/model/config.json", fixture(kind))).unwrap();
        let w = Weights::open(format!("{}/model", fixture(kind)), &dev, DType::F32).unwrap();
        let tape = Tape::new();
        let root = Scope::new(&w, &tape, Trainable::Yes).at("model");
        let vision = Gemma4VisionModel::load(
            cfg.vision.as_ref().unwrap(),
            &root.at("vision_tower"),
            &root.at("embed_vision"),
            cfg.text.hidden_size,
        )
        .unwrap();
        for case in ["two_images_and_padded_text_row", "one_image_each"] {
            let f = SafetensorsFiles::open(format!("{}/cases/{case}.safetensors", fixture(kind))).unwrap();
            let (pixels, shape) = f.load_f32("pixel_values").unwrap();
            let (positions, _) = f.load_i64("image_position_ids").unwrap();
            let (soft, _) = f.load_i64("num_soft_tokens_per_image").unwrap();
            let (want, _) = f.load_f32("image_features").unwrap();
            for checkpointing in [Checkpointing::Off, Checkpointing::EachLayer] {
                let px = tape.input(Tensor::from_f32(&dev, &pixels, &shape, DType::F32).unwrap());
                let (features, per_image) = vision.forward(&px, &positions, checkpointing).unwrap();
                let per_image: Vec<i64> = per_image.iter().map(|&n| n as i64).collect();
                assert_eq!(per_image, soft, "{kind} {case}: soft tokens per image");
                let got = features.value().to_f32_vec().unwrap();
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let e = max_rel_error(&got, &want, 0.1 * scale);
                assert!(e < 1e-4, "{kind} {case}: image features relative error {e:e}");
                eprintln!("{kind} {case} ({checkpointing:?}): image features within {e:.1e}");
            }
        }
    }
}

#[test]
fn pooling_groups_patches_by_position_and_drops_empty_slots() {
    // One image of 4x2 patches pooled 2x2 (two slots), then padding: 8 real + 8 padding rows.
    let mut pos: Vec<i64> = Vec::new();
    for y in 0..2 {
        for x in 0..4 {
            pos.extend([x, y]);
        }
    }
    pos.extend([-1; 16]);
    let p = Pooling::from_positions(&pos, 1, 16, 2).unwrap();
    assert_eq!(p.per_image, [2]);
    // Slot 0 holds x 0-1, slot 1 x 2-3; the padding patches fall into slot 0 and add nothing.
    assert_eq!(p.slots, [vec![0, 1, 4, 5], vec![2, 3, 6, 7]]);
    let mut twice = pos.clone();
    twice[2..4].copy_from_slice(&[0, 0]); // patch 1 repeats patch 0's position
    twice[16..18].copy_from_slice(&[1, 1]); // and a padding patch turns real at (1, 1)
    let e = Pooling::from_positions(&twice, 1, 16, 2).unwrap_err().to_string();
    assert!(e.contains("positions repeat"), "{e}");
    let e = Pooling::from_positions(&pos, 1, 15, 2).unwrap_err().to_string();
    assert!(e.contains("image_position_ids") && e.contains("multiple of 4"), "{e}");
    let mut far = pos.clone();
    far[1] = 9; // patch 0 at y = 9: past the two soft tokens
    let e = Pooling::from_positions(&far, 1, 16, 2).unwrap_err().to_string();
    assert!(e.contains("patch 0 of image 0") && e.contains("slot"), "{e}");
}
