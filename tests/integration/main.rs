//! Cross-crate integration tests of the root package, in one test binary (each links LLVM).
//! `check_grad` is what `cargo xtask check-grad` runs and prints.

mod bench_step;
mod check_grad;
mod check_grad_gemma4;
mod demo;
mod export_gguf;
mod gguf;
mod hf_fixtures;
mod hf_parity;
mod packing;
mod param_names;
mod processor;
mod processor_gemma4;
mod qlora;
mod tensorboard;
mod training;

pub use lapidary::repo_path;

/// A pass with `pixels` in place of the batch's images, each layer checkpointed when
/// `checkpointing`.
pub fn forward_options(
    pixels: Option<&lapidary::autograd::Var>,
    checkpointing: bool,
) -> lapidary::model::ForwardOptions<'_> {
    lapidary::model::ForwardOptions {
        pixels,
        checkpointing: lapidary::model::Checkpointing::each_layer_if(checkpointing),
        ..Default::default()
    }
}
