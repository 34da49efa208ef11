//! lapidary-model: the model abstraction. Everything above a layer that the trainer and the
//! commands (`train`, `eval`, `generate`, `merge`, `export-gguf`, `bench-step`, the demo) need
//! from a model goes through two traits, so that a new family is a new crate and one line in the
//! registry (lapidary-registry), never an edit of the trainer or a command:
//!
//! - [`Family`], one static value per family: does a `config.json` (or a GGUF architecture) name
//!   this family, open a checkpoint of it, its processor (tokenizer, chat template, images), its HF
//!   config, companion files and GGUF layout for llama.cpp ([`GgufExport`]).
//! - [`Model`], an opened model as a trait object: its tape, its linears (for adapters), the
//!   [`Part`] each parameter belongs to and its PEFT names ([`Naming`], through lapidary-nn's
//!   [`AdapterHost`], which LoRA attaches through), how collated rows become
//!   its [`Batch`], forward, loss and generation, and the keys its parameters have in checkpoints.
//!
//! The pieces every family shares live here once: [`Batch`] (HF's processor fields, the batch-file
//! format, and the one rule for which positions the loss counts, [`Batch::is_loss_target`]),
//! [`OpenOptions`], [`ForwardOptions`] (checkpointing as [`Checkpointing`], not a flag), token
//! choice for generation ([`generate`]), and the companion files written beside weights
//! ([`write_companions`]). Why traits and not an enum over families: a family crate then needs
//! nothing from the others, and the trainer compiles without knowing which families exist.
//!
//! ```
//! use lapidary_model::{Batch, Part};
//!
//! // <bos> a b c | <bos> d (two sequences packed in one row) and a padded position.
//! let mut batch = Batch::prompt(&[2, 10, 11, 12, 2, 13, 0], 262_144, None);
//! batch.labels = Some(vec![-100, 10, 11, 12, -100, 13, 0]);
//! batch.position_ids = Some(vec![0, 1, 2, 3, 0, 1, 2]);
//! batch.attention_mask[6] = 0;
//! // Targets: 10, 11, 12 of the first sequence and 13 of the second; not the padding.
//! assert_eq!(batch.label_count(), 4);
//! assert_eq!(batch.next_token_labels().unwrap(), vec![10, 11, 12, -100, 13, -100, -100]);
//! assert!(Part::Language.reached_without_images() && Part::Projector.is_vision_side());
//! ```
//!
//! Adding a family, step by step: `FAMILIES.md` beside this crate's manifest.
//!
//! Building: this crate depends on CubeCL's CPU runtime through lapidary-core, which links a
//! local LLVM 22: once per machine, from a checkout of the repository, `cargo xtask setup --user`.

mod batch;
mod companions;
pub mod config_json;
mod family;
pub mod generate;
mod gguf_export;
pub mod kv_cache;
mod model;
mod options;

pub use batch::{Batch, vision_token_types};
pub use companions::{torch_dtype_name, untouched_tensors, write_companions};
pub use family::Family;
pub use generate::{GenerateOptions, Sampling, argmax};
pub use gguf_export::{ExtraTensor, GgufExport, GgufTensor, GgufTokenizer, converter_storage_type};
pub use kv_cache::{KvCache, LayerCache};
pub use model::{LayerParams, Model};
pub use options::{ForwardOptions, OpenOptions, Output, Parts};

// The types this crate's signatures use, so that it can be used on its own.
pub use lapidary_autograd::{Tape, Trainable, Var};
pub use lapidary_core::{DType, Device, Error, Result, Tensor};
pub use lapidary_data::{Collated, Processor};
pub use lapidary_nn::{AdapterHost, Checkpointing, Linear, Naming, Part};
