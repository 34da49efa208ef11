//! Cross-crate integration tests of the root package, in one test binary (each links LLVM).
//! `check_grad` is what `cargo xtask check-grad` runs and prints.

mod bench_step;
mod check_grad;
mod demo;
mod export_gguf;
mod gguf;
mod hf_fixtures;
mod hf_parity;
mod packing;
mod processor;
mod qlora;
mod training;

/// A path inside this repository: under `LAPIDARY_REPO_DIR` when set (the test binary run away
/// from its checkout, as the GPU bundle does), else under the checkout it was built in.
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    let root = std::env::var_os("LAPIDARY_REPO_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if rel.is_empty() { root } else { root.join(rel) }
}
