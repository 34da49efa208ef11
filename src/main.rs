//! The `lapidary` command-line tool: `demo` (the main job), `train`, `data inspect`, `generate`,
//! `merge`, `export-gguf`, `tokenize`, `eval` and `bench-step`. Each subcommand is a thin layer
//! over the library; `--help` explains every option.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use lapidary::core::Device;
use lapidary::train::{BaseFormat, Method, ReportTo, Schedule, TrainConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "lapidary", version, about = "Fine-tune Gemma 3 vision-language models")]
struct Cli {
    /// Device to run on: cpu, cuda or cuda:N (default: LAPIDARY_DEVICE, else a GPU when this
    /// build has CUDA and the machine one, else cpu).
    #[arg(long, global = true)]
    device: Option<String>,
    /// On the CPU, the most threads a kernel runs on (default: LAPIDARY_THREADS, else one per
    /// logical CPU this process may use: its affinity mask and cgroup CPU quota).
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: fine-tunes the bundled tiny Gemma 3 model to caption coloured shapes, and
    /// reports held-out caption accuracy before and after (vision + language LoRA, then
    /// language-only LoRA for comparison).
    Demo {
        /// Output directory (dataset, adapters, metrics, plots).
        #[arg(long, default_value_os_t = lapidary::demo::DemoOptions::default().out)]
        out: PathBuf,
        /// Optimizer steps per run.
        #[arg(long, default_value_t = lapidary::demo::DemoOptions::default().steps)]
        steps: usize,
        /// Training images drawn.
        #[arg(long, default_value_t = lapidary::demo::DemoOptions::default().train_rows)]
        train_rows: usize,
        /// Held-out images drawn (captioned before and after each run).
        #[arg(long, default_value_t = lapidary::demo::DemoOptions::default().eval_rows)]
        eval_rows: usize,
        /// Skip the language-only comparison run.
        #[arg(long)]
        no_compare: bool,
        /// Seed of the images, the adapters' initialization and the row order.
        #[arg(long, default_value_t = lapidary::demo::DemoOptions::default().seed)]
        seed: u64,
    },
    /// Fine-tunes a model on a JSONL dataset (LoRA by default). Options come from `--config`
    /// (TOML, keys named like the flags with underscores) and are overridden by flags.
    Train(Box<TrainArgs>),
    /// Generates a reply to a prompt (optionally with images), greedy or sampled, with a KV cache.
    Generate {
        /// HF model directory or a .gguf file (text-only).
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory to apply.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Image files shown before the prompt, in order.
        #[arg(long)]
        image: Vec<PathBuf>,
        /// The user's message.
        #[arg(long)]
        prompt: String,
        /// Most tokens to generate.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Sample at this temperature (0 = greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Keep the k most likely tokens when sampling (0 = all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Keep the most likely tokens up to this cumulative probability when sampling.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Seed of the sampling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Folds a LoRA adapter into its base model and writes a 16-bit HF checkpoint.
    Merge {
        /// HF model directory or a .gguf file (text-only) of the base.
        #[arg(long)]
        model: PathBuf,
        /// PEFT LoRA adapter directory.
        #[arg(long)]
        adapter: PathBuf,
        /// Output directory (model.safetensors, config.json, tokenizer and processor files).
        #[arg(long)]
        out: PathBuf,
        /// Stored dtype.
        #[arg(long, value_enum, default_value_t = MergedDtype::Bf16)]
        dtype: MergedDtype,
        /// Replace `--out` when it exists and is not empty.
        #[arg(long)]
        overwrite: bool,
    },
    /// Writes the model, with a LoRA adapter folded in, as GGUF files for llama.cpp, Ollama and
    /// LM Studio: `<name>-<type>.gguf` (the text model with its tokenizer) and, for a vision
    /// model, `mmproj-<name>-<type>.gguf` (the vision tower and projector).
    ExportGguf {
        /// HF model directory or a .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// PEFT LoRA adapter directory to fold in.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Storage of the matrices (norms and vectors stay f32).
        #[arg(long = "type", value_enum, default_value_t = lapidary::export::OutType::F16)]
        out_type: lapidary::export::OutType,
        /// Replace files of the same names in `--out`.
        #[arg(long)]
        overwrite: bool,
    },
    /// Prints the token ids of FILE's text as one JSON array (BOS included when the tokenizer adds
    /// it by default).
    Tokenize {
        /// HF model directory (tokenizer.json) or a .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// The text file.
        file: PathBuf,
    },
    /// Logits, loss and every parameter's gradient of one batch, written to a safetensors file.
    Eval {
        /// HF model directory (config.json + model.safetensors or a sharded index; either layout) or
        /// a .gguf file (text-only).
        #[arg(long)]
        model: PathBuf,
        /// Batch file: input_ids, attention_mask, token_type_ids, labels (int64 [B, T]) and,
        /// with images, pixel_values (f32 [N, 3, H, W], images in row order).
        #[arg(long)]
        batch: PathBuf,
        /// Output file: logits (f32 [B, T, V]), loss (f32 [1]), grad.<checkpoint key> for every
        /// parameter.
        #[arg(long)]
        out: PathBuf,
        /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors): the
        /// base is frozen and the gradients are those of the adapter's tensors.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Logits and loss only (no gradients).
        #[arg(long)]
        no_grad: bool,
    },
    /// Looks at a dataset before training on it.
    #[command(subcommand)]
    Data(DataCommand),
    /// Times LoRA training steps (every linear adapted, AdamW) on one batch file and prints one
    /// JSON line: median step time, tokens/s, device memory. What `tools/gpu/run.sh` compares with
    /// HF transformers + PEFT.
    BenchStep {
        /// HF model directory or a .gguf file (text-only).
        #[arg(long)]
        model: PathBuf,
        /// Batch file, as `eval` reads it (with labels).
        #[arg(long)]
        batch: PathBuf,
        /// Steps timed.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Steps run before timing (kernel compilation).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// LoRA rank (alpha equal to it).
        #[arg(long, default_value_t = 16)]
        lora_r: usize,
        /// Frozen base storage.
        #[arg(long, value_enum, default_value_t = TrainConfig::default().base_format)]
        base_format: BaseFormat,
        /// Turn gradient checkpointing off.
        #[arg(long)]
        no_checkpointing: bool,
        /// After the timed steps, one more with every kernel timed on its own: a table of time
        /// and launches per kernel and the host time between launches.
        #[arg(long)]
        profile: bool,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// The dataset as training would see it: rows, tokens, image tokens, tokens trained on, the
    /// length histogram, padding against packing, the rows that would be skipped or cut and
    /// why, and one row with its trained tokens marked. Reads every row; writes nothing.
    Inspect(Box<InspectArgs>),
}

#[derive(Args)]
struct InspectArgs {
    /// A training TOML (`lapidary train --config`): its model, data and row settings, which the
    /// flags below override.
    #[arg(long)]
    config: Option<PathBuf>,
    /// HF model directory or a .gguf file (text-only): its tokenizer, chat format and image
    /// processing.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The dataset, as `train --data` takes it.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Longest row in tokens.
    #[arg(long)]
    max_len: Option<usize>,
    /// Whether training packs rows (both costs are shown either way).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    packing: Option<bool>,
    /// Train on assistant turns only.
    #[arg(long)]
    responses_only: Option<bool>,
    /// Rows per micro-batch.
    #[arg(long)]
    micro_batch_size: Option<usize>,
    /// Seed of the row order.
    #[arg(long)]
    seed: Option<u64>,
}

/// The options of a `--config` TOML file, else the defaults: what flags then override.
fn config_file(path: Option<&std::path::Path>) -> lapidary::core::Result<TrainConfig> {
    match path {
        Some(path) => TrainConfig::from_toml_file(path),
        None => Ok(TrainConfig::default()),
    }
}

impl InspectArgs {
    fn config(&self) -> lapidary::core::Result<TrainConfig> {
        let mut c = config_file(self.config.as_deref())?;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(model, data, max_len, packing, responses_only, micro_batch_size, seed);
        for (flag, path) in [("--model", &c.model), ("--data", &c.data)] {
            if path.as_os_str().is_empty() {
                return Err(lapidary::core::Error::invalid(format!("{flag} is required (or a --config that sets it)")));
            }
        }
        Ok(c)
    }
}

/// The stored dtype of a merged model.
#[derive(Clone, Copy, clap::ValueEnum)]
enum MergedDtype {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
    /// f32.
    F32,
}

#[derive(Args)]
struct TrainArgs {
    /// TOML file with any of the options below (flags given here win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// HF model directory (config.json, weights, tokenizer.json, processor config) or a .gguf
    /// file (text-only: its tokenizer is in the file).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data: JSONL (one {"messages": [...]} conversation a line, image paths relative
    /// to the file), or parquet as HF `datasets` writes it (a file, a folder of shards, or a
    /// pattern such as data/train-*.parquet; `messages` or `prompt`/`completion` columns, images
    /// in an `images` or `image` column).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Held-out data, in the forms --data takes (default: hold out --eval-fraction of --data).
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Share of --data held out when --eval-data is not given.
    #[arg(long)]
    eval_fraction: Option<f32>,
    /// Output directory: checkpoints, final adapter, metrics.jsonl, loss.png.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Full fine-tuning or LoRA.
    #[arg(long)]
    method: Option<Method>,
    /// LoRA rank.
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA alpha; the scale is alpha / r.
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// rsLoRA scaling, alpha / sqrt(r).
    #[arg(long)]
    use_rslora: Option<bool>,
    /// Dropout on the adapters' input, as PEFT's lora_dropout.
    #[arg(long)]
    lora_dropout: Option<f32>,
    /// LoRA on the vision tower.
    #[arg(long)]
    finetune_vision_layers: Option<bool>,
    /// LoRA on the language model.
    #[arg(long)]
    finetune_language_layers: Option<bool>,
    /// LoRA on attention projections.
    #[arg(long)]
    finetune_attention_modules: Option<bool>,
    /// LoRA on MLP projections.
    #[arg(long)]
    finetune_mlp_modules: Option<bool>,
    /// Explicit module names, comma-separated (q_proj,fc1,... or all-linear); overrides the
    /// finetune_* switches.
    #[arg(long, value_delimiter = ',')]
    target_modules: Option<Vec<String>>,
    /// Also train the multimodal projector's weights.
    #[arg(long)]
    train_projector: Option<bool>,
    /// Frozen base storage with LoRA: nf4 is QLoRA, nf4-dq with double-quantized scales.
    #[arg(long)]
    base_format: Option<BaseFormat>,
    /// Peak learning rate.
    #[arg(long)]
    learning_rate: Option<f32>,
    /// AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f32>,
    /// AdamW's first-moment decay (beta1).
    #[arg(long)]
    adam_beta1: Option<f32>,
    /// AdamW's second-moment decay (beta2).
    #[arg(long)]
    adam_beta2: Option<f32>,
    /// AdamW's epsilon, added to the second moment's square root.
    #[arg(long)]
    adam_epsilon: Option<f32>,
    /// Learning-rate schedule after warmup.
    #[arg(long)]
    lr_scheduler: Option<Schedule>,
    /// Warmup steps.
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Optimizer steps (0: --num-epochs passes).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Passes over the data when --max-steps is 0.
    #[arg(long)]
    num_epochs: Option<usize>,
    /// Rows per forward pass.
    #[arg(long)]
    micro_batch_size: Option<usize>,
    /// Micro-batches per optimizer step; the loss is normalized by their total label count.
    #[arg(long)]
    grad_accum_steps: Option<usize>,
    /// Clip the global gradient norm (0 = off).
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// Longest row in tokens; a row whose image block would be cut is an error (or skipped).
    #[arg(long)]
    max_len: Option<usize>,
    /// Pack several conversations with their images into each row of up to --max-len tokens
    /// (first-fit decreasing; none is split); each attends only to itself and its positions
    /// restart at 0.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    packing: Option<bool>,
    /// Train on assistant turns only.
    #[arg(long)]
    responses_only: Option<bool>,
    /// Skip and report unusable rows instead of stopping.
    #[arg(long)]
    skip_bad_rows: Option<bool>,
    /// Gradient checkpointing.
    #[arg(long)]
    gradient_checkpointing: Option<bool>,
    /// Seed of initialization, shuffling and the held-out split.
    #[arg(long)]
    seed: Option<u64>,
    /// Metrics every N steps; the steps between read nothing back from the device (their
    /// figures and checks are read at once on the logged step).
    #[arg(long)]
    log_every: Option<usize>,
    /// Held-out loss every N steps (0: at the end).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Checkpoint every N steps (0: at the end).
    #[arg(long)]
    save_every: Option<usize>,
    /// Start afresh in an output directory holding an earlier run: its checkpoints, final
    /// weights and metrics are removed.
    #[arg(long)]
    overwrite_output_dir: Option<bool>,
    /// Continue from a checkpoint directory; without a value (or `latest`), from the newest one
    /// in the output directory.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    resume: Option<PathBuf>,
    /// Also write the logged figures as TensorBoard event files under <output-dir>/runs
    /// (`tensorboard`), or not (`none`).
    #[arg(long)]
    report_to: Option<ReportTo>,
}

impl TrainArgs {
    fn config(&self) -> lapidary::core::Result<TrainConfig> {
        let mut c = config_file(self.config.as_deref())?;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(
            model,
            data,
            eval_fraction,
            output_dir,
            lora_r,
            lora_alpha,
            use_rslora,
            lora_dropout,
            finetune_vision_layers
        );
        set!(finetune_language_layers, finetune_attention_modules, finetune_mlp_modules, train_projector);
        set!(learning_rate, weight_decay, warmup_steps, max_steps, num_epochs, micro_batch_size, grad_accum_steps);
        set!(max_grad_norm, max_len, responses_only, skip_bad_rows, gradient_checkpointing, seed, eval_every);
        set!(save_every, log_every, overwrite_output_dir, packing, method, base_format, lr_scheduler);
        set!(adam_beta1, adam_beta2, adam_epsilon, report_to);
        if self.eval_data.is_some() {
            c.eval_data = self.eval_data.clone();
        }
        if self.target_modules.is_some() {
            c.target_modules = self.target_modules.clone();
        }
        Ok(c)
    }
}

/// The command line, with each `train` option's help ending in its default as
/// [`TrainConfig::default`] has it: the defaults are written there only.
fn command() -> clap::Command {
    let defaults = TrainConfig::default().fields();
    Cli::command().mut_subcommand("train", |mut train| {
        for (key, value) in &defaults {
            let shown = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) if s.is_empty() => continue,
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if train.get_arguments().any(|a| a.get_id() == key.as_str()) {
                train = train.mut_arg(key.as_str(), |a| {
                    let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                    a.help(format!("{help} [default {shown}]"))
                });
            }
        }
        train
    })
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = (|| {
        // The kernel settings, decided once for the whole run (a malformed variable is an error).
        let mut settings = lapidary::core::Settings::from_env()?;
        if let Some(threads) = cli.threads {
            settings.cpu_threads = Some(threads as usize);
        }
        lapidary::core::set_settings(settings);
        let device = match &cli.device {
            Some(spec) => Device::parse(spec)?,
            None => Device::from_env()?,
        };
        match cli.command {
            Command::Demo { out, steps, train_rows, eval_rows, no_compare, seed } => {
                let opts =
                    lapidary::demo::DemoOptions { out, steps, train_rows, eval_rows, compare: !no_compare, seed };
                lapidary::demo::run(&device, &opts)
            }
            Command::Train(args) => lapidary::cli::train(args.config()?, args.resume.clone(), &device),
            Command::Generate { model, adapter, image, prompt, max_new_tokens, temperature, top_k, top_p, seed } => {
                let sampling = if temperature > 0.0 {
                    lapidary::model::Sampling::Sample { temperature, top_k, top_p, seed }
                } else {
                    lapidary::model::Sampling::Greedy
                };
                let text = lapidary::cli::generate(
                    &model,
                    adapter.as_deref(),
                    &image,
                    &prompt,
                    max_new_tokens,
                    sampling,
                    &device,
                )?;
                println!("{text}");
                Ok(())
            }
            Command::Merge { model, adapter, out, dtype, overwrite } => {
                let dtype = match dtype {
                    MergedDtype::Bf16 => lapidary::core::DType::BF16,
                    MergedDtype::F16 => lapidary::core::DType::F16,
                    MergedDtype::F32 => lapidary::core::DType::F32,
                };
                let n = lapidary::merge::run(&model, &adapter, &out, dtype, &device, overwrite)?;
                println!("merged {n} adapted linears; wrote {}", out.display());
                Ok(())
            }
            Command::ExportGguf { model, adapter, out, out_type, overwrite } => {
                let e = lapidary::export::run(&model, adapter.as_deref(), &out, out_type, overwrite, &device)?;
                if e.merged > 0 {
                    println!("folded the adapter into {} linears", e.merged);
                }
                println!("wrote {}", e.text.display());
                if let Some(m) = &e.mmproj {
                    println!("wrote {}", m.display());
                }
                Ok(())
            }
            Command::Tokenize { model, file } => {
                let text = std::fs::read_to_string(&file).map_err(|e| lapidary::core::Error::io(&file, e))?;
                let ids = lapidary::cli::tokenize(&model, &text)?;
                let list: Vec<String> = ids.iter().map(u32::to_string).collect();
                println!("[{}]", list.join(", "));
                Ok(())
            }
            Command::BenchStep { model, batch, steps, warmup, lora_r, base_format, no_checkpointing, profile } => {
                let base = base_format.packing();
                let opts = lapidary::bench_step::BenchStepOptions {
                    steps,
                    warmup,
                    lora_r,
                    base,
                    checkpointing: lapidary::model::Checkpointing::each_layer_if(!no_checkpointing),
                    profile,
                };
                let report = lapidary::bench_step::run(&model, &batch, &opts, &device)?;
                println!("{}", report.to_json(&device));
                Ok(())
            }
            Command::Data(DataCommand::Inspect(args)) => {
                let cfg = args.config()?;
                print!("{}", lapidary::inspect::run(&cfg.model, &cfg.data, &cfg)?);
                Ok(())
            }
            Command::Eval { model, batch, out, adapter, no_grad } => {
                let loss = lapidary::eval::run(&model, &batch, &out, adapter.as_deref(), &device, no_grad)?;
                println!("loss {loss:.6}; wrote {}", out.display());
                Ok(())
            }
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train_config(args: &[&str]) -> TrainConfig {
        let matches = command().try_get_matches_from([&["lapidary", "train"], args].concat()).unwrap();
        match Cli::from_arg_matches(&matches).unwrap().command {
            Command::Train(t) => t.config().unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn train_help_shows_the_configuration_defaults() {
        let mut cmd = command();
        cmd.build();
        let train = cmd.find_subcommand("train").unwrap();
        let help = |id: &str| train.get_arguments().find(|a| a.get_id() == id).unwrap().get_help().unwrap().to_string();
        let d = TrainConfig::default();
        assert!(help("lora_r").ends_with(&format!("[default {}]", d.lora_r)), "{}", help("lora_r"));
        assert!(help("learning_rate").ends_with("[default 0.0002]"), "{}", help("learning_rate"));
        assert!(help("method").ends_with("[default lora]"), "{}", help("method"));
        assert!(help("base_format").ends_with("[default bf16]"), "{}", help("base_format"));
        assert!(help("output_dir").ends_with("[default lapidary-out]"), "{}", help("output_dir"));
        // No default to show for options without one.
        assert!(!help("eval_data").contains("[default"), "{}", help("eval_data"));
    }

    #[test]
    fn enum_flags_parse_into_the_configuration_and_bad_values_are_refused() {
        let c =
            train_config(&["--method", "full", "--base-format", "nf4-dq", "--lr-scheduler", "cosine", "--lora-r", "8"]);
        assert_eq!(
            (c.method, c.base_format, c.lr_scheduler, c.lora_r),
            (Method::Full, BaseFormat::Nf4Dq, Schedule::Cosine, 8)
        );
        let d = train_config(&[]);
        assert_eq!(d, TrainConfig::default());
        let e =
            command().try_get_matches_from(["lapidary", "train", "--lr-scheduler", "step"]).unwrap_err().to_string();
        assert!(e.contains("step") && e.contains("cosine"), "{e}");
    }

    #[test]
    fn every_configuration_option_is_a_flag_that_sets_it() {
        let mut cmd = command();
        cmd.build();
        let train = cmd.find_subcommand("train").unwrap();
        let mut keys: Vec<String> = TrainConfig::default().fields().keys().cloned().collect();
        // Fields left out of the serialized form while unset.
        keys.extend(["eval_data", "target_modules"].map(String::from));
        assert!(keys.len() >= 39, "{keys:?}");
        for key in &keys {
            assert!(
                train.get_arguments().any(|a| a.get_id() == key.as_str()),
                "--{} is missing",
                key.replace('_', "-")
            );
        }
        let c = train_config(&["--adam-beta1", "0.8", "--adam-beta2", "0.95", "--adam-epsilon", "1e-6"]);
        assert_eq!((c.adam_beta1, c.adam_beta2, c.adam_epsilon), (0.8, 0.95, 1e-6));
    }

    #[test]
    fn every_command_taking_a_model_says_it_takes_a_gguf_file() {
        let mut cmd = command();
        cmd.build();
        let mut seen = 0;
        for sub in cmd.get_subcommands() {
            let Some(model) = sub.get_arguments().find(|a| a.get_id() == "model") else { continue };
            let help = model.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains(".gguf"), "{}: --model's help does not mention .gguf: {help}", sub.get_name());
            seen += 1;
        }
        assert_eq!(seen, 7, "train, generate, merge, export-gguf, tokenize, eval and bench-step take --model");
    }
}
