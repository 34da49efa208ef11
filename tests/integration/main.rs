//! Cross-crate integration tests of the root package, in one test binary (each links LLVM).
//! `check_grad` is what `cargo xtask check-grad` runs and prints.

mod check_grad;
mod gguf;
mod hf_fixtures;
mod hf_parity;
mod processor;
mod qlora;
mod training;
