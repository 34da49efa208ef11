//! `lapidary train` and `lapidary generate`: the glue between the command line and the library
//! (loading, resuming, printing). Not option parsing (main.rs) nor the loop itself
//! (lapidary-train).

use crate::autograd::Trainable;
use crate::core::{Device, Error, Result};
use crate::data::template::{Content, Conversation, Message, Part};
use crate::model::{GenerateOptions, Model, OpenOptions, Sampling};
use crate::train::{TrainConfig, Trainer, checkpoint};
use std::path::{Path, PathBuf};

/// Trains with `cfg`; `resume`: `Some("latest")` continues from the newest checkpoint in the
/// output directory, `Some(dir)` from that checkpoint.
pub fn train(cfg: TrainConfig, resume: Option<PathBuf>, device: &Device) -> Result<()> {
    let mut trainer = Trainer::new(cfg, device)?;
    eprint!("{}", trainer.skipped_report());
    if let Some(dir) = resume {
        let dir = if dir.as_os_str() == "latest" {
            checkpoint::latest(&trainer.config().output_dir)?.ok_or_else(|| {
                Error::invalid(format!("--resume: no checkpoint in {}", trainer.config().output_dir.display()))
            })?
        } else {
            dir
        };
        trainer.resume(&dir)?;
        println!("resumed from {} at step {}", dir.display(), trainer.state.step);
    }
    let rows = trainer.rows();
    println!(
        "training {} values on {device}: {} rows, {} held out, {} steps",
        trainer.trainable_values(),
        rows.train,
        rows.held_out,
        trainer.total_steps()
    );
    let s = trainer.run(true)?;
    println!(
        "done: {} steps in {:.1} s; loss {:.4} -> {:.4}; held-out loss {} -> {}",
        s.steps,
        s.seconds,
        s.first_loss,
        s.last_loss,
        s.eval_before.map_or("-".into(), |l| format!("{l:.4}")),
        s.eval_after.map_or("-".into(), |l| format!("{l:.4}")),
    );
    let out = &trainer.config().output_dir;
    println!("wrote {} and {}", s.output.display(), out.join("metrics.jsonl").display());
    Ok(())
}

/// A model opened frozen, in f32, with the number of linears its adapter adapts.
pub struct FrozenModel {
    /// The model, the adapter applied.
    pub model: Box<dyn Model>,
    /// Linears the adapter adapts (0 without one).
    pub adapted: usize,
}

/// Opens a model (HF directory or `.gguf` file, any family the registry knows), frozen, in f32,
/// with a PEFT LoRA adapter applied when given.
pub fn open_frozen(model_dir: &Path, adapter: Option<&Path>, device: &Device) -> Result<FrozenModel> {
    let mut model = crate::registry::open(model_dir, device, &OpenOptions::default())?;
    let adapted = match adapter {
        Some(dir) => crate::lora::load_peft_adapter_into(dir, model.as_mut(), device, Trainable::No)?,
        None => 0,
    };
    Ok(FrozenModel { model, adapted })
}

/// Generates a reply to `prompt` shown after `images`.
pub fn generate(
    model_dir: &Path,
    adapter: Option<&Path>,
    images: &[PathBuf],
    prompt: &str,
    max_new_tokens: usize,
    sampling: Sampling,
    device: &Device,
) -> Result<String> {
    let processor = crate::registry::processor(model_dir)?;
    let model = open_frozen(model_dir, adapter, device)?.model;
    let mut parts: Vec<Part> = images.iter().map(|p| Part::Image { path: p.display().to_string() }).collect();
    parts.push(Part::Text { text: prompt.to_string() });
    let conv = Conversation::new(vec![Message { role: "user".into(), content: Content::Parts(parts) }]);
    let prompt = processor.prompt(&conv, Path::new(""))?;
    let t = &processor.tokenizer;
    let opts = GenerateOptions { max_new_tokens, sampling, stop: vec![t.end_of_turn_id, t.eos_id] };
    let out = model.generate(&prompt, &opts)?;
    t.decode(&out, true)
}

/// The token ids of `text` by the tokenizer of `model` (an HF directory's `tokenizer.json`, or a
/// `.gguf` file's own), with BOS when the tokenizer adds it by default, as transformers does.
pub fn tokenize(model: &Path, text: &str) -> Result<Vec<u32>> {
    let tok = if crate::nn::gguf::is_gguf_path(model) {
        crate::data::gguf_tokenizer::from_gguf(&crate::nn::gguf::GgufFile::open(model)?)?
    } else {
        let path = model.join("tokenizer.json");
        tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::invalid(format!("{}: not a readable tokenizer.json: {e}", path.display())))?
    };
    let enc = tok.encode(text, true).map_err(|e| Error::invalid(format!("tokenizer: {e}")))?;
    Ok(enc.get_ids().to_vec())
}
