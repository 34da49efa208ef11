//! `lapidary merge`: folds a LoRA adapter into its base (`W + scale · B · A` for every adapted
//! linear) and writes an HF checkpoint — every base tensor under its original name, in bf16, f16
//! or f32 — with the base's config and the companion files its family lists (tokenizer,
//! processor, chat template, generation settings; `lapidary_model::write_companions`), so
//! transformers loads it as the base model (a `.gguf` base gives the causal-LM checkpoint its
//! family maps it to, e.g. Gemma3ForCausalLM, with a config and tokenizer built from the file's
//! metadata). Not adapter training.

use crate::core::{DType, Device, Error, Result, Tensor};
use crate::kernels::elementwise;
use crate::nn::safetensors;
use std::collections::HashMap;
use std::path::Path;

/// Merges `adapter_dir` into `model_dir` and writes the result to `out`. Returns the number of
/// linears merged.
/// The output is written into a temporary directory beside `out` and renamed into place once
/// complete. `out` may not be or contain the base (or the adapter); an existing non-empty `out`
/// is replaced only with `overwrite`. Non-finite merged weights are refused.
pub fn run(
    model_dir: &Path,
    adapter_dir: &Path,
    out: &Path,
    dtype: DType,
    device: &Device,
    overwrite: bool,
) -> Result<usize> {
    check_output(out, &[model_dir, adapter_dir], overwrite)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    crate::core::fsio::write_dir(out, |staged| write_merged(model_dir, adapter_dir, staged, dtype, device))
}

/// Refuses an output that is (or holds, or lies inside) one of `inputs`, and a non-empty one
/// unless `overwrite`.
fn check_output(out: &Path, inputs: &[&Path], overwrite: bool) -> Result<()> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
    let canon = |p: &Path| -> Result<std::path::PathBuf> {
        match std::fs::canonicalize(p) {
            Ok(c) => Ok(c),
            Err(_) => abs(p),
        }
    };
    let out_c = canon(out)?;
    for input in inputs {
        let input_c = canon(input)?;
        if out_c == input_c || input_c.starts_with(&out_c) || out_c.starts_with(&input_c) {
            return Err(Error::invalid(format!(
                "--out {} would overwrite or sit inside {}; choose another directory",
                out.display(),
                input.display()
            )));
        }
    }
    if out.is_file() {
        return Err(Error::invalid(format!("--out {} is a file; a directory is expected", out.display())));
    }
    let non_empty = out.is_dir() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some();
    if non_empty && !overwrite {
        return Err(Error::invalid(format!(
            "--out {} exists and is not empty; pass --overwrite to replace it",
            out.display()
        )));
    }
    Ok(())
}

/// One parameter of a model with its adapter folded in.
pub struct MergedParam {
    /// lapidary's name (`language_model.model.layers.0.self_attn.q_proj.weight`, ...).
    pub name: String,
    /// The key an HF checkpoint of the model stores it under (the base's own; for a `.gguf` base,
    /// the HF class's).
    pub stored: String,
    /// The shape the base stores (e.g. the patch embedding as a conv kernel `[out, 3, p, p]`).
    pub shape: Vec<usize>,
    /// Row-major values, finite.
    pub values: Vec<f32>,
}

/// A model's parameters with an adapter folded in ([`merged_params`]).
pub struct Merged {
    /// Every parameter, in the model's order.
    pub params: Vec<MergedParam>,
    /// Linears the adapter was folded into.
    pub adapted: usize,
}

/// Every parameter of the model at `model` (an HF directory or a `.gguf` file) in f32, with the
/// PEFT LoRA adapter at `adapter_dir` folded in (`W + scale · B · A`) when given, in the model's
/// parameter order. An adapter that matches no linear, an adapter that cannot be folded, a packed
/// base and non-finite merged values are errors.
pub fn merged_params(model: &Path, adapter_dir: Option<&Path>, device: &Device) -> Result<Merged> {
    let crate::cli::FrozenModel { model: mut m, adapted } = crate::cli::open_frozen(model, adapter_dir, device)?;
    let tape = m.tape().clone();
    if let Some(dir) = adapter_dir
        && adapted == 0
    {
        return Err(Error::invalid(format!("{}: the adapter matches no linear of the model", dir.display())));
    }
    let mut merged: HashMap<String, Tensor> = HashMap::new();
    for linear in m.linears_mut() {
        let Some(adapter) = linear.adapter() else { continue };
        let delta = adapter.weight_delta()?.ok_or_else(|| {
            Error::invalid(format!("{}: its adapter cannot be folded into the weight", linear.path()))
        })?;
        let weight = linear.weight().ok_or_else(|| Error::invalid(format!("{}: packed base", linear.path())))?;
        let name = tape
            .leaf_name(weight.id())
            .ok_or_else(|| Error::invalid(format!("{}: weight without a name", linear.path())))?;
        merged.insert(name, elementwise::add(weight.value(), &delta)?);
    }
    let mut params = Vec::new();
    for (name, var) in tape.params() {
        if name.contains(".lora_A.") || name.contains(".lora_B.") {
            continue;
        }
        let value = merged.get(&name).unwrap_or(var.value());
        let stored = m.hf_checkpoint_key(&name);
        let shape = m.stored_shape(&name).unwrap_or_else(|| value.shape().to_vec());
        let values = value.to_f32_vec()?;
        Error::check_finite(&format!("merged tensor {stored}"), &values, "refusing to write non-finite weights")?;
        params.push(MergedParam { name, stored, shape, values });
    }
    Ok(Merged { params, adapted })
}

fn write_merged(model_dir: &Path, adapter_dir: &Path, out: &Path, dtype: DType, device: &Device) -> Result<usize> {
    let merged = merged_params(model_dir, Some(adapter_dir), device)?;
    let mut entries = Vec::new();
    for p in merged.params {
        let stored = Tensor::from_f32(device, &p.values, &p.shape, dtype)?;
        entries.push(safetensors::entry_of(p.stored, &stored)?);
    }
    let written = entries.iter().map(|e| e.0.clone()).collect();
    entries.extend(crate::model::untouched_tensors(model_dir, &written)?);
    safetensors::save(out.join("model.safetensors"), &entries)?;
    crate::model::write_companions(crate::registry::family_of(model_dir)?, model_dir, out, dtype)?;
    Ok(merged.adapted)
}
