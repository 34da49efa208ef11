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

/// A test input fetched by a script rather than committed (`fetched_by`, e.g.
/// `tools/gguf/fetch.sh`): the path when present; absent, the caller skips with a message,
/// except under `CI=true`, where a missing input fails the test so CI cannot pass without it.
pub(crate) fn fetched_input(path: std::path::PathBuf, fetched_by: &str) -> Option<std::path::PathBuf> {
    if path.is_file() {
        Some(path)
    } else if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{} is absent and CI=true: CI must run the checks that need it ({fetched_by})", path.display());
    } else {
        eprintln!("skipped: {} is absent (run {fetched_by})", path.display());
        None
    }
}
