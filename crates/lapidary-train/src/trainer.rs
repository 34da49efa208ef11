//! The training loop: loads the model and data, attaches LoRA (or trains every weight), and
//! runs optimizer steps of `grad_accum_steps` micro-batches whose summed loss is normalized by
//! their total label count; clips, steps AdamW, follows the schedule, evaluates held-out loss,
//! saves checkpoints, resumes exactly, reports progress and metrics. A step reads nothing back
//! from the device: its loss, gradient norm and the checks on them wait on the device until the
//! next logged step reads every pending step's figures at once. Not data encoding (see
//! lapidary-data) nor generation.

use crate::checkpoint::{self, CheckpointMeta, TrainState};
use crate::config::{Method, TrainConfig};
use crate::optimizer::{AdamW, AdamWConfig};
use crate::{metrics, schedule};
use lapidary_autograd::{BackwardOptions, Tape, Trainable};
use lapidary_core::rng::SplitMix64;
use lapidary_core::{DType, Device, Error, Result, Tensor};
use lapidary_data::{Collated, Dataset, EncodeOptions, Example, OnBadRow, Processor, collate, collate_packed};
use lapidary_gemma3::{Batch, ForwardOptions, Gemma3ForConditionalGeneration, OpenOptions, Parts};
use lapidary_kernels::optim::{GUARD_COEF, GUARD_LOSS, GUARD_NORM, GUARD_SUMS};
use lapidary_kernels::{elementwise, gather};
use lapidary_lora::{LoraConfig, LoraDropout, LoraInit, LoraTargets, PeftAdapterConfig};
use lapidary_nn::safetensors::LoadTensor;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// A training run.
pub struct Trainer {
    cfg: TrainConfig,
    processor: Processor,
    model: Gemma3ForConditionalGeneration,
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
    unread: Vec<UnreadStep>,
    /// The error of a step found not finite: the trainer refuses to go on after it.
    failed: Option<String>,
    /// Where the run stands.
    pub state: TrainState,
}

/// A step done on the device, its figures not read yet.
struct UnreadStep {
    step: usize,
    lr: f32,
    label_tokens: usize,
    tokens: usize,
    slots: usize,
    /// Indices (optimizer order) of the tensors that got a gradient: the guard's sums, in order.
    present: Vec<usize>,
    /// The step guard's buffer.
    guard: Tensor,
}

/// Converts a collated batch to the model's batch.
pub fn to_batch(c: &Collated, processor: &Processor, device: &Device) -> Result<Batch> {
    let pixel_values = if c.images > 0 {
        let (h, w) = (processor.image.height, processor.image.width);
        Some(Tensor::from_f32(device, &c.pixel_values, &[c.images, 3, h, w], DType::F32)?)
    } else {
        None
    };
    Ok(Batch {
        batch: c.batch,
        seq: c.seq,
        input_ids: c.input_ids.clone(),
        attention_mask: c.attention_mask.clone(),
        token_type_ids: c.token_type_ids.clone(),
        labels: Some(c.labels.clone()),
        pixel_values,
        position_ids: c.position_ids.clone(),
    })
}

/// The training and held-out rows (`eval_data`, else `eval_fraction` of the data held out by a
/// seeded shuffle) and the report of the rows skipped.
fn load_data(cfg: &TrainConfig, processor: &Processor) -> Result<(Vec<Example>, Vec<Example>, String)> {
    let enc = EncodeOptions { max_len: cfg.max_len, responses_only: cfg.responses_only };
    let on_bad = if cfg.skip_bad_rows { OnBadRow::Skip } else { OnBadRow::Error };
    let data = Dataset::load(&cfg.data, processor, &enc, on_bad)?;
    let mut skipped = data.skipped_report();
    let (train, eval) = match &cfg.eval_data {
        Some(path) => {
            let ev = Dataset::load(path, processor, &enc, on_bad)?;
            skipped.push_str(&ev.skipped_report());
            (data.examples, ev.examples)
        }
        None if cfg.eval_fraction > 0.0 && data.len() >= 2 => {
            let n_eval = ((data.len() as f32 * cfg.eval_fraction).round() as usize).clamp(1, data.len() - 1);
            let order = shuffled(data.len(), cfg.seed ^ 0xE7A1);
            let held: std::collections::HashSet<usize> = order[..n_eval].iter().copied().collect();
            let (mut tr, mut ev) = (Vec::new(), Vec::new());
            for (i, ex) in data.examples.into_iter().enumerate() {
                if held.contains(&i) { ev.push(ex) } else { tr.push(ex) }
            }
            (tr, ev)
        }
        None => (data.examples, Vec::new()),
    };
    Ok((train, eval, skipped))
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

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

impl Trainer {
    /// Loads everything the configuration names.
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let processor = Processor::from_model(&cfg.model)?;
        let (train, eval, skipped) = load_data(&cfg, &processor)?;
        let mut model = Gemma3ForConditionalGeneration::open(&cfg.model, device, &open_options(&cfg))?;
        let (mut adapted_modules, mut dropout) = (Vec::new(), None);
        if cfg.method == Method::Lora {
            let lora = lora_config(&cfg);
            dropout = lora.dropout.clone();
            let mut rng = SplitMix64::new(cfg.seed);
            let (namer, tape) = (model.peft_namer(), model.tape().clone());
            let paths = lapidary_lora::attach_lora(&lora, model.linears_mut(), namer, &tape, device, &mut rng)?;
            adapted_modules = paths.iter().map(|p| p.rsplit('.').next().unwrap_or(p).to_string()).collect();
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
    pub fn model(&self) -> &Gemma3ForConditionalGeneration {
        &self.model
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
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.eval.len())
    }

    /// The held-out rows.
    pub fn eval_examples(&self) -> &[Example] {
        &self.eval
    }

    /// Report of the rows skipped when loading (empty when none).
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

    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        shuffled(self.units.len(), self.cfg.seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(epoch as u64 + 1)))
    }

    fn next_rows(&mut self, n: usize) -> Vec<usize> {
        let mut rows = Vec::with_capacity(n);
        let mut order = self.epoch_order(self.state.epoch);
        while rows.len() < n {
            if self.state.cursor >= order.len() {
                self.state.epoch += 1;
                self.state.cursor = 0;
                order = self.epoch_order(self.state.epoch);
            }
            rows.push(order[self.state.cursor]);
            self.state.cursor += 1;
        }
        rows
    }

    fn vision_side_names(&self) -> Vec<String> {
        self.opt.params().iter().map(|(n, _)| n.clone()).filter(|n| lapidary_gemma3::is_vision_side(n)).collect()
    }

    /// The next step's micro-batches (`grad_accum_steps` of them) from the data order.
    fn next_micro_batches(&mut self) -> Result<Vec<Collated>> {
        let mut micro = Vec::with_capacity(self.cfg.grad_accum_steps);
        for _ in 0..self.cfg.grad_accum_steps {
            let rows = self.next_rows(self.cfg.micro_batch_size);
            let groups: Vec<Vec<&Example>> =
                rows.iter().map(|&u| self.units[u].iter().map(|&i| &self.train[i]).collect()).collect();
            micro.push(if self.cfg.packing {
                collate_packed(&groups, &self.processor)?
            } else {
                let refs: Vec<&Example> = groups.into_iter().flatten().collect();
                collate(&refs, &self.processor)?
            });
        }
        Ok(micro)
    }

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
        let (loss, grads, label_tokens, tokens) = self.gradients_unread(micro)?;
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
        self.unread.push(UnreadStep {
            step: self.state.step,
            lr,
            label_tokens,
            tokens,
            slots: micro.iter().map(|c| c.batch * c.seq).sum(),
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
        let mut all = first.guard.clone();
        for u in &unread[1..] {
            all = gather::concat(&all, &u.guard, 0)?;
        }
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
                    non_finite(u.step, "the loss", loss)
                } else if let Some((&i, &s)) = culprit {
                    non_finite(u.step, &format!("the gradient of {} (its sum of squares)", names[i]), s as f64)
                } else if !grad_norm.is_finite() {
                    non_finite(u.step, "the gradient norm", grad_norm as f64)
                } else {
                    Error::invalid(format!("step {}: skipped on the device after an earlier non-finite step", u.step))
                };
                self.failed = Some(e.to_string());
                return Err(e);
            }
            stats.push(StepStats {
                step: u.step,
                loss,
                lr: u.lr,
                grad_norm,
                label_tokens: u.label_tokens,
                tokens: u.tokens,
                slots: u.slots,
            });
        }
        Ok(stats)
    }

    /// The loss and the accumulated gradient of every trainable tensor (in
    /// [`Self::trainable_names`] order; `None` where none arrived) over `micro`, each
    /// micro-batch's summed cross-entropy divided by the label count of all of them. Also the
    /// label and real token counts. Changes nothing; an error naming the step when the loss is
    /// not finite.
    pub fn gradients_on(&self, micro: &[Collated]) -> Result<(f64, Vec<Option<Tensor>>, usize, usize)> {
        let (loss, grads, label_tokens, tokens) = self.gradients_unread(micro)?;
        let loss = loss.to_f32_vec()?[0] as f64;
        if !loss.is_finite() {
            return Err(non_finite(self.state.step + 1, "the loss", loss));
        }
        Ok((loss, grads, label_tokens, tokens))
    }

    /// [`Self::gradients_on`] with the loss left on the device (f32 `[1]`) and nothing read
    /// back: the gradient-flow check done here is the structural one (every trainable tensor
    /// got a gradient, no frozen one did); finiteness is the step guard's.
    fn gradients_unread(&self, micro: &[Collated]) -> Result<(Tensor, Vec<Option<Tensor>>, usize, usize)> {
        let label_tokens: usize = micro.iter().map(Collated::label_count).sum();
        if label_tokens == 0 {
            return Err(Error::invalid("train: a step without any label token"));
        }
        let params: Vec<_> = self.opt.params().to_vec();
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let mut loss_total: Option<Tensor> = None;
        let mut tokens = 0usize;
        for (k, c) in micro.iter().enumerate() {
            if let Some(d) = &self.dropout {
                // Masks depend on the run's seed, the step and the micro-batch only: a
                // checkpointed recompute and a resumed run draw the same ones.
                d.set_seed(self.cfg.seed ^ ((self.state.step as u64) << 20) ^ (k as u64).wrapping_mul(0x9E37_79B9));
            }
            let batch = to_batch(c, &self.processor, &self.device)?;
            tokens += c.attention_mask.iter().filter(|&&m| m != 0).count();
            let pass = ForwardOptions {
                checkpointing: self.cfg.gradient_checkpointing,
                normalizer: Some(label_tokens as f32),
                ..Default::default()
            };
            let loss = self.model.loss(&batch, &pass)?;
            loss_total = Some(match loss_total.take() {
                None => loss.value().clone(),
                Some(acc) => elementwise::add(&acc, loss.value())?,
            });
            let opts =
                BackwardOptions { allow_missing: if c.images == 0 { self.vision_side_names() } else { Vec::new() } };
            let store = self.tape().backward_unread(&loss, &opts)?;
            for (i, (_, p)) in params.iter().enumerate() {
                if let Some(g) = store.get(p) {
                    grads[i] = Some(match grads[i].take() {
                        None => g.clone(),
                        Some(acc) => elementwise::add(&acc, g)?,
                    });
                }
            }
        }
        let loss = loss_total.ok_or_else(|| Error::invalid("train: a step without any micro-batch"))?;
        Ok((loss, grads, label_tokens, tokens))
    }

    /// Names of the trainable tensors, in optimizer order.
    pub fn trainable_names(&self) -> Vec<String> {
        self.opt.params().iter().map(|(n, _)| n.clone()).collect()
    }

    /// The training rows (after the held-out split).
    pub fn train_examples(&self) -> &[Example] {
        &self.train
    }

    /// Mean cross-entropy per label token over `rows` (no gradients); summed on the device and
    /// read back once.
    pub fn loss_on(&self, rows: &[Example]) -> Result<f64> {
        let _guard = self.tape().no_grad();
        let (mut sum, mut count) = (None::<Tensor>, 0usize);
        for chunk in rows.chunks(self.cfg.micro_batch_size.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let c = collate(&refs, &self.processor)?;
            let n = c.label_count();
            if n == 0 {
                continue;
            }
            let batch = to_batch(&c, &self.processor, &self.device)?;
            let loss = self.model.loss(&batch, &ForwardOptions { normalizer: Some(1.0), ..Default::default() })?;
            sum = Some(match sum.take() {
                None => loss.value().clone(),
                Some(acc) => elementwise::add(&acc, loss.value())?,
            });
            count += n;
        }
        Ok(match sum {
            Some(sum) if count > 0 => sum.to_f32_vec()?[0] as f64 / count as f64,
            _ => f64::NAN,
        })
    }

    /// Held-out loss (NaN when nothing is held out).
    pub fn eval_loss(&self) -> Result<f64> {
        self.loss_on(&self.eval)
    }

    fn trainable_tensors(&self) -> Vec<(String, Tensor)> {
        self.opt.params().iter().map(|(n, v)| (n.clone(), v.value().clone())).collect()
    }

    /// Writes the adapter (LoRA: PEFT format) or the trained weights (full: tensors under their
    /// checkpoint names) into `dir`.
    /// Every step must have been read ([`Self::read_steps`]) first.
    pub fn save_weights(&self, dir: &Path) -> Result<()> {
        if let Some(u) = self.unread.first() {
            return Err(Error::invalid(format!(
                "save_weights: steps {}..={} are not read yet (read_steps checks them first)",
                u.step, self.state.step
            )));
        }
        self.ensure_finite()?;
        match self.cfg.method {
            Method::Lora => {
                // The adapters, and a trained projector as PEFT's modules_to_save (whole tensors
                // under `base_model.model.model.multi_modal_projector.*`).
                let mut tensors = Vec::new();
                let mut modules_to_save = Vec::new();
                for (name, t) in self.trainable_tensors() {
                    if name.contains(".lora_") {
                        tensors.push((name, t));
                    } else if name.starts_with("multi_modal_projector.") {
                        tensors.push((self.model.peft_namer()(&name), t));
                        modules_to_save = vec!["multi_modal_projector".to_string()];
                    } else {
                        return Err(Error::invalid(format!("{name}: a trained tensor PEFT's format has no place for")));
                    }
                }
                let pc = PeftAdapterConfig {
                    r: self.cfg.lora_r,
                    lora_alpha: self.cfg.lora_alpha,
                    use_rslora: self.cfg.use_rslora,
                    lora_dropout: self.cfg.lora_dropout,
                    modules_to_save,
                };
                lapidary_lora::save_peft_adapter(dir, &pc, &self.adapted_modules, &tensors)
            }
            Method::Full => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                // Each tensor in the shape the base checkpoint stores it, so HF loads the directory.
                let entries: Vec<_> = self
                    .trainable_tensors()
                    .iter()
                    .map(|(n, t)| {
                        lapidary_nn::safetensors::entry_of(
                            self.model.stored_name(n).to_string(),
                            &self.model.in_stored_shape(n, t)?,
                        )
                    })
                    .collect::<Result<_>>()?;
                lapidary_nn::safetensors::save(dir.join("model.safetensors"), &entries)?;
                for f in [
                    "config.json",
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "processor_config.json",
                    "chat_template.jinja",
                ] {
                    let src = self.cfg.model.join(f);
                    if src.is_file() {
                        std::fs::copy(&src, dir.join(f)).map_err(|e| Error::io(&src, e))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Saves a checkpoint of the current state, after reading (and so checking) the steps not
    /// read yet; returns its directory.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        self.read_steps()?;
        self.ensure_finite()?;
        std::fs::create_dir_all(&self.cfg.output_dir).map_err(|e| Error::io(&self.cfg.output_dir, e))?;
        let meta =
            CheckpointMeta { state: self.state.clone(), optimizer_steps: self.opt.steps, config: self.cfg.clone() };
        checkpoint::save(&self.cfg.output_dir, &meta, &self.trainable_tensors(), &self.opt.state_tensors(), |tmp| {
            if self.cfg.method == Method::Lora { self.save_weights(tmp) } else { Ok(()) }
        })
    }

    /// Continues from a checkpoint written by [`Self::save_checkpoint`] with the same model,
    /// data, method and LoRA settings: parameters, AdamW moments, step and data position are
    /// restored, so the run goes on as if never stopped.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let ck = checkpoint::load(dir)?;
        let mismatches = run_defining_differences(&ck.meta.config, &self.cfg);
        if !mismatches.is_empty() {
            return Err(Error::invalid(format!(
                "{}: the checkpoint belongs to a run with other settings ({}); resume with the same \
                 settings, or start afresh with --overwrite-output-dir true",
                dir.display(),
                mismatches.join("; ")
            )));
        }
        let names: std::collections::HashSet<&str> = ck.trainable.names().collect();
        for (name, var) in self.opt.params() {
            if !names.contains(name.as_str()) {
                return Err(Error::invalid(format!("{}: trainable.safetensors lacks {name}", dir.display())));
            }
            let t = ck.trainable.load(name, &self.device, var.value().dtype())?;
            t.expect_shape(name, var.shape())?;
            gather::copy_into(var.value(), &t)?;
        }
        if names.len() != self.opt.params().len() {
            return Err(Error::invalid(format!(
                "{}: trainable.safetensors holds {} tensors, this run trains {}",
                dir.display(),
                names.len(),
                self.opt.params().len()
            )));
        }
        let device = self.device.clone();
        let optimizer = &ck.optimizer;
        self.opt.load_state(
            |name, shape| {
                if optimizer.entry(name).is_none() {
                    return Err(Error::invalid(format!("{}: optimizer.safetensors lacks {name}", dir.display())));
                }
                let t = optimizer.load(name, &device, DType::F32)?;
                t.expect_shape(name, shape)?;
                Ok(t)
            },
            ck.meta.optimizer_steps,
        )?;
        self.state = ck.meta.state;
        Ok(())
    }

    /// An error naming the first trainable tensor holding a NaN or an infinity: nothing
    /// non-finite is ever written as an adapter, weights or a checkpoint.
    fn ensure_finite(&self) -> Result<()> {
        for (name, t) in self.trainable_tensors() {
            let values = t.to_f32_vec()?;
            Error::check_finite(
                &format!("trainable tensor {name}"),
                &values,
                "refusing to save non-finite weights (lower the learning rate or check the base weights and data)",
            )?;
        }
        Ok(())
    }

    /// Runs to the end: progress bar, metrics (`metrics.jsonl`), held-out loss, checkpoints,
    /// and at the end the adapter (or weights) in `output_dir/final` and `loss.png`.
    pub fn run(&mut self, show_progress: bool) -> Result<RunSummary> {
        let out = self.cfg.output_dir.clone();
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        let metrics_path = out.join("metrics.jsonl");
        if self.state.step == 0 {
            clear_earlier_run(&out, self.cfg.overwrite_output_dir)?;
        } else {
            metrics::truncate_after(&metrics_path, self.state.step)?;
        }
        let eval_before = if self.state.step == 0 && !self.eval.is_empty() {
            let l = self.eval_loss()?;
            metrics::append(&metrics_path, &serde_json::json!({"step": 0, "eval_loss": l}))?;
            Some(l)
        } else {
            None
        };
        let bar = if show_progress {
            indicatif::ProgressBar::new(self.total_steps as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("a valid template"),
        );
        bar.set_position(self.state.step as u64);
        let started = Instant::now();
        let mut last_loss = f64::NAN;
        // Tokens and time since the figures were last read: a step's own time is not known
        // until the device has finished it.
        let (mut since, mut tokens_since) = (Instant::now(), 0usize);
        while self.state.step < self.total_steps {
            let step = self.step_unread()?;
            bar.set_position(step as u64);
            let last = step == self.total_steps;
            let log = step % self.cfg.log_every.max(1) == 0 || last;
            let eval = !self.eval.is_empty() && ((self.cfg.eval_every > 0 && step % self.cfg.eval_every == 0) || last);
            let save = (self.cfg.save_every > 0 && step % self.cfg.save_every == 0) || last;
            if !(log || eval || save) {
                continue;
            }
            let read = self.read_steps()?;
            let s = read.last().expect("the step just done");
            tokens_since += read.iter().map(|s| s.tokens).sum::<usize>();
            let tps = tokens_since as f64 / since.elapsed().as_secs_f64().max(1e-9);
            last_loss = s.loss;
            bar.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", s.loss, s.lr, tps));
            if log {
                metrics::append(
                    &metrics_path,
                    &serde_json::json!({
                        "step": s.step, "epoch": self.state.epoch, "loss": s.loss, "lr": s.lr,
                        "grad_norm": s.grad_norm, "label_tokens": s.label_tokens, "tokens": s.tokens,
                        "padding": s.padding_fraction(), "tokens_per_s": tps,
                        "elapsed_s": started.elapsed().as_secs_f64(),
                        "rss_mib": metrics::resident_mib(),
                    }),
                )?;
            }
            if eval {
                let l = self.eval_loss()?;
                metrics::append(&metrics_path, &serde_json::json!({"step": step, "eval_loss": l}))?;
                bar.println(format!("step {step}: held-out loss {l:.4}"));
            }
            if save {
                self.save_checkpoint()?;
            }
            (since, tokens_since) = (Instant::now(), 0);
        }
        bar.finish();
        let final_dir = out.join("final");
        // Staged whole and swapped in, so the adapter's files appear together.
        let staged = out.join(".final.staging");
        if staged.exists() {
            std::fs::remove_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
        }
        self.save_weights(&staged)?;
        lapidary_core::fsio::replace_dir(&staged, &final_dir)?;
        let recs = metrics::read(&metrics_path)?;
        let (train_pts, eval_pts) = (metrics::series(&recs, "loss"), metrics::series(&recs, "eval_loss"));
        metrics::plot_loss(&out.join("loss.png"), &train_pts, &eval_pts)?;
        Ok(RunSummary {
            steps: self.state.step,
            first_loss: train_pts.first().map_or(f64::NAN, |p| p.1),
            last_loss: if last_loss.is_nan() { train_pts.last().map_or(f64::NAN, |p| p.1) } else { last_loss },
            eval_before,
            eval_after: eval_pts.last().map(|p| p.1),
            seconds: started.elapsed().as_secs_f64(),
            output: final_dir,
        })
    }
}

/// What [`Trainer::run`] reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Steps done in all.
    pub steps: usize,
    /// Loss of the first logged step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Held-out loss before training (when the run started from step 0).
    pub eval_before: Option<f64>,
    /// Held-out loss at the end.
    pub eval_after: Option<f64>,
    /// Wall time of the loop.
    pub seconds: f64,
    /// The adapter or weights directory.
    pub output: PathBuf,
}

/// The error for a step whose loss or gradient is not finite: parameters are left as they were.
fn non_finite(step: usize, what: &str, value: f64) -> Error {
    Error::invalid(format!(
        "step {step}: {what} is {value}; stopping with the weights as they were before that step, and \
         saving nothing. Likely causes: non-finite values in the base weights or the pixels, or a \
         learning rate too high (the last checkpoint, if any, is intact)"
    ))
}

/// What an earlier run leaves in an output directory: checkpoints, the final weights, metrics.
fn earlier_run_files(out: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(found) };
    for e in entries {
        let e = e.map_err(|err| Error::io(out, err))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name == "final"
            || name == "metrics.jsonl"
            || name == "loss.png"
            || name.starts_with("checkpoint-")
            || name.starts_with(".checkpoint-");
        if ours {
            found.push(e.path());
        }
    }
    found.sort();
    Ok(found)
}

/// A fresh run refuses an output directory holding an earlier run (a later `--resume` would
/// mix the two), or with `overwrite` removes what that run left.
fn clear_earlier_run(out: &Path, overwrite: bool) -> Result<()> {
    let found = earlier_run_files(out)?;
    if found.is_empty() {
        return Ok(());
    }
    if !overwrite {
        let names: Vec<String> =
            found.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        return Err(Error::invalid(format!(
            "{} holds an earlier run ({}); continue it with --resume, or start afresh with \
             --overwrite-output-dir true (which removes those)",
            out.display(),
            names.join(", ")
        )));
    }
    for p in found {
        let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        removed.map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// The settings that may change when a run resumes: where and how often it reports and saves,
/// how long it runs, and gradient checkpointing (which gives bit-identical results). Every other
/// setting defines the run, including any added later.
const MAY_CHANGE_ON_RESUME: [&str; 8] = [
    "output_dir",
    "overwrite_output_dir",
    "max_steps",
    "num_epochs",
    "log_every",
    "eval_every",
    "save_every",
    "gradient_checkpointing",
];

/// The settings that define a run on which `old` and `new` differ, as `field: old -> new`
/// (every field of [`TrainConfig`] but [`MAY_CHANGE_ON_RESUME`]; paths compared as the files
/// they name).
fn run_defining_differences(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    let (a, b) = (old.fields(), new.fields());
    let same_path = |x: &serde_json::Value, y: &serde_json::Value| match (x.as_str(), y.as_str()) {
        (Some(x), Some(y)) => {
            x == y || matches!((std::fs::canonicalize(x), std::fs::canonicalize(y)), (Ok(p), Ok(q)) if p == q)
        }
        _ => false,
    };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = serde_json::Value::Null;
    let mut out = Vec::new();
    for key in keys {
        if MAY_CHANGE_ON_RESUME.contains(&key.as_str()) {
            continue;
        }
        let (x, y) = (a.get(key).unwrap_or(&none), b.get(key).unwrap_or(&none));
        if x == y || (["model", "data", "eval_data"].contains(&key.as_str()) && same_path(x, y)) {
            continue;
        }
        let show = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        out.push(format!("{key}: {} -> {}", show(x), show(y)));
    }
    out
}

#[cfg(test)]
mod resume_tests {
    use super::*;
    use serde_json::{Value, json};

    /// `value` changed to another value its field accepts.
    fn another(key: &str, value: &Value, map: &serde_json::Map<String, Value>) -> Value {
        let candidates: Vec<Value> = match value {
            Value::Bool(b) => vec![json!(!b)],
            Value::Number(n) => match n.as_u64() {
                Some(u) => vec![json!(u + 1)],
                None => vec![json!(n.as_f64().unwrap() * 0.5 + 0.125)],
            },
            Value::String(s) => ["full", "lora", "cosine", "linear", "nf4", "bf16"]
                .iter()
                .map(|c| json!(c))
                .chain([json!(format!("{s}-other"))])
                .collect(),
            _ => vec![json!("held-out.jsonl"), json!(["q_proj"])],
        };
        candidates
            .into_iter()
            .find(|c| {
                let mut m = map.clone();
                m.insert(key.to_string(), c.clone());
                c != value && serde_json::from_value::<TrainConfig>(Value::Object(m)).is_ok()
            })
            .unwrap_or_else(|| panic!("no other value for {key}"))
    }

    #[test]
    fn every_setting_but_the_allowed_ones_defines_the_run() {
        let base = TrainConfig { model: "m".into(), data: "d.jsonl".into(), ..TrainConfig::default() };
        let map = base.fields();
        // Fields left out of the serialized form (None) are changed too.
        let mut keys: Vec<String> = map.keys().cloned().collect();
        keys.extend(["eval_data", "target_modules"].map(String::from));
        keys.sort();
        keys.dedup();
        assert!(keys.len() >= 39, "{keys:?}");
        for key in keys {
            let old = map.get(&key).cloned().unwrap_or(Value::Null);
            let mut changed = map.clone();
            changed.insert(key.clone(), another(&key, &old, &map));
            let new: TrainConfig = serde_json::from_value(Value::Object(changed)).unwrap();
            let diffs = run_defining_differences(&base, &new);
            if MAY_CHANGE_ON_RESUME.contains(&key.as_str()) {
                assert!(diffs.is_empty(), "{key}: {diffs:?}");
            } else {
                assert!(diffs.len() == 1 && diffs[0].starts_with(&format!("{key}: ")), "{key}: {diffs:?}");
            }
        }
        assert!(run_defining_differences(&base, &base.clone()).is_empty());
    }
}
