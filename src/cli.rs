//! `lapidary train` and `lapidary generate`: the glue between the command line and the library
//! (loading, resuming, printing). Not option parsing (main.rs) nor the loop itself
//! (lapidary-train).

use crate::autograd::Trainable;
use crate::core::{DType, Device, Error, Result, Tensor};
use crate::data::Processor;
use crate::data::template::{Content, Conversation, Message, Part};
use crate::gemma3::{Gemma3ForConditionalGeneration, GenerateOptions, OpenOptions, Sampling};
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
    let (tr, ev) = trainer.sizes();
    println!(
        "training {} values on {device}: {tr} rows, {ev} held out, {} steps",
        trainer.trainable_values(),
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

/// Opens an HF model directory, frozen, in f32, with a PEFT LoRA adapter applied when given.
/// Returns the model and the number of linears the adapter adapts.
pub fn open_frozen(
    model_dir: &Path,
    adapter: Option<&Path>,
    device: &Device,
) -> Result<(Gemma3ForConditionalGeneration, usize)> {
    let mut model = Gemma3ForConditionalGeneration::open(model_dir, device, &OpenOptions::default())?;
    let (namer, tape) = (model.peft_namer(), model.tape().clone());
    let adapted = match adapter {
        Some(dir) => crate::lora::load_peft_adapter(dir, model.linears_mut(), namer, &tape, device, Trainable::No)?,
        None => 0,
    };
    Ok((model, adapted))
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
    let processor = Processor::from_model(model_dir)?;
    let (model, _) = open_frozen(model_dir, adapter, device)?;
    let mut parts: Vec<Part> = images.iter().map(|p| Part::Image { path: p.display().to_string() }).collect();
    parts.push(Part::Text { text: prompt.to_string() });
    let conv = Conversation { messages: vec![Message { role: "user".into(), content: Content::Parts(parts) }] };
    let (ids, files) = processor.encode_prompt(&conv, Path::new(""))?;
    let pixels = if files.is_empty() {
        None
    } else {
        let mut all = Vec::new();
        for f in &files {
            all.extend(processor.pixels(f)?);
        }
        let (h, w) = (processor.image.height, processor.image.width);
        Some(Tensor::from_f32(device, &all, &[files.len(), 3, h, w], DType::F32)?)
    };
    let t = &processor.tokenizer;
    let opts = GenerateOptions { max_new_tokens, sampling, stop: vec![t.end_of_turn_id, t.eos_id] };
    let out = model.generate(&ids, pixels.as_ref(), &opts)?;
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
