//! The training loop, split by job: [`Trainer`] and what it holds (this file: loading the model,
//! the data and the adapters), `data` (the held-out split, the row order, micro-batches),
//! `step` (one optimizer step over micro-batches, read back lazily), `evaluate` (held-out
//! loss), `save` (adapters, weights, checkpoints and exact resume) and `run` (the loop with its
//! progress bar, metrics and plot). The model is any family's (`lapidary_model::Model`), opened
//! through the registry. Not data encoding (lapidary-data) nor generation.

mod data;
mod evaluate;
mod run;
mod save;
mod step;

use crate::checkpoint::TrainState;
use crate::config::{Method, TrainConfig};
use crate::optimizer::{AdamW, AdamWConfig};
use lapidary_autograd::{Tape, Trainable};
use lapidary_core::rng::SplitMix64;
use lapidary_core::{Device, Error, Result, Tensor};
use lapidary_data::{Example, Processor};
use lapidary_lora::{LoraConfig, LoraDropout, LoraInit, LoraTargets};
use lapidary_model::{Model, OpenOptions, Parts};

pub use data::epoch_order;
pub use run::RunSummary;
pub use step::{Gradients, StepStats};

/// A training run.
pub struct Trainer {
    cfg: TrainConfig,
    processor: Processor,
    model: Box<dyn Model>,
    device: Device,
    opt: AdamW,
    train: Vec<Example>,
    /// What a training row holds: one example, or (packing) the examples packed into it.
    units: Vec<Vec<usize>>,
    eval: Vec<Example>,
    skipped: String,
    adapted_modules: Vec<String>,
    dropout: Option<std::rc::Rc<LoraDropout>>,
    total_steps: usize,
    /// Steps done on the device whose figures are not read yet.
    unread: Vec<step::UnreadStep>,
    /// The error of a step found not finite: the trainer refuses to go on after it.
    failed: Option<String>,
    /// Where the run stands.
    pub state: TrainState,
}

/// How many rows a run trains on and holds out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowCounts {
    /// Training rows (examples, before packing).
    pub train: usize,
    /// Held-out rows.
    pub held_out: usize,
}

/// How the method opens the model: full fine-tuning trains every part; LoRA freezes the base
/// and packs its linears as they are read (bf16 by default, NF4 for QLoRA: their f32 copies
/// never reach the device), the projector trained when asked.
fn open_options(cfg: &TrainConfig) -> OpenOptions {
    match cfg.method {
        Method::Full => OpenOptions::all(Trainable::Yes),
        Method::Lora => {
            let projector = if cfg.train_projector { Trainable::Yes } else { Trainable::No };
            OpenOptions {
                parts: Parts { vision: Trainable::No, projector, text: Trainable::No },
                packing: cfg.base_format.packing(),
                ..OpenOptions::default()
            }
        }
    }
}

/// The LoRA adapters the configuration asks for: `target_modules` (or `all-linear`) when given,
/// else the towers and module kinds chosen by the `finetune_*` switches.
fn lora_config(cfg: &TrainConfig) -> LoraConfig {
    let targets = match &cfg.target_modules {
        Some(m) if m.len() == 1 && m[0] == "all-linear" => LoraTargets::AllLinear,
        Some(m) => LoraTargets::Modules(m.clone()),
        None => LoraTargets::Layers {
            vision: cfg.finetune_vision_layers,
            language: cfg.finetune_language_layers,
            attention: cfg.finetune_attention_modules,
            mlp: cfg.finetune_mlp_modules,
        },
    };
    LoraConfig {
        r: cfg.lora_r,
        lora_alpha: cfg.lora_alpha,
        use_rslora: cfg.use_rslora,
        targets,
        init: LoraInit::Default,
        dropout: (cfg.lora_dropout > 0.0).then(|| LoraDropout::new(cfg.lora_dropout)),
    }
}

impl Trainer {
    /// Loads everything the configuration names.
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let processor = lapidary_registry::processor(&cfg.model)?;
        let (train, eval, skipped) = data::load_data(&cfg, &processor)?;
        let mut model = lapidary_registry::open(&cfg.model, device, &open_options(&cfg))?;
        let (mut adapted_modules, mut dropout) = (Vec::new(), None);
        if cfg.method == Method::Lora {
            let lora = lora_config(&cfg);
            dropout = lora.dropout.clone();
            let mut rng = SplitMix64::new(cfg.seed);
            let paths = lapidary_lora::attach_lora_to(&lora, model.as_mut(), device, &mut rng)?;
            adapted_modules = lapidary_lora::peft_target_modules(&paths, model.naming().peft_path);
        }
        let params = model.tape().trainable_params();
        if params.is_empty() {
            return Err(Error::invalid("train: nothing is trainable with this configuration"));
        }
        let opt = AdamW::new(
            params,
            AdamWConfig {
                beta1: cfg.adam_beta1,
                beta2: cfg.adam_beta2,
                eps: cfg.adam_epsilon,
                weight_decay: cfg.weight_decay,
            },
        )?;
        let units = if cfg.packing {
            let lengths: Vec<usize> = train.iter().map(|e| e.input_ids.len()).collect();
            lapidary_data::pack::first_fit_decreasing(&lengths, cfg.max_len)
        } else {
            (0..train.len()).map(|i| vec![i]).collect()
        };
        let per_step = cfg.micro_batch_size * cfg.grad_accum_steps;
        let total_steps = if cfg.max_steps > 0 {
            cfg.max_steps
        } else {
            units.len().saturating_mul(cfg.num_epochs).div_ceil(per_step).max(1)
        };
        Ok(Trainer {
            cfg,
            processor,
            model,
            device: device.clone(),
            opt,
            train,
            units,
            eval,
            skipped,
            adapted_modules,
            dropout,
            total_steps,
            unread: Vec::new(),
            failed: None,
            state: TrainState::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The processor (tokenizer and image settings).
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// The model being trained.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tape the model's parameters live on.
    pub fn tape(&self) -> &Tape {
        self.model.tape()
    }

    /// Rows used for training and held out.
    pub fn rows(&self) -> RowCounts {
        RowCounts { train: self.train.len(), held_out: self.eval.len() }
    }

    /// Report of the rows skipped, and of those cut to `max_len`, when loading (empty when
    /// none).
    pub fn skipped_report(&self) -> &str {
        &self.skipped
    }

    /// Steps the run will take.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Number of trainable values.
    pub fn trainable_values(&self) -> usize {
        self.opt.params().iter().map(|(_, v)| v.value().numel()).sum()
    }

    /// Training rows per epoch: examples, or packed rows with packing.
    pub fn rows_per_epoch(&self) -> usize {
        self.units.len()
    }

    /// Names of the trainable tensors, in optimizer order.
    pub fn trainable_names(&self) -> Vec<String> {
        self.opt.params().iter().map(|(n, _)| n.clone()).collect()
    }

    /// The training rows (after the held-out split).
    pub fn train_examples(&self) -> &[Example] {
        &self.train
    }

    fn trainable_tensors(&self) -> Vec<(String, Tensor)> {
        self.opt.params().iter().map(|(n, v)| (n.clone(), v.value().clone())).collect()
    }
}
