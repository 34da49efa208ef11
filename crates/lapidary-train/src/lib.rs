//! lapidary-train: the training loop for vision-language models of any family lapidary-registry
//! knows (Gemma 3 today) — AdamW with f32 state,
//! linear/cosine schedules with warmup, gradient accumulation normalized by the total label
//! count, gradient-norm clipping, gradient checkpointing, held-out loss, atomic checkpoints with
//! exact resume, a progress bar, metrics JSONL and a loss plot. Not data encoding (lapidary-data)
//! nor the models (lapidary-model's traits, implemented by each family's crate).
//!
//! ```
//! use lapidary_train::{TrainConfig, schedule::lr_at, Schedule};
//!
//! let cfg = TrainConfig { warmup_steps: 2, lr_scheduler: Schedule::Cosine, ..Default::default() };
//! assert_eq!(lr_at(cfg.lr_scheduler, 1.0, cfg.warmup_steps, 1, 10), 0.5); // warming up
//! assert!(lr_at(cfg.lr_scheduler, 1.0, cfg.warmup_steps, 9, 10) < 0.1); // near the end
//! ```
//!
//! Building: this crate runs kernels through CubeCL's CPU runtime, which links a local LLVM 22.
//! Once per machine, from a checkout of the repository: `cargo xtask setup --user` (Debian's
//! LLVM packages and the shim CubeCL's bundler looks for); then any project builds offline. Give
//! dependencies `opt-level = 3` in the dev profile, or kernels crawl. With `--features cuda`
//! (on `lapidary-core`) kernels also run on NVIDIA GPUs.

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod optimizer;
pub mod plot;
pub mod schedule;
pub mod tensorboard;
pub mod trainer;

pub use config::{BaseFormat, Method, ReportTo, Schedule, TrainConfig};
pub use trainer::{Gradients, RowCounts, RunSummary, StepStats, Trainer, epoch_order};
