//! Creating LoRA adapters as users configure them: which linears (the towers, attention and/or
//! MLP modules, `all-linear`, or explicit module names), the rank, alpha, rsLoRA, and the
//! initialization (PEFT's default kaiming-uniform A with zero B, gaussian A with zero B, or both
//! random for tests that need non-zero gradients everywhere). Not loading or saving (peft.rs).

use crate::LoraAdapter;
use lapidary_autograd::{Tape, Trainable};
use lapidary_core::rng::SplitMix64;
use lapidary_core::{DType, Device, Error, Result, Tensor};
use lapidary_nn::{AdapterHost, Linear, Part};
use std::rc::Rc;

/// Attention projections of both towers (SigLIP and Gemma names).
pub const ATTENTION_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "out_proj"];
/// MLP projections of both towers.
pub const MLP_MODULES: &[&str] = &["fc1", "fc2", "gate_proj", "up_proj", "down_proj"];

/// How adapter weights start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoraInit {
    /// PEFT's default: A kaiming-uniform (U(±1/√in)), B zero — the model starts unchanged.
    Default,
    /// A ~ N(0, 1/r), B zero (PEFT's `init_lora_weights="gaussian"`).
    Gaussian,
    /// A and B both U(±scale): for gradient checks, where a zero B would zero every A gradient.
    Random(f32),
}

/// Which linears get an adapter.
#[derive(Clone, Debug, PartialEq)]
pub enum LoraTargets {
    /// By tower and module kind (Unsloth's `finetune_*` switches).
    Layers {
        /// SigLIP layers.
        vision: bool,
        /// Gemma layers.
        language: bool,
        /// q/k/v/o (out) projections.
        attention: bool,
        /// MLP projections.
        mlp: bool,
    },
    /// Every linear of both towers (`all-linear`; the head is tied, so never adapted).
    AllLinear,
    /// HF module names (the last path component, e.g. `q_proj`, `fc1`).
    Modules(Vec<String>),
}

/// A LoRA configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f32,
    /// `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Which linears.
    pub targets: LoraTargets,
    /// Initialization.
    pub init: LoraInit,
    /// Dropout on the adapters' input (`None`: no dropout).
    pub dropout: Option<Rc<crate::LoraDropout>>,
}

impl LoraTargets {
    /// Whether the linear at checkpoint path `path`, in part `part` of the model, is targeted.
    /// The inner linear of a wrapper (Gemma 4's clipped linears: `q_proj.linear`) counts as
    /// its wrapper's module.
    pub fn matches(&self, path: &str, part: Part) -> bool {
        let module = module_name(path);
        match self {
            LoraTargets::AllLinear => true,
            LoraTargets::Modules(m) => m.iter().any(|x| x == module),
            LoraTargets::Layers { vision, language, attention, mlp } => {
                let tower = match part {
                    Part::Vision => *vision,
                    Part::Language => *language,
                    // The projector holds no linear of either tower's layers.
                    Part::Projector => false,
                };
                let kind =
                    (*attention && ATTENTION_MODULES.contains(&module)) || (*mlp && MLP_MODULES.contains(&module));
                tower && kind
            }
        }
    }
}

/// The module name of the linear at `path`: its last component, or for the inner linear of a
/// wrapper (`...q_proj.linear`, where PEFT can adapt only the inner `nn.Linear`) the wrapper's.
pub fn module_name(path: &str) -> &str {
    let mut parts = path.rsplit('.');
    let last = parts.next().unwrap_or(path);
    match (last, parts.next()) {
        ("linear", Some(wrapper)) => wrapper,
        _ => last,
    }
}

/// `target_modules` for the `adapter_config.json` of adapters at checkpoint `paths`: their
/// module names, or where a wrapper's inner linear is among them (which PEFT must target by its
/// full name, not by the wrapper's: it cannot adapt the wrapper) every module's path as PEFT
/// names it (`peft_path` without `base_model.model.`).
pub fn peft_target_modules(paths: &[String], peft_path: impl Fn(&str) -> String) -> Vec<String> {
    let wrapped = paths.iter().any(|p| p.ends_with(".linear"));
    let mut modules: Vec<String> = paths
        .iter()
        .map(|p| {
            if wrapped {
                let full = peft_path(p);
                full.strip_prefix("base_model.model.").map_or(full.clone(), str::to_string)
            } else {
                p.rsplit('.').next().unwrap_or(p).to_string()
            }
        })
        .collect();
    modules.sort();
    modules.dedup();
    modules
}

/// Attaches a new adapter to every targeted linear (`part_of` says which part of the model a
/// linear's path lies in), registering `lora_A`/`lora_B` on `tape` as trainable under PEFT's keys
/// (`peft_path(path)` + `.lora_A.weight`). Returns the adapted paths; an error when nothing
/// matched.
pub fn attach_lora(
    cfg: &LoraConfig,
    linears: Vec<&mut Linear>,
    part_of: impl Fn(&str) -> Part,
    peft_path: impl Fn(&str) -> String,
    tape: &Tape,
    device: &Device,
    rng: &mut SplitMix64,
) -> Result<Vec<String>> {
    if cfg.r == 0 {
        return Err(Error::invalid("LoRA: r must be at least 1"));
    }
    let mut adapted = Vec::new();
    for linear in linears {
        if !cfg.targets.matches(linear.path(), part_of(linear.path())) {
            continue;
        }
        let (out, inp) = linear.dims();
        let (a, b) = init_weights(cfg, out, inp, rng);
        let base = peft_path(linear.path());
        let a = tape.param(
            format!("{base}.lora_A.weight"),
            Tensor::from_f32(device, &a, &[cfg.r, inp], DType::F32)?,
            Trainable::Yes,
        );
        let b = tape.param(
            format!("{base}.lora_B.weight"),
            Tensor::from_f32(device, &b, &[out, cfg.r], DType::F32)?,
            Trainable::Yes,
        );
        let mut adapter = LoraAdapter::new(a, b, cfg.lora_alpha, cfg.use_rslora)?;
        if let Some(d) = &cfg.dropout {
            adapter = adapter.with_dropout(d.clone(), linear.path());
        }
        linear.set_adapter(Rc::new(adapter));
        adapted.push(linear.path().to_string());
    }
    if adapted.is_empty() {
        return Err(Error::invalid(format!("LoRA: no linear matches the targets {:?}", cfg.targets)));
    }
    Ok(adapted)
}

/// [`attach_lora`] on every linear of a model (any family: the host says which part each linear
/// lies in and names its PEFT module). Returns the adapted paths.
pub fn attach_lora_to(
    cfg: &LoraConfig,
    host: &mut dyn AdapterHost,
    device: &Device,
    rng: &mut SplitMix64,
) -> Result<Vec<String>> {
    let (naming, tape) = (host.naming(), host.tape().clone());
    attach_lora(cfg, host.linears_mut(), naming.part_of, naming.peft_path, &tape, device, rng)
}

fn init_weights(cfg: &LoraConfig, out: usize, inp: usize, rng: &mut SplitMix64) -> (Vec<f32>, Vec<f32>) {
    let r = cfg.r;
    match cfg.init {
        LoraInit::Default => (rng.uniform(r * inp, 1.0 / (inp as f32).sqrt()), vec![0.0; out * r]),
        LoraInit::Gaussian => ((0..r * inp).map(|_| normal(rng) / r as f32).collect(), vec![0.0; out * r]),
        LoraInit::Random(s) => (rng.uniform(r * inp, s), rng.uniform(out * r, s)),
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut SplitMix64) -> f32 {
    let u1 = rng.next_f32().max(f32::MIN_POSITIVE);
    let u2 = rng.next_f32();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeting_follows_towers_and_module_kinds() {
        let (v, l) = (Part::Vision, Part::Language);
        let t = LoraTargets::Layers { vision: true, language: false, attention: true, mlp: false };
        assert!(t.matches("vision_tower.encoder.layers.0.self_attn.out_proj", v));
        assert!(!t.matches("vision_tower.encoder.layers.0.mlp.fc1", v));
        assert!(!t.matches("language_model.model.layers.0.self_attn.q_proj", l));
        // The tower is the model's word, not the path's spelling.
        assert!(t.matches("model.vision.blocks.0.attn.q_proj", v) && !t.matches("vision_tower.x.q_proj", l));
        let t = LoraTargets::Layers { vision: false, language: true, attention: false, mlp: true };
        assert!(t.matches("language_model.model.layers.2.mlp.down_proj", l));
        assert!(!t.matches("language_model.model.layers.2.self_attn.o_proj", l));
        assert!(LoraTargets::AllLinear.matches("anything.q_proj", Part::Projector));
        // A clipped linear's inner linear is its wrapper's module.
        let t = LoraTargets::Layers { vision: true, language: false, attention: true, mlp: false };
        assert!(t.matches("model.vision_tower.encoder.layers.0.self_attn.q_proj.linear", v));
        assert!(!t.matches("model.vision_tower.encoder.layers.0.mlp.up_proj.linear", v));
        let t = LoraTargets::Modules(vec!["fc1".into(), "q_proj".into()]);
        assert!(t.matches("vision_tower.encoder.layers.1.mlp.fc1", v) && !t.matches("x.fc2", l));
    }

    #[test]
    fn peft_targets_name_wrapped_linears_in_full() {
        let peft = |p: &str| format!("base_model.model.{p}");
        let plain = ["language_model.model.layers.0.self_attn.q_proj".to_string(), "x.layers.1.mlp.fc1".to_string()];
        assert_eq!(peft_target_modules(&plain, peft), ["fc1", "q_proj"]);
        let wrapped = [
            "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear".to_string(),
            "model.language_model.layers.0.self_attn.q_proj".to_string(),
        ];
        assert_eq!(
            peft_target_modules(&wrapped, peft),
            [
                "model.language_model.layers.0.self_attn.q_proj",
                "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear"
            ]
        );
    }

    #[test]
    fn initializations_have_their_distributions() {
        let mut rng = SplitMix64::new(3);
        let cfg = |init| LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            use_rslora: false,
            targets: LoraTargets::AllLinear,
            init,
            dropout: None,
        };
        let (a, b) = init_weights(&cfg(LoraInit::Default), 32, 64, &mut rng);
        assert!(a.iter().all(|x| x.abs() <= 0.125) && a.iter().any(|x| x.abs() > 0.1));
        assert!(b.iter().all(|&x| x == 0.0));
        let (a, _) = init_weights(&cfg(LoraInit::Gaussian), 32, 4096, &mut rng);
        let var = a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32;
        assert!((var - 1.0 / 64.0).abs() < 0.003, "variance {var}");
        let (_, b) = init_weights(&cfg(LoraInit::Random(0.1)), 32, 64, &mut rng);
        assert!(b.iter().any(|&x| x != 0.0));
    }
}
