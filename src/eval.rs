//! `lapidary eval`: logits, loss and gradients of one batch, written to a safetensors file, so
//! anyone can check lapidary against another implementation. The batch file holds `input_ids`,
//! `attention_mask`, `token_type_ids`, `labels` (int64 `[B, T]`), with images `pixel_values`
//! (f32 `[N, 3, H, W]`, images in row order) and, for packed rows, `position_ids` (int64
//! `[B, T]`: each sequence starts where it is 0 and sees only itself). The output holds `logits`
//! (f32 `[B, T, V]`), `loss` (f32 `[1]`) and `grad.<key>` for every parameter, under its key in
//! the checkpoint (unless `no_grad`). With a PEFT adapter, only the adapter is trainable and
//! the gradients are `grad.<key in the adapter file>`.

use crate::autograd::{BackwardOptions, Trainable};
use crate::core::{Device, Error, Result, Tensor};
use crate::model::{ForwardOptions, OpenOptions};
use crate::nn::safetensors;
use std::path::Path;

/// Runs the model on the batch and writes the results (see the module docs). Returns the loss.
pub fn run(
    model_dir: &Path,
    batch_path: &Path,
    out: &Path,
    adapter: Option<&Path>,
    device: &Device,
    no_grad: bool,
) -> Result<f32> {
    let trainable = if no_grad { Trainable::No } else { Trainable::Yes };
    let base = if adapter.is_some() { Trainable::No } else { trainable };
    let mut model = crate::registry::open(model_dir, device, &OpenOptions::all(base))?;
    let batch = model.read_batch(batch_path, device)?;
    let tape = model.tape().clone();
    if let Some(dir) = adapter {
        crate::lora::load_peft_adapter_into(dir, model.as_mut(), device, trainable)?;
    }
    let output = model.forward(&batch, &ForwardOptions::default())?;
    let loss = output.loss.ok_or_else(|| Error::invalid("batch has no labels"))?;
    let vocab = model.vocab_size();
    let logits: Tensor = output.logits.value().reshape(&[batch.batch, batch.seq, vocab])?;
    let mut entries = vec![safetensors::entry_of("logits", &logits)?, safetensors::entry_of("loss", loss.value())?];
    if !no_grad {
        // A batch without images never reaches the vision tower: its gradients are absent, as in HF.
        let mut opts = BackwardOptions::default();
        if batch.pixel_values.is_none() {
            opts.allow_missing = model.unreachable_without_images();
        }
        let (grads, _) = tape.backward_with(&loss, &opts)?;
        // Each gradient in its parameter's checkpoint shape, as HF reports it.
        for (name, g) in grads.named() {
            let g = model.in_stored_shape(name, g)?;
            entries.push(safetensors::entry_of(format!("grad.{}", model.stored_name(name)), &g)?);
        }
    }
    let loss_value = loss.value().to_f32_vec()?[0];
    if !loss_value.is_finite() {
        // Written anyway (the logits show where), but never reported as a result.
        safetensors::save(out, &entries)?;
        return Err(Error::invalid(format!(
            "{}: the loss is {loss_value}: the weights, adapter or pixels hold non-finite values \
             (logits written to {} for inspection)",
            model_dir.display(),
            out.display()
        )));
    }
    safetensors::save(out, &entries)?;
    Ok(loss_value)
}
