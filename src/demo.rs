//! The main job the README's first command runs: a vision fine-tune on the CPU. It draws a
//! dataset of coloured shapes (PNG files + JSONL, through the same pipeline as a user's data),
//! measures how well the bundled tiny Gemma 3 model (assets/tiny-vlm) captions held-out images,
//! fine-tunes LoRA on the vision and language towers, and measures again; then the same run with
//! language layers only, to show what the vision adapters add. Not a benchmark.

use crate::core::rng::SplitMix64;
use crate::core::{DType, Device, Error, Result, Tensor};
use crate::data::template::{Content, Conversation, Message, Part};
use crate::gemma3::{GenerateOptions, Sampling};
use crate::train::{Schedule, TrainConfig, Trainer};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Colour names and their RGB values (the words are in the bundled tokenizer's corpus).
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("green", [30, 190, 50]),
    ("blue", [40, 70, 230]),
    ("yellow", [235, 220, 40]),
    ("purple", [150, 50, 190]),
    ("orange", [245, 140, 20]),
    ("white", [245, 245, 245]),
    ("cyan", [40, 220, 220]),
];
/// Shape names.
pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "cross"];
const PROMPTS: [&str; 4] =
    ["What is in the image?", "Describe the image.", "What do you see?", "Caption this picture."];

/// Options of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where the dataset, checkpoints, adapters, metrics and plots go.
    pub out: PathBuf,
    /// Optimizer steps per run.
    pub steps: usize,
    /// Training rows drawn.
    pub train_rows: usize,
    /// Held-out rows drawn.
    pub eval_rows: usize,
    /// Also run language-only LoRA for comparison.
    pub compare: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { out: PathBuf::from("lapidary-demo"), steps: 150, train_rows: 480, eval_rows: 48, compare: true }
    }
}

/// The bundled tiny model.
pub fn bundled_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-vlm")
}

fn draw(colour: [u8; 3], shape: &str, rng: &mut SplitMix64) -> image::RgbImage {
    let n = 32u32;
    let bg = [rng.next_u64() % 60, rng.next_u64() % 60, rng.next_u64() % 60].map(|v| v as u8);
    let r = 7.0 + rng.next_f32() * 5.0;
    let cx = r + rng.next_f32() * (n as f32 - 2.0 * r);
    let cy = r + rng.next_f32() * (n as f32 - 2.0 * r);
    image::RgbImage::from_fn(n, n, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let inside = match shape {
            "circle" => dx * dx + dy * dy <= r * r,
            "square" => dx.abs() <= r * 0.8 && dy.abs() <= r * 0.8,
            "triangle" => dy >= -r && dy <= r * 0.8 && dx.abs() <= (dy + r) * 0.55,
            _ => (dx.abs() <= r * 0.3 && dy.abs() <= r) || (dy.abs() <= r * 0.3 && dx.abs() <= r),
        };
        let noise = (rng.next_u64() % 16) as i32 - 8;
        let base = if inside { colour } else { bg };
        image::Rgb(base.map(|c| (c as i32 + noise).clamp(0, 255) as u8))
    })
}

/// One held-out item: image file and its caption parts.
#[derive(Clone, Debug)]
pub struct Item {
    /// The PNG.
    pub image: PathBuf,
    /// Colour word.
    pub colour: &'static str,
    /// Shape word.
    pub shape: &'static str,
    /// The prompt asked.
    pub prompt: &'static str,
}

impl Item {
    /// The caption taught: `A red circle.`
    pub fn caption(&self) -> String {
        format!("A {} {}.", self.colour, self.shape)
    }
}

/// Draws `rows` images under `dir/images/` and writes `dir/{name}.jsonl`; returns the items.
pub fn write_dataset(dir: &Path, name: &str, rows: usize, seed: u64) -> Result<Vec<Item>> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let mut rng = SplitMix64::new(seed);
    let mut items = Vec::with_capacity(rows);
    let path = dir.join(format!("{name}.jsonl"));
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    for i in 0..rows {
        let (colour, rgb) = COLOURS[(rng.next_u64() % COLOURS.len() as u64) as usize];
        let shape = SHAPES[(rng.next_u64() % SHAPES.len() as u64) as usize];
        let prompt = PROMPTS[(rng.next_u64() % PROMPTS.len() as u64) as usize];
        let file = images.join(format!("{name}-{i:04}.png"));
        draw(rgb, shape, &mut rng)
            .save(&file)
            .map_err(|e| Error::invalid(format!("{}: cannot write: {e}", file.display())))?;
        let item = Item { image: file, colour, shape, prompt };
        let row = serde_json::json!({"messages": [
            {"role": "user", "content": [
                {"type": "image", "path": format!("images/{name}-{i:04}.png")},
                {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": item.caption()}]}]});
        writeln!(f, "{row}").map_err(|e| Error::io(&path, e))?;
        items.push(item);
    }
    Ok(items)
}

/// Caption accuracy of a trained (or untouched) model on `items`: exact captions, right colour
/// word, right shape word (greedy decoding).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Accuracy {
    /// Exact caption matches.
    pub exact: f64,
    /// The colour word right.
    pub colour: f64,
    /// The shape word right.
    pub shape: f64,
}

/// Captions every item with the trainer's model and scores them; returns the accuracy and one
/// example caption.
pub fn caption_accuracy(trainer: &Trainer, items: &[Item]) -> Result<(Accuracy, String)> {
    let p = trainer.processor();
    let opts =
        GenerateOptions { max_new_tokens: 10, sampling: Sampling::Greedy, stop: vec![p.tokenizer.end_of_turn_id] };
    let mut acc = Accuracy::default();
    let mut example = String::new();
    for (k, item) in items.iter().enumerate() {
        let conv = Conversation {
            messages: vec![Message {
                role: "user".into(),
                content: Content::Parts(vec![
                    Part::Image { path: item.image.display().to_string() },
                    Part::Text { text: item.prompt.into() },
                ]),
            }],
        };
        let (ids, images) = p.encode_prompt(&conv, Path::new(""))?;
        let pixels = p.pixels(&images[0])?;
        let dev = trainer.device();
        let pv = Tensor::from_f32(dev, &pixels, &[1, 3, p.image.height, p.image.width], DType::F32)?;
        let out = trainer.model().generate(&ids, Some(&pv), &opts)?;
        let text = p.tokenizer.decode(&out, true)?.trim().to_string();
        if k == 0 {
            example = format!("{:?} -> {text:?}", item.caption());
        }
        let words: Vec<&str> = text.trim_end_matches('.').split_whitespace().collect();
        acc.exact += f64::from(text == item.caption());
        acc.colour += f64::from(words.get(1) == Some(&item.colour));
        acc.shape += f64::from(words.get(2) == Some(&item.shape));
    }
    let n = items.len().max(1) as f64;
    Ok((Accuracy { exact: acc.exact / n, colour: acc.colour / n, shape: acc.shape / n }, example))
}

fn config(opts: &DemoOptions, out: &Path, vision: bool) -> TrainConfig {
    TrainConfig {
        model: bundled_model(),
        data: opts.out.join("data/train.jsonl"),
        eval_data: Some(opts.out.join("data/eval.jsonl")),
        output_dir: out.to_path_buf(),
        lora_r: 16,
        lora_alpha: 32.0,
        finetune_vision_layers: vision,
        learning_rate: 4e-3,
        weight_decay: 0.0,
        lr_scheduler: Schedule::Cosine,
        warmup_steps: 5,
        max_steps: opts.steps,
        micro_batch_size: 8,
        grad_accum_steps: 1,
        max_len: 128,
        gradient_checkpointing: true,
        seed: 7,
        eval_every: 20,
        // The demo's own directory: a second demo run replaces the first one's results.
        overwrite_output_dir: true,
        ..TrainConfig::default()
    }
}

fn one_run(
    opts: &DemoOptions,
    label: &str,
    dir: &str,
    vision: bool,
    items: &[Item],
    device: &Device,
) -> Result<Accuracy> {
    let out = opts.out.join(dir);
    let mut trainer = Trainer::new(config(opts, &out, vision), device)?;
    let (tr, ev) = trainer.sizes();
    println!(
        "\n== {label}: LoRA r 16 on {} ({} trainable values), {tr} training rows, {ev} held out, {} steps",
        if vision { "vision + language towers" } else { "language tower only" },
        trainer.trainable_values(),
        trainer.total_steps()
    );
    let (before, ex_before) = caption_accuracy(&trainer, items)?;
    println!(
        "   before: held-out captions exact {:.0}%, colour {:.0}%, shape {:.0}%   e.g. {ex_before}",
        100.0 * before.exact,
        100.0 * before.colour,
        100.0 * before.shape
    );
    let s = trainer.run(true)?;
    let (after, ex_after) = caption_accuracy(&trainer, items)?;
    println!(
        "   training loss {:.3} -> {:.3}; held-out loss {:.3} -> {:.3}; {:.0} s",
        s.first_loss,
        s.last_loss,
        s.eval_before.unwrap_or(f64::NAN),
        s.eval_after.unwrap_or(f64::NAN),
        s.seconds
    );
    println!(
        "   after:  held-out captions exact {:.0}%, colour {:.0}%, shape {:.0}%   e.g. {ex_after}",
        100.0 * after.exact,
        100.0 * after.colour,
        100.0 * after.shape
    );
    println!(
        "   adapter: {}   metrics: {}   plot: {}",
        s.output.display(),
        out.join("metrics.jsonl").display(),
        out.join("loss.png").display()
    );
    Ok(after)
}

/// Runs the demo and prints its report.
pub fn run(device: &Device, opts: &DemoOptions) -> Result<()> {
    println!("lapidary demo on {device}: captioning coloured shapes with the bundled tiny Gemma 3 model");
    let data = opts.out.join("data");
    write_dataset(&data, "train", opts.train_rows, 1)?;
    let items = write_dataset(&data, "eval", opts.eval_rows, 2)?;
    println!("dataset: {} training and {} held-out images in {}", opts.train_rows, opts.eval_rows, data.display());
    let full = one_run(opts, "vision + language", "vision-language", true, &items, device)?;
    if opts.compare {
        let lang = one_run(opts, "language only", "language-only", false, &items, device)?;
        println!(
            "\nWhat the vision adapters add: held-out shape accuracy {:.0}% with them, {:.0}% without; exact captions {:.0}% vs {:.0}%",
            100.0 * full.shape,
            100.0 * lang.shape,
            100.0 * full.exact,
            100.0 * lang.exact
        );
    }
    Ok(())
}
