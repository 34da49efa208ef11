//! AdamW over named parameters with f32 moments, global gradient-norm clipping and a guard
//! against non-finite steps — all on the device, with nothing read back — and the optimizer
//! state as named tensors (for checkpoints). Not the learning-rate schedule.

use lapidary_autograd::Var;
use lapidary_core::{DType, Error, Result, Tensor};
use lapidary_kernels::{gather, optim, reduce};

/// AdamW hyper-parameters that do not change per step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Decoupled weight decay (not applied to biases and norm weights, as HF's Trainer does).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// `torch.optim.AdamW`'s defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW state for a list of parameters.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    cfg: AdamWConfig,
    /// Optimizer steps taken (bias correction uses it).
    pub steps: u64,
    /// Set on the device by the first step whose loss or gradient norm is not finite; from
    /// then on no step changes anything (see [`optim::step_guard`]).
    halted: Tensor,
}

impl AdamW {
    /// Zero moments for each parameter.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let mut m = Vec::with_capacity(params.len());
        let mut v = Vec::with_capacity(params.len());
        for (_, p) in &params {
            m.push(Tensor::zeros(p.value().device(), p.shape(), DType::F32)?);
            v.push(Tensor::zeros(p.value().device(), p.shape(), DType::F32)?);
        }
        let Some((_, first)) = params.first() else {
            return Err(Error::invalid("AdamW: no parameter to optimize"));
        };
        let halted = Tensor::zeros(first.value().device(), &[1], DType::F32)?;
        Ok(AdamW { params, m, v, cfg, steps: 0, halted })
    }

    /// The parameters, named, in order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One step with `grads[i]` for `params[i]` (`None`: the parameter got no gradient in this
    /// step and is left as it is, as torch does) and the step's `loss` (f32 `[1]`), without
    /// reading anything back: the global gradient norm, the clipping factor `min(1, max_norm /
    /// (norm + 1e-6))` (torch's `clip_grad_norm_`; `max_norm` 0: none) and the verdict on a
    /// non-finite loss or norm are computed on the device, and the update uses them there. A
    /// step with a non-finite loss or norm changes nothing, and neither does any later one.
    ///
    /// Returns the step guard's buffer (layout: [`optim::GUARD_COEF`] and the next constants;
    /// the sums of squares are those of the present gradients, in order), for the caller to
    /// read when it logs, together with other steps'.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f32, max_norm: f32, loss: &Tensor) -> Result<Tensor> {
        if grads.len() != self.params.len() {
            return Err(Error::invalid(format!(
                "AdamW: {} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        let present: Vec<&Tensor> = grads.iter().flatten().collect();
        if present.is_empty() {
            return Err(Error::invalid("AdamW: a step without any gradient"));
        }
        let guard = optim::step_guard(&reduce::sum_sq_each(&present)?, loss, &self.halted, max_norm)?;
        self.steps += 1;
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let (name, p) = &self.params[i];
            let decay = if name.contains("bias") || name.contains("norm") { 0.0 } else { self.cfg.weight_decay };
            let h = optim::AdamWStep {
                lr,
                beta1: self.cfg.beta1,
                beta2: self.cfg.beta2,
                eps: self.cfg.eps,
                weight_decay: decay,
                step: self.steps,
            };
            optim::adamw_step_scaled(p.value(), g, &self.m[i], &self.v[i], h, &guard)?;
        }
        Ok(guard)
    }

    /// The moments as `exp_avg.<name>` / `exp_avg_sq.<name>` tensors.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("exp_avg.{name}"), self.m[i].clone()));
            out.push((format!("exp_avg_sq.{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restores the moments from [`Self::state_tensors`]'s names (every one must be there).
    pub fn load_state(&mut self, get: impl Fn(&str, &[usize]) -> Result<Tensor>, steps: u64) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            gather::copy_into(&self.m[i], &get(&format!("exp_avg.{name}"), p.shape())?)?;
            gather::copy_into(&self.v[i], &get(&format!("exp_avg_sq.{name}"), p.shape())?)?;
        }
        self.steps = steps;
        Ok(())
    }
}
