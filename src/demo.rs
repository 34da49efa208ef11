//! The main job the README's first command runs: a vision fine-tune on the CPU. The bundled base
//! (assets/tiny-vlm-pretrained, made by tools/reference/make_demo_base.py) was pretrained to name
//! the colour of a shape ("A red shape."); its projector carries what that needs and no more. The
//! demo draws a dataset of shapes filled with patterns (PNG files + JSONL, through the same
//! pipeline as a user's data) and teaches a distinction the base was never asked about, the
//! pattern: "A red shape with vertical stripes." It fine-tunes LoRA on the vision and language
//! towers, then on the language tower only, and compares held-out caption accuracy (greedy
//! decoding) and the loss curves of both runs on one plot. Not a benchmark.

use crate::core::rng::SplitMix64;
use crate::core::{Device, Error, Result};
use crate::data::template::{Content, Conversation, Message, Part};
use crate::model::{GenerateOptions, Sampling};
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
/// Pattern names, in the order `pattern_on` numbers them.
pub const PATTERNS: [&str; 4] = ["vertical stripes", "horizontal stripes", "diagonal stripes", "checks"];
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
    /// Seed of the images drawn, the adapters' initialization and the order of the rows.
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: PathBuf::from("lapidary-demo"),
            steps: 300,
            train_rows: 1000,
            eval_rows: 100,
            compare: true,
            seed: 1,
        }
    }
}

/// The random tiny model (assets/tiny-vlm, made by tools/reference/make_demo.py): the test suite's
/// model, and the source of the demo's base.
pub fn bundled_model() -> PathBuf {
    crate::repo_path("assets/tiny-vlm")
}

/// The demo's base: the tiny model pretrained to name colours (assets/tiny-vlm-pretrained).
pub fn demo_base_model() -> PathBuf {
    crate::repo_path("assets/tiny-vlm-pretrained")
}

/// Whether pixel (x, y) of a shape filled with pattern `p` is drawn in the full colour (the
/// others get a quarter of it): every pattern covers half the pixels, so the mean colour of a
/// shape does not tell its pattern.
pub fn pattern_on(p: usize, x: u32, y: u32) -> bool {
    match p {
        0 => x.is_multiple_of(2),
        1 => y.is_multiple_of(2),
        2 => (x + y) % 4 < 2,
        _ => (x + y).is_multiple_of(2),
    }
}

/// A 32x32 image: a dark random background, a circle or a square (random size and place) of
/// `colour` filled with pattern `p`, noise of -8..7 on every channel.
fn draw(colour: [u8; 3], p: usize, rng: &mut SplitMix64) -> image::RgbImage {
    let n = 32u32;
    let bg = [rng.next_u64() % 60, rng.next_u64() % 60, rng.next_u64() % 60].map(|v| v as u8);
    let circle = rng.next_u64().is_multiple_of(2);
    let r = 7.0 + rng.next_f32() * 5.0;
    let cx = r + rng.next_f32() * (n as f32 - 2.0 * r);
    let cy = r + rng.next_f32() * (n as f32 - 2.0 * r);
    image::RgbImage::from_fn(n, n, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let inside = if circle { dx * dx + dy * dy <= r * r } else { dx.abs() <= r * 0.8 && dy.abs() <= r * 0.8 };
        let base = match (inside, pattern_on(p, x, y)) {
            (true, true) => colour,
            (true, false) => colour.map(|c| c / 4),
            (false, _) => bg,
        };
        let noise = (rng.next_u64() % 16) as i32 - 8;
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
    /// Pattern words.
    pub pattern: &'static str,
    /// The prompt asked.
    pub prompt: &'static str,
}

impl Item {
    /// The caption taught: `A red shape with vertical stripes.`
    pub fn caption(&self) -> String {
        format!("A {} shape with {}.", self.colour, self.pattern)
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
        let p = (rng.next_u64() % PATTERNS.len() as u64) as usize;
        let prompt = PROMPTS[(rng.next_u64() % PROMPTS.len() as u64) as usize];
        let file = images.join(format!("{name}-{i:04}.png"));
        draw(rgb, p, &mut rng)
            .save(&file)
            .map_err(|e| Error::invalid(format!("{}: cannot write: {e}", file.display())))?;
        let item = Item { image: file, colour, pattern: PATTERNS[p], prompt };
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

/// Caption accuracy of a model on held-out items (greedy decoding): exact captions, the right
/// colour word, the right pattern words.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Accuracy {
    /// Exact caption matches.
    pub exact: f64,
    /// The colour word right.
    pub colour: f64,
    /// The pattern words right.
    pub pattern: f64,
}

impl std::fmt::Display for Accuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exact {:.0}%, colour {:.0}%, pattern {:.0}%",
            100.0 * self.exact,
            100.0 * self.colour,
            100.0 * self.pattern
        )
    }
}

/// The colour word and the pattern words of a caption `A <colour> shape with <pattern>.`
/// (`None` for a part the text does not have).
pub fn caption_parts(text: &str) -> (Option<&str>, Option<&str>) {
    let text = text.trim().trim_end_matches('.');
    let colour = text.split_whitespace().nth(1);
    let pattern = text.split_once(" with ").map(|(_, p)| p.trim());
    (colour, pattern)
}

/// Captions every item with the trainer's model and scores them; returns the accuracy and one
/// example caption.
pub fn caption_accuracy(trainer: &Trainer, items: &[Item]) -> Result<(Accuracy, String)> {
    let p = trainer.processor();
    let opts =
        GenerateOptions { max_new_tokens: 24, sampling: Sampling::Greedy, stop: vec![p.tokenizer.end_of_turn_id] };
    let mut acc = Accuracy::default();
    let mut example = String::new();
    let bar = indicatif::ProgressBar::new(items.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "   captioning held-out images {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("a valid template"),
    );
    for (k, item) in items.iter().enumerate() {
        bar.inc(1);
        let conv = Conversation::new(vec![Message {
            role: "user".into(),
            content: Content::Parts(vec![
                Part::Image { path: item.image.display().to_string() },
                Part::Text { text: item.prompt.into() },
            ]),
        }]);
        let out = trainer.model().generate(&p.prompt(&conv, Path::new(""))?, &opts)?;
        let text = p.tokenizer.decode(&out, true)?.trim().to_string();
        if k == 0 {
            example = format!("{:?} -> {text:?}", item.caption());
        }
        let (colour, pattern) = caption_parts(&text);
        acc.exact += f64::from(text == item.caption());
        acc.colour += f64::from(colour == Some(item.colour));
        acc.pattern += f64::from(pattern == Some(item.pattern));
    }
    bar.finish_and_clear();
    let n = items.len().max(1) as f64;
    Ok((Accuracy { exact: acc.exact / n, colour: acc.colour / n, pattern: acc.pattern / n }, example))
}

fn config(opts: &DemoOptions, out: &Path, vision: bool) -> TrainConfig {
    TrainConfig {
        model: demo_base_model(),
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
        seed: opts.seed,
        eval_every: 25,
        // The demo's own directory: a second demo run replaces the first one's results.
        overwrite_output_dir: true,
        ..TrainConfig::default()
    }
}

/// What one fine-tune gave.
struct RunOutcome {
    label: &'static str,
    dir: PathBuf,
    adapter: PathBuf,
    after: Accuracy,
}

fn one_run(
    opts: &DemoOptions,
    (label, dir, vision): (&'static str, &str, bool),
    items: &[Item],
    device: &Device,
    before: &mut Option<Accuracy>,
) -> Result<RunOutcome> {
    let out = opts.out.join(dir);
    let mut trainer = Trainer::new(config(opts, &out, vision), device)?;
    let rows = trainer.rows();
    println!(
        "\n== {label}: LoRA r 16 on {} ({} trainable values), {} training rows, {} held out, {} steps",
        if vision { "the vision and language towers" } else { "the language tower only" },
        trainer.trainable_values(),
        rows.train,
        rows.held_out,
        trainer.total_steps()
    );
    if before.is_none() {
        let (acc, example) = caption_accuracy(&trainer, items)?;
        println!("   the base, before fine-tuning: held-out captions {acc}   e.g. {example}");
        *before = Some(acc);
    }
    let s = trainer.run(true)?;
    let (after, example) = caption_accuracy(&trainer, items)?;
    println!(
        "   training loss {:.3} -> {:.3}; held-out loss {:.3} -> {:.3}; {:.0} s",
        s.first_loss,
        s.last_loss,
        s.eval_before.unwrap_or(f64::NAN),
        s.eval_after.unwrap_or(f64::NAN),
        s.seconds
    );
    println!("   after: held-out captions {after}   e.g. {example}");
    Ok(RunOutcome { label, dir: out, adapter: s.output, after })
}

/// Both runs' training and held-out loss on one figure.
fn plot_runs(path: &Path, runs: &[RunOutcome]) -> Result<()> {
    let mut curves = Vec::new();
    for (run, colour) in runs.iter().zip(crate::train::plot::PALETTE) {
        let records = crate::train::metrics::read(&run.dir.join("metrics.jsonl"))?;
        for (key, what, markers) in [("loss", "training", false), ("eval_loss", "held-out", true)] {
            curves.push(crate::train::plot::Curve {
                label: format!("{}: {what}", run.label),
                points: crate::train::metrics::series(&records, key),
                colour,
                markers,
            });
        }
    }
    crate::train::plot::loss_curves(path, "Fine-tuning the pattern: loss of both runs", &curves)
}

/// Runs the demo and prints its report.
pub fn run(device: &Device, opts: &DemoOptions) -> Result<()> {
    println!(
        "lapidary demo on {device}: teaching the bundled tiny Gemma 3 base (pretrained to name colours) to name patterns"
    );
    let data = opts.out.join("data");
    write_dataset(&data, "train", opts.train_rows, opts.seed.wrapping_mul(2))?;
    let items = write_dataset(&data, "eval", opts.eval_rows, opts.seed.wrapping_mul(2) + 1)?;
    println!("dataset: {} training and {} held-out images in {}", opts.train_rows, opts.eval_rows, data.display());
    let mut before = None;
    let mut runs = vec![one_run(opts, ("vision + language", "vision-language", true), &items, device, &mut before)?];
    if opts.compare {
        runs.push(one_run(opts, ("language only", "language-only", false), &items, device, &mut before)?);
    }
    let plot = opts.out.join("loss.png");
    plot_runs(&plot, &runs)?;
    println!("\nWhere to look:");
    for r in &runs {
        println!(
            "   {}: adapter {}, metrics {}, plot {}",
            r.label,
            r.adapter.display(),
            r.dir.join("metrics.jsonl").display(),
            r.dir.join("loss.png").display()
        );
    }
    println!("   both runs' loss: {}", plot.display());
    let exe = std::env::current_exe().map_or_else(|_| "lapidary".to_string(), |p| p.display().to_string());
    println!(
        "   try it: {exe} generate --model {} --adapter {} --image {} --prompt {:?}",
        demo_base_model().display(),
        runs[0].adapter.display(),
        items[0].image.display(),
        items[0].prompt
    );
    if let [full, lang] = &runs[..] {
        println!(
            "\nWhat training the vision tower adds: held-out exact captions {:.0}% with vision + language LoRA, {:.0}% with language-only LoRA (pattern right {:.0}% vs {:.0}%; colour {:.0}% vs {:.0}%)",
            100.0 * full.after.exact,
            100.0 * lang.after.exact,
            100.0 * full.after.pattern,
            100.0 * lang.after.pattern,
            100.0 * full.after.colour,
            100.0 * lang.after.colour
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_split_into_colour_and_pattern() {
        assert_eq!(caption_parts("A red shape with vertical stripes."), (Some("red"), Some("vertical stripes")));
        assert_eq!(caption_parts(" A cyan shape with checks. "), (Some("cyan"), Some("checks")));
        assert_eq!(caption_parts("A red shape."), (Some("red"), None));
        assert_eq!(caption_parts(""), (None, None));
    }

    #[test]
    fn every_pattern_covers_half_of_any_even_square_and_no_two_agree() {
        for p in 0..PATTERNS.len() {
            let on = (0..4).flat_map(|y| (0..4).map(move |x| (x, y))).filter(|&(x, y)| pattern_on(p, x, y)).count();
            assert_eq!(on, 8, "{}", PATTERNS[p]);
            for q in 0..p {
                assert!(
                    (0..4)
                        .flat_map(|y| (0..4).map(move |x| (x, y)))
                        .any(|(x, y)| pattern_on(p, x, y) != pattern_on(q, x, y)),
                    "{} and {}",
                    PATTERNS[p],
                    PATTERNS[q]
                );
            }
        }
    }
}
