//! check-grad's Gemma 4 rows, on both tiny Gemma 4 models (tests/fixtures/tiny-gemma4-dense:
//! the 31B's layout; tiny-gemma4-e: per-layer embeddings, KV sharing): full fine-tuning, and
//! LoRA on {vision only, language only, both} (attention and MLP, the vision tower's clipped
//! linears through their inner linear), each with checkpointing off and on, on a batch with two
//! images of different aspect ratios beside a padded text row and on a text-only batch. Every
//! trainable tensor must get a finite non-zero gradient (on the text-only batch, all but the
//! vision side's, which no path reaches and which are counted, not hidden), no frozen tensor may
//! get one, and checkpointing must not change a bit. Opened through the registry, as the
//! commands open models.

use crate::check_grad::{Row, max_rel_diff};
use lapidary::autograd::{BackwardOptions, Trainable};
use lapidary::core::rng::SplitMix64;
use lapidary::core::{Device, Result};
use lapidary::lora::{LoraConfig, LoraInit, LoraTargets, attach_lora_to};
use lapidary::model::{Batch, Model, OpenOptions};
use std::collections::BTreeMap;

/// What is trained.
#[derive(Clone, Copy)]
enum Setup {
    Full,
    Lora { vision: bool, language: bool },
}

/// (gradients by name, trainable, finite non-zero, frozen touched, trainable a text batch cannot
/// reach, names with an exactly-zero gradient)
type Run = (BTreeMap<String, Vec<f32>>, usize, usize, usize, usize, Vec<String>);

fn run(fixture: &str, batch: &Batch, setup: Setup, checkpointing: bool) -> Result<Run> {
    let dev = Device::from_env_or_cpu()?;
    let dir = crate::repo_path("tests/fixtures").join(fixture).join("model");
    let opts = match setup {
        Setup::Full => OpenOptions::all(Trainable::Yes),
        Setup::Lora { .. } => OpenOptions::default(),
    };
    let mut model: Box<dyn Model> = lapidary::registry::open(&dir, &dev, &opts)?;
    if let Setup::Lora { vision, language } = setup {
        let cfg = LoraConfig {
            r: 2,
            lora_alpha: 4.0,
            use_rslora: false,
            targets: LoraTargets::Layers { vision, language, attention: true, mlp: true },
            init: LoraInit::Random(0.3),
            dropout: None,
        };
        let adapted = attach_lora_to(&cfg, model.as_mut(), &dev, &mut SplitMix64::new(11))?;
        assert!(!adapted.is_empty(), "{fixture}: no linear adapted");
    }
    let tape = model.tape().clone();
    let pixels = batch.pixel_values.as_ref().map(|p| tape.input(p.clone()));
    let loss = model.forward(batch, &crate::forward_options(pixels.as_ref(), checkpointing))?.loss.expect("labels");
    let unreachable: Vec<String> =
        tape.leaf_names().into_iter().filter(|n| model.part_of(n).is_vision_side()).collect();
    let mut opts = BackwardOptions::default();
    if pixels.is_none() {
        opts.allow_missing = unreachable.clone();
    }
    let (grads, report) = tape.backward_with(&loss, &opts)?;
    let trainable_unreachable = report.rows.iter().filter(|r| unreachable.contains(&r.name)).count();
    let zero = report.rows.iter().filter(|r| r.has_grad && r.norm == 0.0).map(|r| r.name.clone()).collect();
    let named = grads.named().into_iter().map(|(n, g)| (n.to_string(), g.to_f32_vec().unwrap())).collect();
    Ok((named, report.rows.len(), report.nonzero(), report.frozen_touched.len(), trainable_unreachable, zero))
}

/// The rows (see the module docs).
pub(crate) fn gemma4_rows() -> Vec<Row> {
    let dev = Device::from_env_or_cpu().unwrap();
    let setups = [
        ("full", Setup::Full),
        ("lora vision=on language=off", Setup::Lora { vision: true, language: false }),
        ("lora vision=off language=on", Setup::Lora { vision: false, language: true }),
        ("lora vision=on language=on", Setup::Lora { vision: true, language: true }),
    ];
    let mut rows = Vec::new();
    for fixture in ["tiny-gemma4-dense", "tiny-gemma4-e"] {
        let cases = crate::repo_path("tests/fixtures").join(fixture).join("cases");
        for case in ["two_images_and_padded_text_row", "text_only"] {
            let batch = Batch::read(&cases.join(format!("{case}.safetensors")), &dev).unwrap();
            let text = batch.pixel_values.is_none();
            for (name, setup) in setups {
                let base = run(fixture, &batch, setup, false);
                for checkpointing in [false, true] {
                    let label = format!(
                        "{fixture} {name} ckpt={} batch={}",
                        if checkpointing { "on" } else { "off" },
                        if text { "text" } else { "images" }
                    );
                    match (&base, run(fixture, &batch, setup, checkpointing)) {
                        (Ok((g0, ..)), Ok((g, n, nz, fz, unreachable, zero))) => {
                            let expected = if text { n - unreachable } else { n };
                            let diff = max_rel_diff(g0, &g);
                            let ok = nz == expected && fz == 0 && diff == 0.0 && zero.is_empty();
                            let mut note = if text && unreachable > 0 {
                                format!("{diff:.1e} ({unreachable} vision-side tensors n/a)")
                            } else {
                                format!("{diff:.1e}")
                            };
                            if !zero.is_empty() {
                                note = format!("{note}; zero: {}", zero.join(", "));
                            }
                            rows.push(Row {
                                case: label,
                                trainable: n,
                                nonzero: nz,
                                frozen_touched: fz,
                                diff: note,
                                ok,
                            });
                        }
                        (base, this) => {
                            let e = this
                                .err()
                                .map(|e| e.to_string())
                                .or_else(|| base.as_ref().err().map(|e| e.to_string()));
                            rows.push(Row::failed(label, e.unwrap_or_default()));
                        }
                    }
                }
            }
        }
    }
    rows
}
