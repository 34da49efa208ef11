//! Held-out loss: mean cross-entropy per label token over rows, without gradients, summed on the
//! device and read back once.

use super::Trainer;
use super::step::accumulate;
use lapidary_core::{Result, Tensor};
use lapidary_data::{Example, collate};
use lapidary_model::ForwardOptions;

impl Trainer {
    /// Mean cross-entropy per label token over `rows` (no gradients); summed on the device and
    /// read back once.
    pub fn loss_on(&self, rows: &[Example]) -> Result<f64> {
        let _guard = self.tape().no_grad();
        let (mut sum, mut count) = (None::<Tensor>, 0usize);
        for chunk in rows.chunks(self.cfg.micro_batch_size.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let batch = self.model.batch(&collate(&refs, &self.processor)?, &self.device)?;
            let n = batch.label_count();
            if n == 0 {
                continue;
            }
            let loss = self.model.loss(&batch, &ForwardOptions { normalizer: Some(1.0), ..Default::default() })?;
            accumulate(&mut sum, loss.value())?;
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
}
