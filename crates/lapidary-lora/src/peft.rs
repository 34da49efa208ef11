//! PEFT LoRA adapters, read and written: `adapter_config.json` (r, lora_alpha, use_rslora) and
//! `adapter_model.safetensors` with keys `<module path>.lora_A.weight` (`[r, in]`) and
//! `.lora_B.weight` (`[out, r]`). Every adapter tensor read must land on a linear of the model
//! and match its shape; anything left over is an error naming it. Writing is
//! [`save_peft_adapter`] (atomic). Not the choice of modules to adapt (see `target.rs`).

use crate::LoraAdapter;
use lapidary_autograd::{Tape, Trainable};
use lapidary_core::{DType, Device, Error, Result};
use lapidary_nn::{AdapterHost, Linear, Weights};
use serde_json::Value;
use std::path::Path;
use std::rc::Rc;

/// The parts of PEFT's `LoraConfig` that change the computation.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftAdapterConfig {
    /// Rank (the tensors' own shapes decide per module; this is the default).
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f32,
    /// Scale `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Dropout on the adapters' input during training (recorded; no effect on inference).
    pub lora_dropout: f32,
    /// Modules saved whole beside the adapters (PEFT's `modules_to_save`, e.g.
    /// `multi_modal_projector`).
    pub modules_to_save: Vec<String>,
}

impl PeftAdapterConfig {
    /// Reads `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: not valid JSON: {e}", path.display())))?;
        let bad = |what: &str| Error::invalid(format!("{}: {what}", path.display()));
        if v.get("peft_type").and_then(Value::as_str).is_some_and(|t| t != "LORA") {
            return Err(bad("peft_type is not LORA"));
        }
        if v.get("alpha_pattern").and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
            return Err(bad("alpha_pattern (per-module alpha) is not supported"));
        }
        if v.get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(bad("DoRA adapters are not supported"));
        }
        let cfg = PeftAdapterConfig {
            r: v.get("r").and_then(Value::as_u64).ok_or_else(|| bad("missing integer field r"))? as usize,
            lora_alpha: v
                .get("lora_alpha")
                .and_then(Value::as_f64)
                .ok_or_else(|| bad("missing number field lora_alpha"))? as f32,
            use_rslora: v.get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
            lora_dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
            modules_to_save: v
                .get("modules_to_save")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        };
        Error::check_range(&format!("{}: r", path.display()), cfg.r, 1, 1 << 16)?;
        if !cfg.lora_alpha.is_finite() {
            return Err(bad(&format!("lora_alpha is {}; expected a finite number", cfg.lora_alpha)));
        }
        if !(0.0..1.0).contains(&cfg.lora_dropout) {
            return Err(bad(&format!("lora_dropout is {}; expected a number in [0, 1)", cfg.lora_dropout)));
        }
        Ok(cfg)
    }
}

/// [`load_peft_adapter`] into a model's linears (any family: the host names their PEFT modules);
/// returns the number of linears adapted.
pub fn load_peft_adapter_into(
    dir: &Path,
    host: &mut dyn AdapterHost,
    device: &Device,
    trainable: Trainable,
) -> Result<usize> {
    let (naming, tape) = (host.naming(), host.tape().clone());
    load_peft_adapter(dir, host.linears_mut(), naming.peft_path, &tape, device, trainable)
}

/// Loads the PEFT adapter in `dir` into `linears`: the linear at checkpoint path `p` takes the
/// tensors `{peft_path(p)}.lora_A.weight` and `.lora_B.weight` when the adapter has them.
/// Adapter tensors are registered on `tape` under their keys in the adapter file (f32).
/// Returns the number of linears adapted.
pub fn load_peft_adapter(
    dir: &Path,
    linears: Vec<&mut Linear>,
    peft_path: impl Fn(&str) -> String,
    tape: &Tape,
    device: &Device,
    trainable: Trainable,
) -> Result<usize> {
    let cfg = PeftAdapterConfig::from_file(&dir.join("adapter_config.json"))?;
    let w = Weights::open(dir.join("adapter_model.safetensors"), device, DType::F32)?;
    let mut adapted = 0;
    for linear in linears {
        let base = peft_path(linear.path());
        let (ka, kb) = (format!("{base}.lora_A.weight"), format!("{base}.lora_B.weight"));
        if !w.contains(&ka) && !w.contains(&kb) {
            continue;
        }
        let (out, inp) = linear.dims();
        let r = w.resolve(&ka).and_then(|k| w.source().shape(&k)).and_then(|s| s.first().copied()).unwrap_or(cfg.r);
        if r == 0 {
            return Err(Error::invalid(format!("{}: {ka} has rank 0", dir.display())));
        }
        for (key, shape) in [(&ka, [r, inp]), (&kb, [out, r])] {
            let values = w.host_values(key, &shape)?;
            Error::check_finite(&format!("{}: {key}", dir.display()), &values, "adapter weights must be finite")?;
        }
        let a = tape.param(&ka, w.tensor(&ka, &[r, inp])?, trainable);
        let b = tape.param(&kb, w.tensor(&kb, &[out, r])?, trainable);
        linear.set_adapter(Rc::new(LoraAdapter::new(a, b, cfg.lora_alpha, cfg.use_rslora)?));
        adapted += 1;
    }
    // Whole modules (modules_to_save) replace the base's tensors of the same name, in place.
    let mut saved_prefixes = Vec::new();
    for module in &cfg.modules_to_save {
        let (ours, theirs) = (format!("{module}."), format!("{}.", peft_path(module)));
        let mut loaded = 0;
        for (name, var) in tape.params() {
            let Some(rest) = name.strip_prefix(&ours) else { continue };
            let key = format!("{theirs}{rest}");
            if w.contains(&key) {
                lapidary_kernels::gather::copy_into(var.value(), &w.tensor(&key, var.shape())?)?;
                loaded += 1;
            }
        }
        if loaded == 0 {
            return Err(Error::invalid(format!(
                "{}: modules_to_save lists {module}, but no tensor of it matches the model",
                dir.display()
            )));
        }
        saved_prefixes.push(theirs);
    }
    let ignore: Vec<&str> = saved_prefixes.iter().map(String::as_str).collect();
    w.finish(&ignore)?;
    Ok(adapted)
}

/// The adapter tensors of `linears` as `(key, value)`, keys being their names on `tape` (PEFT
/// keys when created by [`crate::attach_lora`] or [`load_peft_adapter`]).
pub fn adapter_tensors(linears: &[&Linear], tape: &Tape) -> Result<Vec<(String, lapidary_core::Tensor)>> {
    let mut out = Vec::new();
    for l in linears {
        if let Some(a) = l.adapter() {
            for v in a.params() {
                let name = tape
                    .leaf_name(v.id())
                    .ok_or_else(|| Error::invalid(format!("{}: adapter tensor without a name", l.path())))?;
                out.push((name, v.value().clone()));
            }
        }
    }
    Ok(out)
}

/// Writes a PEFT adapter directory: `adapter_model.safetensors` (f32, the given keys) and
/// `adapter_config.json` (LoRA, r, lora_alpha, use_rslora, the targeted module names), each
/// written to a temporary file and renamed.
pub fn save_peft_adapter(
    dir: &Path,
    cfg: &PeftAdapterConfig,
    target_modules: &[String],
    tensors: &[(String, lapidary_core::Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t32 = if t.dtype() == DType::F32 {
            t.clone()
        } else {
            lapidary_core::Tensor::from_f32(t.device(), &t.to_f32_vec()?, t.shape(), DType::F32)?
        };
        entries.push(lapidary_nn::safetensors::entry_of(name.clone(), &t32)?);
    }
    lapidary_nn::safetensors::save(dir.join("adapter_model.safetensors"), &entries)?;
    let mut modules = target_modules.to_vec();
    modules.sort();
    modules.dedup();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": null,
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "use_rslora": cfg.use_rslora,
        "lora_dropout": cfg.lora_dropout,
        "bias": "none",
        "fan_in_fan_out": false,
        "target_modules": modules,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": if cfg.modules_to_save.is_empty() { Value::Null } else { Value::from(cfg.modules_to_save.clone()) },
        "base_model_name_or_path": null,
    });
    let path = dir.join("adapter_config.json");
    lapidary_core::fsio::write_atomic(&path, serde_json::to_string_pretty(&config).expect("valid JSON").as_bytes())
}
