//! The trainer's data: the held-out split, the seeded row order of each epoch, and the next
//! step's micro-batches (collated rows, packed or padded). Not encoding (lapidary-data).

use super::Trainer;
use crate::config::TrainConfig;
use lapidary_core::Result;
use lapidary_core::rng::SplitMix64;
use lapidary_data::{Collated, Dataset, EncodeOptions, Example, OnBadRow, Processor, collate, collate_packed};

/// The training and held-out rows (`eval_data`, else `eval_fraction` of the data held out by a
/// seeded shuffle) and the report of the rows skipped or cut to `max_len`.
pub(super) fn load_data(cfg: &TrainConfig, processor: &Processor) -> Result<(Vec<Example>, Vec<Example>, String)> {
    let enc = EncodeOptions { max_len: cfg.max_len, responses_only: cfg.responses_only };
    let on_bad = if cfg.skip_bad_rows { OnBadRow::Skip } else { OnBadRow::Error };
    let data = Dataset::load(&cfg.data, processor, &enc, on_bad)?;
    let mut skipped = data.skipped_report() + &data.cut_report(cfg.max_len);
    let (train, eval) = match &cfg.eval_data {
        Some(path) => {
            let ev = Dataset::load(path, processor, &enc, on_bad)?;
            skipped.push_str(&ev.skipped_report());
            skipped.push_str(&ev.cut_report(cfg.max_len));
            (data.examples, ev.examples)
        }
        None if cfg.eval_fraction > 0.0 && data.len() >= 2 => {
            let n_eval = ((data.len() as f32 * cfg.eval_fraction).round() as usize).clamp(1, data.len() - 1);
            let order = shuffled(data.len(), cfg.seed ^ 0xE7A1);
            let held: std::collections::HashSet<usize> = order[..n_eval].iter().copied().collect();
            let (ev, tr): (Vec<_>, Vec<_>) = data.examples.into_iter().enumerate().partition(|(i, _)| held.contains(i));
            let rows = |v: Vec<(usize, Example)>| v.into_iter().map(|(_, ex)| ex).collect();
            (rows(tr), rows(ev))
        }
        None => (data.examples, Vec::new()),
    };
    Ok((train, eval, skipped))
}

pub(super) fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The order training takes `units` rows (or packed rows) in during `epoch`, from `seed`.
pub fn epoch_order(units: usize, seed: u64, epoch: usize) -> Vec<usize> {
    shuffled(units, seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(epoch as u64 + 1)))
}

impl Trainer {
    pub(super) fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        epoch_order(self.units.len(), self.cfg.seed, epoch)
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

    /// The next step's micro-batches (`grad_accum_steps` of them) from the data order.
    pub(super) fn next_micro_batches(&mut self) -> Result<Vec<Collated>> {
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
}
