//! The `lapidary` command-line tool: `demo` (the main job) and `eval` (logits, loss and
//! gradients of one batch). Subcommands grow with the project.

use clap::{Parser, Subcommand};
use lapidary::core::Device;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "lapidary", version, about = "Fine-tune Gemma 3 vision-language models")]
struct Cli {
    /// Device to run on: cpu, cuda or cuda:N (default: LAPIDARY_DEVICE, else a GPU when this
    /// build has CUDA and the machine one, else cpu).
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: runs the kernels on the chosen device and checks them against their
    /// host references.
    Demo,
    /// Logits, loss and every parameter's gradient of one batch, written to a safetensors file.
    Eval {
        /// HF model directory (config.json + model.safetensors or a sharded index; either layout).
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = (|| {
        let device = match &cli.device {
            Some(spec) => Device::parse(spec)?,
            None => Device::from_env()?,
        };
        match cli.command {
            Command::Demo => lapidary::demo::run(&device),
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
