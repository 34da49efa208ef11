//! The training configuration: every option of `lapidary train`, with defaults, read from TOML
//! (unknown keys are errors) and checked. Not the command-line parsing (the CLI maps its flags
//! onto this).

use lapidary_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Full fine-tuning or LoRA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Method {
    /// Low-rank adapters on a frozen base.
    Lora,
    /// Every weight trained.
    Full,
}

/// How the frozen base's linear weights are held during LoRA training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BaseFormat {
    /// f32 (4 bytes a value).
    F32,
    /// bfloat16 (2 bytes), expanded to f32 per matmul.
    Bf16,
    /// NF4, QLoRA (4.5 bits), expanded per matmul.
    Nf4,
    /// NF4 with double-quantized scales (about 4.13 bits).
    Nf4Dq,
}

impl BaseFormat {
    /// The packed storage of the base's linears; `None` keeps them in f32.
    pub fn packing(self) -> Option<lapidary_kernels::quant::PackFormat> {
        use lapidary_kernels::quant::PackFormat;
        match self {
            BaseFormat::F32 => None,
            BaseFormat::Bf16 => Some(PackFormat::Bf16),
            BaseFormat::Nf4 => Some(PackFormat::Nf4),
            BaseFormat::Nf4Dq => Some(PackFormat::Nf4DoubleQuant),
        }
    }
}

/// Learning-rate schedule after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Schedule {
    /// Linear decay to 0 at the last step.
    Linear,
    /// Cosine decay to 0 at the last step.
    Cosine,
    /// Constant.
    Constant,
}

/// Where the run's figures go besides `metrics.jsonl` and `loss.png` (HF's `report_to`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ReportTo {
    /// Nowhere else.
    #[default]
    None,
    /// TensorBoard event files under `<output_dir>/runs/` (`tensorboard --logdir <output_dir>`).
    Tensorboard,
}

/// Everything a training run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// HF model directory (config.json, weights, tokenizer.json, processor config).
    pub model: PathBuf,
    /// Training data: a JSONL file, a parquet file, a folder of parquet shards or a pattern
    /// (`data/train-*.parquet`); see `lapidary_data::Dataset::load`.
    pub data: PathBuf,
    /// Held-out data, in the forms `data` takes; without it, `eval_fraction` of `data` is held out.
    pub eval_data: Option<PathBuf>,
    /// Share of `data` held out for evaluation when `eval_data` is not given (0 = none).
    pub eval_fraction: f32,
    /// Where checkpoints, the adapter, metrics and the loss plot go.
    pub output_dir: PathBuf,
    /// `lora` or `full`.
    pub method: Method,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA alpha (scale alpha / r).
    pub lora_alpha: f32,
    /// rsLoRA scaling (alpha / √r).
    pub use_rslora: bool,
    /// Dropout on the adapters' input (PEFT's `lora_dropout`).
    pub lora_dropout: f32,
    /// LoRA on the vision tower.
    pub finetune_vision_layers: bool,
    /// LoRA on the language model.
    pub finetune_language_layers: bool,
    /// LoRA on attention projections.
    pub finetune_attention_modules: bool,
    /// LoRA on MLP projections.
    pub finetune_mlp_modules: bool,
    /// Explicit HF module names (e.g. `["q_proj", "fc1"]`, or `["all-linear"]`); overrides the
    /// four `finetune_*` switches.
    pub target_modules: Option<Vec<String>>,
    /// Also train the multimodal projector (its full weights).
    pub train_projector: bool,
    /// Storage of the frozen base's linear weights with LoRA: `f32`, `bf16`, `nf4` (QLoRA) or
    /// `nf4-dq` (double quantization). Embeddings and norms stay f32.
    pub base_format: BaseFormat,
    /// Peak learning rate.
    pub learning_rate: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// AdamW beta1.
    pub adam_beta1: f32,
    /// AdamW beta2.
    pub adam_beta2: f32,
    /// AdamW epsilon.
    pub adam_epsilon: f32,
    /// `linear`, `cosine` or `constant` after warmup.
    pub lr_scheduler: Schedule,
    /// Steps of linear warmup from 0.
    pub warmup_steps: usize,
    /// Optimizer steps; 0 = `num_epochs` passes over the data.
    pub max_steps: usize,
    /// Passes over the data when `max_steps` is 0.
    pub num_epochs: usize,
    /// Rows per forward pass.
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step (the loss is normalized by their total label count).
    pub grad_accum_steps: usize,
    /// Clip the global gradient norm to this (0 = off).
    pub max_grad_norm: f32,
    /// Longest row in tokens.
    pub max_len: usize,
    /// Pack several conversations (with their images) into each row of up to `max_len` tokens;
    /// each keeps its own attention and positions. A micro-batch is then `micro_batch_size`
    /// packed rows.
    pub packing: bool,
    /// Train on the assistant turns only.
    pub responses_only: bool,
    /// Skip (and report) unusable rows instead of stopping.
    pub skip_bad_rows: bool,
    /// Recompute activations in backward to save memory.
    pub gradient_checkpointing: bool,
    /// Seed of initialization, shuffling and the held-out split.
    pub seed: u64,
    /// Log metrics every this many steps. The steps between read nothing back from the device:
    /// their figures (loss, gradient norm, the non-finite check) are read at once on the logged
    /// step (or an evaluation or checkpoint), so on a GPU a larger value stalls it less often.
    pub log_every: usize,
    /// Evaluate every this many steps (0 = at the end only).
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (0 = at the end only).
    pub save_every: usize,
    /// A fresh run in an output directory that holds an earlier run's checkpoints, final weights
    /// or metrics removes them; without this it is refused.
    pub overwrite_output_dir: bool,
    /// Also write the logged figures as TensorBoard event files (`tensorboard`) or not (`none`).
    pub report_to: ReportTo,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: PathBuf::new(),
            data: PathBuf::new(),
            eval_data: None,
            eval_fraction: 0.1,
            output_dir: PathBuf::from("lapidary-out"),
            method: Method::Lora,
            lora_r: 16,
            lora_alpha: 16.0,
            use_rslora: false,
            lora_dropout: 0.0,
            finetune_vision_layers: true,
            finetune_language_layers: true,
            finetune_attention_modules: true,
            finetune_mlp_modules: true,
            target_modules: None,
            train_projector: false,
            base_format: BaseFormat::Bf16,
            learning_rate: 2e-4,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            lr_scheduler: Schedule::Linear,
            warmup_steps: 5,
            max_steps: 0,
            num_epochs: 1,
            micro_batch_size: 2,
            grad_accum_steps: 4,
            max_grad_norm: 1.0,
            max_len: 2048,
            packing: false,
            responses_only: true,
            skip_bad_rows: false,
            gradient_checkpointing: true,
            seed: 3407,
            log_every: 1,
            eval_every: 0,
            save_every: 0,
            overwrite_output_dir: false,
            report_to: ReportTo::None,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file (keys as the field names; missing keys take their defaults). Relative
    /// paths in it are taken relative to the file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg: TrainConfig =
            toml::from_str(&text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.model, &mut cfg.data, &mut cfg.output_dir] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = cfg.eval_data.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
        Ok(cfg)
    }

    /// Every setting as a JSON object keyed by field name (fields that are `None` left out), read
    /// back from text so that an f32 shows as written (`0.0002`, not `0.00019999999494757503`):
    /// for listing and comparing settings without naming each field.
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let text = serde_json::to_string(self).expect("a configuration serializes");
        serde_json::from_str(&text).expect("a configuration serializes to an object")
    }

    /// Checks the values; the error names the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::invalid(format!("train config: {what}")));
        if self.model.as_os_str().is_empty() {
            return bad("model is required (an HF model directory)");
        }
        if self.data.as_os_str().is_empty() {
            return bad("data is required (a JSONL file)");
        }
        if self.micro_batch_size == 0 || self.grad_accum_steps == 0 {
            return bad("micro_batch_size and grad_accum_steps must be at least 1");
        }
        if self.method == Method::Lora && self.lora_r == 0 {
            return bad("lora_r must be at least 1");
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad("lora_dropout must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return bad("eval_fraction must be in [0, 1)");
        }
        if self.max_steps == 0 && self.num_epochs == 0 {
            return bad("set max_steps or num_epochs");
        }
        if self.learning_rate.is_nan() || self.learning_rate <= 0.0 || self.max_grad_norm < 0.0 || self.max_len < 2 {
            return bad("learning_rate must be > 0, max_grad_norm >= 0, max_len >= 2");
        }
        let positive = |k: &str, v: f64| Error::check_positive(&format!("train config: {k}"), v);
        positive("learning_rate", self.learning_rate as f64)?;
        positive("adam_epsilon", self.adam_epsilon as f64)?;
        if self.method == Method::Lora {
            positive("lora_alpha", self.lora_alpha as f64)?;
        }
        let finite_non_negative =
            [("weight_decay", self.weight_decay as f64), ("max_grad_norm", self.max_grad_norm as f64)];
        for (k, v) in finite_non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return bad(&format!("{k} is {v}; expected a finite number, 0 or more"));
            }
        }
        for (k, v) in [("adam_beta1", self.adam_beta1 as f64), ("adam_beta2", self.adam_beta2 as f64)] {
            if !(0.0..1.0).contains(&v) {
                return bad(&format!("{k} is {v}; expected a number in [0, 1)"));
            }
        }
        // Bounds that keep sizes computed from them far from overflow or absurd allocations.
        let r = |k: &str, v: usize, hi: usize| Error::check_range(&format!("train config: {k}"), v, 0, hi);
        r("micro_batch_size", self.micro_batch_size, 1 << 16)?;
        r("grad_accum_steps", self.grad_accum_steps, 1 << 16)?;
        r("num_epochs", self.num_epochs, 1 << 20)?;
        r("max_steps", self.max_steps, 1 << 40)?;
        r("max_len", self.max_len, 1 << 20)?;
        r("lora_r", self.lora_r, 1 << 16)?;
        r("warmup_steps", self.warmup_steps, 1 << 40)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "model = \"m\"\ndata = \"d.jsonl\"\nlora_r = 4\nlr_scheduler = \"cosine\"\n").unwrap();
        let cfg = TrainConfig::from_toml_file(&path).unwrap();
        assert_eq!((cfg.lora_r, cfg.lr_scheduler, cfg.micro_batch_size), (4, Schedule::Cosine, 2));
        assert_eq!(cfg.data, dir.path().join("d.jsonl"));
        cfg.validate().unwrap();
        std::fs::write(&path, "model = \"m\"\nlora_rank = 4\n").unwrap();
        let err = TrainConfig::from_toml_file(&path).unwrap_err().to_string();
        assert!(err.contains("lora_rank") && err.contains("run.toml"), "{err}");
    }
}
