//! `lapidary bench-step`: times LoRA training steps of a model on one fixed batch — what
//! `tools/gpu/run.sh` runs next to HF transformers + PEFT on the same weights and batch. Each step
//! is a forward pass with the loss, the backward pass and an AdamW step over the adapters, then a
//! device sync; the figures are the median step time, tokens per second and the device memory
//! CubeCL's pools hold (live and reserved) at the end of the steps. Not a training run: no data
//! loading, no schedule, no checkpoints (see `lapidary train`). With `profile`, one more step
//! runs with every kernel timed on its own (see [`crate::profile`]).

use crate::autograd::BackwardOptions;
use crate::core::rng::SplitMix64;
use crate::core::{Device, Error, Result};
use crate::kernels::optim::{GUARD_COEF, GUARD_LOSS, GUARD_NORM};
use crate::kernels::quant::PackFormat;
use crate::lora::{LoraConfig, LoraInit, LoraTargets, attach_lora_to};
use crate::model::{Checkpointing, ForwardOptions, OpenOptions};
use crate::profile::{PassProfile, profile};
use crate::train::optimizer::{AdamW, AdamWConfig};
use std::path::Path;
use std::time::Instant;

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchStepOptions {
    /// Steps timed.
    pub steps: usize,
    /// Steps run first and not timed (kernel compilation happens there).
    pub warmup: usize,
    /// LoRA rank (alpha equals it: scale 1); every linear of both towers is adapted, as PEFT's
    /// `all-linear`.
    pub lora_r: usize,
    /// Frozen base storage; `None` keeps f32.
    pub base: Option<PackFormat>,
    /// Gradient checkpointing.
    pub checkpointing: Checkpointing,
    /// After the timed steps, one more with per-kernel times.
    pub profile: bool,
}

impl Default for BenchStepOptions {
    fn default() -> Self {
        BenchStepOptions {
            steps: 3,
            warmup: 1,
            lora_r: 16,
            base: Some(PackFormat::Bf16),
            checkpointing: Checkpointing::EachLayer,
            profile: false,
        }
    }
}

/// What the steps measured.
#[derive(Clone, Debug)]
pub struct BenchStepReport {
    /// Seconds to open the model and attach the adapters.
    pub load_s: f64,
    /// Loss of the first step (before any update).
    pub first_loss: f32,
    /// Loss of the last step.
    pub last_loss: f32,
    /// Seconds of each timed step.
    pub step_s: Vec<f64>,
    /// Real tokens per step (the batch's attention mask).
    pub tokens: usize,
    /// Trainable values (adapter weights).
    pub trainable: usize,
    /// Bytes of live allocations after loading.
    pub loaded_bytes: u64,
    /// Bytes of live allocations and bytes reserved by the pools after the last step.
    pub in_use_bytes: u64,
    /// See `in_use_bytes`.
    pub reserved_bytes: u64,
    /// The process's peak resident memory (Linux's `VmHWM`; `None` elsewhere): on the CPU,
    /// what the run needed at most, loading included.
    pub peak_rss_bytes: Option<u64>,
    /// Per-kernel times of one extra step, when asked for.
    pub profile: Option<PassProfile>,
}

impl BenchStepReport {
    /// Median of the timed steps.
    pub fn median_step_s(&self) -> f64 {
        let mut s = self.step_s.clone();
        s.sort_by(f64::total_cmp);
        if s.is_empty() { f64::NAN } else { s[s.len() / 2] }
    }

    /// Tokens per second at the median step.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.median_step_s()
    }

    /// One JSON object (the form `tools/gpu/table.py` reads).
    pub fn to_json(&self, device: &Device) -> String {
        serde_json::json!({
            "impl": "lapidary",
            "device": device.to_string(),
            "tokens": self.tokens,
            "trainable": self.trainable,
            "load_s": self.load_s,
            "step_s": self.step_s,
            "median_step_s": self.median_step_s(),
            "tokens_per_s": self.tokens_per_s(),
            "first_loss": self.first_loss,
            "last_loss": self.last_loss,
            "loaded_bytes": self.loaded_bytes,
            "in_use_bytes": self.in_use_bytes,
            "peak_reserved_bytes": self.reserved_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "profile": self.profile.as_ref().map(PassProfile::to_json),
            "cpu_matmul_blocking": device.is_cpu().then(cpu_matmul_blocking),
        })
        .to_string()
    }
}

/// Opens `model_dir`, adapts every linear with LoRA, and times steps on the batch file (the
/// format of `lapidary eval`).
pub fn run(model_dir: &Path, batch_path: &Path, opts: &BenchStepOptions, device: &Device) -> Result<BenchStepReport> {
    if opts.steps == 0 {
        return Err(Error::invalid("bench-step: --steps must be at least 1"));
    }
    let started = Instant::now();
    let open = OpenOptions { packing: opts.base, ..OpenOptions::default() };
    let mut model = crate::registry::open(model_dir, device, &open)?;
    let batch = model.read_batch(batch_path, device)?;
    let label_count = batch.label_count();
    if label_count == 0 {
        return Err(Error::invalid(format!("{}: the batch has no label token", batch_path.display())));
    }
    let tape = model.tape().clone();
    let lora = LoraConfig {
        r: opts.lora_r,
        lora_alpha: opts.lora_r as f32,
        use_rslora: false,
        targets: LoraTargets::AllLinear,
        init: LoraInit::Default,
        dropout: None,
    };
    attach_lora_to(&lora, model.as_mut(), device, &mut SplitMix64::new(0))?;
    let params = tape.trainable_params();
    let trainable = params.iter().map(|(_, v)| v.value().shape().iter().product::<usize>()).sum();
    let mut opt = AdamW::new(params, AdamWConfig::default())?;
    device.sync()?;
    let load_s = started.elapsed().as_secs_f64();
    // Loading's transients (conversion buffers) are not the steps' doing: hand back what the
    // runtime will (the CPU runtime kept its pages when measured; the reading then includes them).
    device.release_memory()?;
    let loaded_bytes = device.memory().in_use;
    eprintln!("bench-step: loaded in {load_s:.1} s, {trainable} adapter values, {loaded_bytes} bytes on {device}");
    if device.is_cpu() {
        eprintln!("bench-step: matmul on this CPU: {}", cpu_matmul_blocking());
    }
    let opts_bw = BackwardOptions::default();
    let (mut first_loss, mut last_loss) = (f32::NAN, f32::NAN);
    let mut step_s = Vec::with_capacity(opts.steps);
    let mut one_step = || -> Result<f32> {
        let pass = ForwardOptions {
            checkpointing: opts.checkpointing,
            normalizer: Some(label_count as f32),
            ..Default::default()
        };
        let loss = model.loss(&batch, &pass)?;
        let store = tape.backward_unread(&loss, &opts_bw)?;
        let grads: Vec<_> = opt.params().iter().map(|(_, p)| store.get(p).cloned()).collect();
        drop(store);
        // As the trainer steps, without clipping (as the PyTorch peer); its one read per step.
        let guard = opt.step(&grads, 1e-4, 0.0, loss.value())?.to_f32_vec()?;
        drop(grads);
        if guard[GUARD_COEF].is_nan() || guard[GUARD_COEF] <= 0.0 {
            return Err(Error::invalid(format!(
                "bench-step: the loss ({}) or the gradient norm ({}) is not finite",
                guard[GUARD_LOSS], guard[GUARD_NORM]
            )));
        }
        device.sync()?;
        Ok(guard[GUARD_LOSS])
    };
    for i in 0..opts.warmup + opts.steps {
        let t0 = Instant::now();
        let value = one_step()?;
        let seconds = t0.elapsed().as_secs_f64();
        eprintln!("bench-step: step {} of {}: {seconds:.3} s, loss {value:.6}", i + 1, opts.warmup + opts.steps);
        if i == 0 {
            first_loss = value;
        }
        last_loss = value;
        if i >= opts.warmup {
            step_s.push(seconds);
        }
    }
    let mem = device.memory();
    let profile = if opts.profile {
        let (value, p) = profile(&mut one_step);
        value?;
        eprintln!("bench-step: one more step with every kernel timed ({:.3} s):\n{}", p.wall_s, p.table());
        Some(p)
    } else {
        None
    };
    let tokens = batch.attention_mask.iter().filter(|&&m| m != 0).count();
    Ok(BenchStepReport {
        load_s,
        first_loss,
        last_loss,
        step_s,
        tokens,
        trainable,
        loaded_bytes,
        in_use_bytes: mem.in_use,
        reserved_bytes: mem.reserved,
        peak_rss_bytes: peak_rss_bytes(),
        profile,
    })
}

/// The CPU register matmul's blocking on this CPU and where its cache sizes came from.
pub fn cpu_matmul_blocking() -> String {
    let (blocking, source) = crate::kernels::matmul::CpuBlocking::current();
    format!("{blocking} (caches: {source})")
}

/// `VmHWM` of `/proc/self/status`, in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
