//! What a run writes and reads back: the adapter (PEFT format) or the trained weights with their
//! HF companion files, checkpoints (parameters, AdamW moments, step, data position) and exact
//! resume, refusing non-finite weights and checkpoints of runs with other settings. Not the loop.

use super::Trainer;
use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{Method, TrainConfig};
use lapidary_core::{DType, Error, Result};
use lapidary_kernels::gather;
use lapidary_lora::PeftAdapterConfig;
use lapidary_nn::Part;
use lapidary_nn::safetensors::LoadTensor;
use std::path::{Path, PathBuf};

impl Trainer {
    /// Writes the adapter (LoRA: PEFT format) or the trained weights (full: tensors under their
    /// checkpoint names) into `dir`.
    /// Every step must have been read ([`Self::read_steps`]) first.
    pub fn save_weights(&self, dir: &Path) -> Result<()> {
        if let Some(u) = self.unread.first() {
            return Err(Error::invalid(format!(
                "save_weights: steps {}..={} are not read yet (read_steps checks them first)",
                u.stats.step, self.state.step
            )));
        }
        self.ensure_finite()?;
        match self.cfg.method {
            Method::Lora => {
                // The adapters, and a trained projector as PEFT's modules_to_save (whole tensors
                // under their PEFT names, e.g. `base_model.model.model.multi_modal_projector.*`;
                // the module is the projector's top-level name).
                let mut tensors = Vec::new();
                let mut modules_to_save: Vec<String> = Vec::new();
                let naming = self.model.naming();
                for (name, t) in self.trainable_tensors() {
                    if name.contains(".lora_") {
                        tensors.push((name, t));
                    } else if (naming.part_of)(&name) == Part::Projector {
                        let module = name.split('.').next().unwrap_or(&name).to_string();
                        tensors.push(((naming.peft_path)(&name), t));
                        if !modules_to_save.contains(&module) {
                            modules_to_save.push(module);
                        }
                    } else {
                        return Err(Error::invalid(format!("{name}: a trained tensor PEFT's format has no place for")));
                    }
                }
                let pc = PeftAdapterConfig {
                    r: self.cfg.lora_r,
                    lora_alpha: self.cfg.lora_alpha,
                    use_rslora: self.cfg.use_rslora,
                    lora_dropout: self.cfg.lora_dropout,
                    modules_to_save,
                };
                lapidary_lora::save_peft_adapter(dir, &pc, &self.adapted_modules, &tensors)
            }
            Method::Full => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                // Each tensor under its HF key, in the shape the base checkpoint stores it, so HF
                // loads the directory; beside it the companion files `merge` writes too.
                let tensors = self.trainable_tensors();
                let mut entries: Vec<_> = tensors
                    .iter()
                    .map(|(n, t)| {
                        lapidary_nn::safetensors::entry_of(
                            self.model.hf_checkpoint_key(n),
                            &self.model.in_stored_shape(n, t)?,
                        )
                    })
                    .collect::<Result<_>>()?;
                let written = entries.iter().map(|e| e.0.clone()).collect();
                entries.extend(lapidary_model::untouched_tensors(&self.cfg.model, &written)?);
                lapidary_nn::safetensors::save(dir.join("model.safetensors"), &entries)?;
                let stored = tensors.first().map_or(DType::F32, |(_, t)| t.dtype());
                let family = lapidary_registry::family_of(&self.cfg.model)?;
                lapidary_model::write_companions(family, &self.cfg.model, dir, stored)?;
                Ok(())
            }
        }
    }

    /// Saves a checkpoint of the current state, after reading (and so checking) the steps not
    /// read yet; returns its directory.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        self.read_steps()?;
        self.ensure_finite()?;
        std::fs::create_dir_all(&self.cfg.output_dir).map_err(|e| Error::io(&self.cfg.output_dir, e))?;
        let meta =
            CheckpointMeta { state: self.state.clone(), optimizer_steps: self.opt.steps, config: self.cfg.clone() };
        checkpoint::save(&self.cfg.output_dir, &meta, &self.trainable_tensors(), &self.opt.state_tensors(), |tmp| {
            if self.cfg.method == Method::Lora { self.save_weights(tmp) } else { Ok(()) }
        })
    }

    /// Continues from a checkpoint written by [`Self::save_checkpoint`] with the same model,
    /// data, method and LoRA settings: parameters, AdamW moments, step and data position are
    /// restored, so the run goes on as if never stopped.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let ck = checkpoint::load(dir)?;
        let mismatches = run_defining_differences(&ck.meta.config, &self.cfg);
        if !mismatches.is_empty() {
            return Err(Error::invalid(format!(
                "{}: the checkpoint belongs to a run with other settings ({}); resume with the same \
                 settings, or start afresh with --overwrite-output-dir true",
                dir.display(),
                mismatches.join("; ")
            )));
        }
        // The names are checked before any parameter changes.
        let names: std::collections::HashSet<&str> = ck.trainable.names().collect();
        let (stored, trained) = (names.len(), self.opt.params().len());
        if let Some((name, _)) = self.opt.params().iter().find(|(n, _)| !names.contains(n.as_str())) {
            return Err(Error::invalid(format!("{}: trainable.safetensors lacks {name}", dir.display())));
        } else if stored != trained {
            let what = format!("holds {stored} tensors, this run trains {trained}");
            return Err(Error::invalid(format!("{}: trainable.safetensors {what}", dir.display())));
        }
        for (name, var) in self.opt.params() {
            let t = ck.trainable.load(name, &self.device, var.value().dtype())?;
            t.expect_shape(name, var.shape())?;
            gather::copy_into(var.value(), &t)?;
        }
        let device = self.device.clone();
        let optimizer = &ck.optimizer;
        self.opt.load_state(
            |name, shape| {
                if optimizer.entry(name).is_none() {
                    return Err(Error::invalid(format!("{}: optimizer.safetensors lacks {name}", dir.display())));
                }
                let t = optimizer.load(name, &device, DType::F32)?;
                t.expect_shape(name, shape)?;
                Ok(t)
            },
            ck.meta.optimizer_steps,
        )?;
        self.state = ck.meta.state;
        Ok(())
    }

    /// An error naming the first trainable tensor holding a NaN or an infinity: nothing
    /// non-finite is ever written as an adapter, weights or a checkpoint.
    fn ensure_finite(&self) -> Result<()> {
        for (name, t) in self.trainable_tensors() {
            let values = t.to_f32_vec()?;
            Error::check_finite(
                &format!("trainable tensor {name}"),
                &values,
                "refusing to save non-finite weights (lower the learning rate or check the base weights and data)",
            )?;
        }
        Ok(())
    }
}

/// The settings that may change when a run resumes: where and how often it reports and saves,
/// how long it runs, and gradient checkpointing (which gives bit-identical results). Every other
/// setting defines the run, including any added later.
const MAY_CHANGE_ON_RESUME: [&str; 9] = [
    "output_dir",
    "overwrite_output_dir",
    "max_steps",
    "num_epochs",
    "log_every",
    "eval_every",
    "save_every",
    "report_to",
    "gradient_checkpointing",
];

/// The settings that define a run on which `old` and `new` differ, as `field: old -> new`
/// (every field of [`TrainConfig`] but [`MAY_CHANGE_ON_RESUME`]; paths compared as the files
/// they name).
fn run_defining_differences(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    let (a, b) = (old.fields(), new.fields());
    let same_path = |x: &serde_json::Value, y: &serde_json::Value| match (x.as_str(), y.as_str()) {
        (Some(x), Some(y)) => {
            x == y || matches!((std::fs::canonicalize(x), std::fs::canonicalize(y)), (Ok(p), Ok(q)) if p == q)
        }
        _ => false,
    };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = serde_json::Value::Null;
    let mut out = Vec::new();
    for key in keys {
        if MAY_CHANGE_ON_RESUME.contains(&key.as_str()) {
            continue;
        }
        let (x, y) = (a.get(key).unwrap_or(&none), b.get(key).unwrap_or(&none));
        if x == y || (["model", "data", "eval_data"].contains(&key.as_str()) && same_path(x, y)) {
            continue;
        }
        let show = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        out.push(format!("{key}: {} -> {}", show(x), show(y)));
    }
    out
}

#[cfg(test)]
mod resume_tests {
    use super::*;
    use serde_json::{Value, json};

    /// `value` changed to another value its field accepts.
    fn another(key: &str, value: &Value, map: &serde_json::Map<String, Value>) -> Value {
        let candidates: Vec<Value> = match value {
            Value::Bool(b) => vec![json!(!b)],
            Value::Number(n) => match n.as_u64() {
                Some(u) => vec![json!(u + 1)],
                None => vec![json!(n.as_f64().unwrap() * 0.5 + 0.125)],
            },
            Value::String(s) => ["full", "lora", "cosine", "linear", "nf4", "bf16", "tensorboard"]
                .iter()
                .map(|c| json!(c))
                .chain([json!(format!("{s}-other"))])
                .collect(),
            _ => vec![json!("held-out.jsonl"), json!(["q_proj"])],
        };
        candidates
            .into_iter()
            .find(|c| {
                let mut m = map.clone();
                m.insert(key.to_string(), c.clone());
                c != value && serde_json::from_value::<TrainConfig>(Value::Object(m)).is_ok()
            })
            .unwrap_or_else(|| panic!("no other value for {key}"))
    }

    #[test]
    fn every_setting_but_the_allowed_ones_defines_the_run() {
        let base = TrainConfig { model: "m".into(), data: "d.jsonl".into(), ..TrainConfig::default() };
        let map = base.fields();
        // Fields left out of the serialized form (None) are changed too.
        let mut keys: Vec<String> = map.keys().cloned().collect();
        keys.extend(["eval_data", "target_modules"].map(String::from));
        keys.sort();
        keys.dedup();
        assert!(keys.len() >= 39, "{keys:?}");
        for key in keys {
            let old = map.get(&key).cloned().unwrap_or(Value::Null);
            let mut changed = map.clone();
            changed.insert(key.clone(), another(&key, &old, &map));
            let new: TrainConfig = serde_json::from_value(Value::Object(changed)).unwrap();
            let diffs = run_defining_differences(&base, &new);
            if MAY_CHANGE_ON_RESUME.contains(&key.as_str()) {
                assert!(diffs.is_empty(), "{key}: {diffs:?}");
            } else {
                assert!(diffs.len() == 1 && diffs[0].starts_with(&format!("{key}: ")), "{key}: {diffs:?}");
            }
        }
        assert!(run_defining_differences(&base, &base.clone()).is_empty());
    }
}
