//! One optimizer step: the micro-batches' losses (each normalized by the label count of all of
//! them) and accumulated gradients, the gradient-flow check, AdamW with clipping and the step
//! guard; figures stay on the device until [`Trainer::read_steps`] reads every pending step at
//! once. Not the loop (`run`).

use super::Trainer;
use crate::schedule;
use lapidary_autograd::BackwardOptions;
use lapidary_core::{Error, Result, Tensor};
use lapidary_data::Collated;
use lapidary_kernels::elementwise;
use lapidary_kernels::gather;
use lapidary_kernels::optim::{GUARD_COEF, GUARD_LOSS, GUARD_NORM, GUARD_SUMS};
use lapidary_model::{Batch, Checkpointing, ForwardOptions};

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// The step just done (1-based).
    pub step: usize,
    /// Mean cross-entropy over the step's label tokens.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Label tokens in the step.
    pub label_tokens: usize,
    /// Real tokens in the step.
    pub tokens: usize,
    /// Token slots the step computed (rows × padded length, summed over its micro-batches).
    pub slots: usize,
}

impl StepStats {
    /// Fraction of the computed token slots that were padding.
    pub fn padding_fraction(&self) -> f64 {
        if self.slots == 0 { 0.0 } else { 1.0 - self.tokens as f64 / self.slots as f64 }
    }
}

/// A step done on the device, its figures not read yet.
pub(super) struct UnreadStep {
    /// Its figures but the loss and the gradient norm (NaN until read).
    pub(super) stats: StepStats,
    /// Indices (optimizer order) of the tensors that got a gradient: the guard's sums, in order.
    pub(super) present: Vec<usize>,
    /// The step guard's buffer.
    pub(super) guard: Tensor,
}

/// The loss and gradients of micro-batches ([`Trainer::gradients_on`]).
pub struct Gradients<L> {
    /// The loss: summed cross-entropy over the label count of all the micro-batches.
    pub loss: L,
    /// The accumulated gradient of every trainable tensor, in [`Trainer::trainable_names`]
    /// order; `None` where none arrived.
    pub grads: Vec<Option<Tensor>>,
    /// Label tokens the loss counts.
    pub label_tokens: usize,
    /// Real (not padding) tokens.
    pub tokens: usize,
}

impl Trainer {
    /// One optimizer step over `grad_accum_steps` micro-batches, and its figures (one read from
    /// the device, together with any step done unread before it).
    pub fn step(&mut self) -> Result<StepStats> {
        self.step_unread()?;
        Ok(self.read_steps()?.pop().expect("the step just done"))
    }

    /// [`Self::step`] without reading anything back from the device; returns the step's
    /// number. Its figures come with the next [`Self::read_steps`].
    pub fn step_unread(&mut self) -> Result<usize> {
        let micro = self.next_micro_batches()?;
        self.step_on_unread(&micro)
    }

    /// One optimizer step on given micro-batches (their losses are normalized by their total
    /// label count, so any split of the same rows gives the same step), and its figures.
    pub fn step_on(&mut self, micro: &[Collated]) -> Result<StepStats> {
        self.step_on_unread(micro)?;
        Ok(self.read_steps()?.pop().expect("the step just done"))
    }

    /// [`Self::step_on`] without reading anything back from the device.
    pub fn step_on_unread(&mut self, micro: &[Collated]) -> Result<usize> {
        if let Some(e) = &self.failed {
            return Err(Error::invalid(e.clone()));
        }
        let Gradients { loss, grads, label_tokens, tokens } = self.gradients_unread(micro)?;
        let lr = schedule::lr_at(
            self.cfg.lr_scheduler,
            self.cfg.learning_rate,
            self.cfg.warmup_steps,
            self.state.step,
            self.total_steps,
        );
        let guard = self.opt.step(&grads, lr, self.cfg.max_grad_norm, &loss)?;
        self.state.step += 1;
        self.state.tokens += tokens as u64;
        let slots = micro.iter().map(|c| c.batch * c.seq).sum();
        self.unread.push(UnreadStep {
            stats: StepStats {
                step: self.state.step,
                loss: f64::NAN,
                lr,
                grad_norm: f32::NAN,
                label_tokens,
                tokens,
                slots,
            },
            present: (0..grads.len()).filter(|&i| grads[i].is_some()).collect(),
            guard,
        });
        Ok(self.state.step)
    }

    /// The figures of every step done since the last read, in order, read from the device at
    /// once. An error naming the step, and the tensor where one is to blame, for the first step
    /// whose loss or gradient is not finite: on the device that step and every later one
    /// changed nothing, and this trainer takes no further step.
    pub fn read_steps(&mut self) -> Result<Vec<StepStats>> {
        if let Some(e) = &self.failed {
            return Err(Error::invalid(e.clone()));
        }
        let unread = std::mem::take(&mut self.unread);
        let Some(first) = unread.first() else { return Ok(Vec::new()) };
        let all = unread[1..].iter().try_fold(first.guard.clone(), |all, u| gather::concat(&all, &u.guard, 0))?;
        let values = all.to_f32_vec()?;
        let mut at = 0;
        let mut stats = Vec::with_capacity(unread.len());
        for u in unread {
            let v = &values[at..at + GUARD_SUMS + u.present.len()];
            at += v.len();
            let (loss, grad_norm) = (v[GUARD_LOSS] as f64, v[GUARD_NORM]);
            // Not positive: skipped by the guard.
            if v[GUARD_COEF].is_nan() || v[GUARD_COEF] <= 0.0 {
                let names = self.trainable_names();
                let culprit = u.present.iter().zip(&v[GUARD_SUMS..]).find(|(_, s)| !s.is_finite());
                let e = if !loss.is_finite() {
                    non_finite(u.stats.step, "the loss", loss)
                } else if let Some((&i, &s)) = culprit {
                    non_finite(u.stats.step, &format!("the gradient of {} (its sum of squares)", names[i]), s as f64)
                } else if !grad_norm.is_finite() {
                    non_finite(u.stats.step, "the gradient norm", grad_norm as f64)
                } else {
                    Error::invalid(format!(
                        "step {}: skipped on the device after an earlier non-finite step",
                        u.stats.step
                    ))
                };
                self.failed = Some(e.to_string());
                return Err(e);
            }
            stats.push(StepStats { loss, grad_norm, ..u.stats });
        }
        Ok(stats)
    }

    /// The loss and the accumulated gradient of every trainable tensor over `micro`, each
    /// micro-batch's summed cross-entropy divided by the label count of all of them (the loss
    /// counts the positions [`lapidary_model::Batch::is_loss_target`] says), with the label and
    /// real token counts. Changes nothing; an error naming the step when the loss is not finite.
    pub fn gradients_on(&self, micro: &[Collated]) -> Result<Gradients<f64>> {
        let g = self.gradients_unread(micro)?;
        let loss = g.loss.to_f32_vec()?[0] as f64;
        if !loss.is_finite() {
            return Err(non_finite(self.state.step + 1, "the loss", loss));
        }
        Ok(Gradients { loss, grads: g.grads, label_tokens: g.label_tokens, tokens: g.tokens })
    }

    /// [`Self::gradients_on`] with the loss left on the device (f32 `[1]`) and nothing read
    /// back: the gradient-flow check done here is the structural one (every trainable tensor
    /// got a gradient, no frozen one did; after a batch without images, vision-side ones may
    /// lack one); finiteness is the step guard's.
    pub(super) fn gradients_unread(&self, micro: &[Collated]) -> Result<Gradients<Tensor>> {
        // Pixels go to the device one micro-batch at a time; the label count of all of them is
        // known from the text fields alone.
        let texts: Vec<Batch> = micro.iter().map(Batch::without_images).collect();
        let label_tokens: usize = texts.iter().map(Batch::label_count).sum();
        if label_tokens == 0 {
            return Err(Error::invalid("train: a step without any label token"));
        }
        let params: Vec<_> = self.opt.params().to_vec();
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let mut loss_total: Option<Tensor> = None;
        let mut tokens = 0usize;
        let pass = ForwardOptions {
            checkpointing: Checkpointing::each_layer_if(self.cfg.gradient_checkpointing),
            normalizer: Some(label_tokens as f32),
            ..Default::default()
        };
        for (k, (text, rows)) in texts.into_iter().zip(micro).enumerate() {
            if let Some(d) = &self.dropout {
                // Masks depend on the run's seed, the step and the micro-batch only: a
                // checkpointed recompute and a resumed run draw the same ones.
                d.set_seed(self.cfg.seed ^ ((self.state.step as u64) << 20) ^ (k as u64).wrapping_mul(0x9E37_79B9));
            }
            let batch = Batch { pixel_values: self.model.pixel_values(rows, &self.device)?, ..text };
            tokens += batch.attention_mask.iter().filter(|&&m| m != 0).count();
            let loss = self.model.loss(&batch, &pass)?;
            accumulate(&mut loss_total, loss.value())?;
            let allow_missing =
                if batch.pixel_values.is_none() { self.model.unreachable_without_images() } else { Vec::new() };
            let store = self.tape().backward_unread(&loss, &BackwardOptions { allow_missing })?;
            for (i, (_, p)) in params.iter().enumerate() {
                if let Some(g) = store.get(p) {
                    accumulate(&mut grads[i], g)?;
                }
            }
        }
        let loss = loss_total.ok_or_else(|| Error::invalid("train: a step without any micro-batch"))?;
        Ok(Gradients { loss, grads, label_tokens, tokens })
    }
}

/// The error for a step whose loss or gradient is not finite: parameters are left as they were.
pub(super) fn non_finite(step: usize, what: &str, value: f64) -> Error {
    Error::invalid(format!(
        "step {step}: {what} is {value}; stopping with the weights as they were before that step, and \
         saving nothing. Likely causes: non-finite values in the base weights or the pixels, or a \
         learning rate too high (the last checkpoint, if any, is intact)"
    ))
}

/// Adds `value` to the sum in `acc` (the sum is `value` itself while `acc` is empty).
pub(super) fn accumulate(acc: &mut Option<Tensor>, value: &Tensor) -> Result<()> {
    *acc = Some(match acc.take() {
        None => value.clone(),
        Some(sum) => elementwise::add(&sum, value)?,
    });
    Ok(())
}
