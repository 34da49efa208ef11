//! The `lapidary` command-line tool. Subcommands grow with the project: `demo` for now.

use clap::{Parser, Subcommand};
use lapidary::core::Device;
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
