//! Every parameter name a layer reports (`Layer::params`: the names gradient checkpointing rebinds
//! by) is the name its weight is loaded under and its gradient is saved under, for every layer of
//! the bundled Gemma 3 checkpoints in both on-disk layouts, with LoRA on every linear; and the
//! check fails on a mistyped name.

use lapidary::autograd::Trainable;
use lapidary::core::Device;
use lapidary::core::rng::SplitMix64;
use lapidary::lora::{LoraConfig, LoraInit, LoraTargets, attach_lora_to};
use lapidary::model::{LayerParams, Model, OpenOptions};
use lapidary::nn::safetensors::SafetensorsFiles;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    crate::repo_path("tests/fixtures/tiny-gemma3")
}

/// Where what `layers` report disagrees with the model's own names: a base weight must be on the
/// tape as `<layer path>.<reported name>` and stored in `checkpoint` under the model's stored key
/// for it; an adapter tensor must be on the tape under its linear's PEFT path and the adapter's
/// own name.
fn name_mismatches(model: &dyn Model, layers: &[LayerParams], checkpoint: &SafetensorsFiles) -> Vec<String> {
    let naming = model.naming();
    let mut bad = Vec::new();
    for layer in layers {
        for (name, var) in &layer.params {
            let leaf = model.tape().leaf_name(var.id()).unwrap_or_else(|| "(unnamed)".into());
            let expected = match name.split_once(".lora_") {
                Some((module, adapter)) => {
                    format!("{}.lora_{adapter}", (naming.peft_path)(&format!("{}.{module}", layer.path)))
                }
                None => format!("{}.{name}", layer.path),
            };
            if leaf != expected {
                bad.push(format!("{}: reports {name}, which is {leaf} on the tape (expected {expected})", layer.path));
            } else if !name.contains(".lora_") && checkpoint.entry(&model.stored_name(&leaf)).is_none() {
                bad.push(format!(
                    "{}: {leaf} is stored as {}, not in the checkpoint",
                    layer.path,
                    model.stored_name(&leaf)
                ));
            }
        }
    }
    bad
}

fn open_with_lora(dir: &Path, dev: &Device) -> Box<dyn Model> {
    let mut model = lapidary::registry::open(dir, dev, &OpenOptions::all(Trainable::Yes)).unwrap();
    let cfg = LoraConfig {
        r: 2,
        lora_alpha: 2.0,
        use_rslora: false,
        targets: LoraTargets::AllLinear,
        init: LoraInit::Random(0.1),
        dropout: None,
    };
    attach_lora_to(&cfg, model.as_mut(), dev, &mut SplitMix64::new(5)).unwrap();
    model
}

#[test]
fn layers_report_the_names_their_weights_load_and_save_under() {
    let dev = Device::from_env_or_cpu().unwrap();
    for layout in ["model", "model-hub"] {
        let dir = fixtures().join(layout);
        let model = open_with_lora(&dir, &dev);
        let checkpoint = SafetensorsFiles::open(&dir).unwrap();
        let layers = model.layer_params();
        let reported: usize = layers.iter().map(|l| l.params.len()).sum();
        let adapters = layers.iter().flat_map(|l| &l.params).filter(|(n, _)| n.contains(".lora_")).count();
        assert!(layers.len() >= 4 && adapters > 0 && reported > adapters, "{layout}: {reported} parameters");
        let bad = name_mismatches(model.as_ref(), &layers, &checkpoint);
        assert!(bad.is_empty(), "{layout}:\n{}", bad.join("\n"));

        // The gradient of every reported base weight is saved under its checkpoint key.
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("grads.safetensors");
        let batch = fixtures().join("cases/two_rows_one_image_each.safetensors");
        lapidary::eval::run(&dir, &batch, &out, None, &dev, false).unwrap();
        let grads = SafetensorsFiles::open(&out).unwrap();
        for layer in &layers {
            for (name, var) in layer.params.iter().filter(|(n, _)| !n.contains(".lora_")) {
                let leaf = model.tape().leaf_name(var.id()).unwrap();
                let key = format!("grad.{}", model.stored_name(&leaf));
                assert!(grads.entry(&key).is_some(), "{layout}: {}.{name}: no {key} in the eval output", layer.path);
            }
        }
        println!(
            "{layout}: {} layers, {reported} parameters ({adapters} adapter tensors) named consistently",
            layers.len()
        );
    }
}

#[test]
fn a_mistyped_name_fails_the_check() {
    let dev = Device::from_env_or_cpu().unwrap();
    let dir = fixtures().join("model");
    let model = open_with_lora(&dir, &dev);
    let checkpoint = SafetensorsFiles::open(&dir).unwrap();
    let layers = model.layer_params();
    for typo in [("q_proj.weight", "q_prj.weight"), ("q_proj.lora_A", "k_proj.lora_A"), ("mlp.", "ffn.")] {
        let mut wrong = layers.clone();
        let layer = wrong.iter_mut().find(|l| l.params.iter().any(|(n, _)| n.contains(typo.0))).unwrap();
        let (name, _) = layer.params.iter_mut().find(|(n, _)| n.contains(typo.0)).unwrap();
        *name = name.replacen(typo.0, typo.1, 1);
        let bad = name_mismatches(model.as_ref(), &wrong, &checkpoint);
        assert_eq!(bad.len(), 1, "{typo:?}: {bad:?}");
        assert!(bad[0].contains(typo.1), "{typo:?}: {bad:?}");
    }
}
