//! Learning rate per step, as HF transformers' schedulers give it: linear warmup from 0
//! (`step / warmup`), then linear, cosine or constant, reaching 0 at the last step.

use crate::config::Schedule;

/// The learning rate of 0-based `step` out of `total` steps.
pub fn lr_at(schedule: Schedule, peak: f32, warmup: usize, step: usize, total: usize) -> f32 {
    if step < warmup {
        return peak * step as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1) as f32;
    let progress = ((step - warmup) as f32 / span).min(1.0);
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => peak * (1.0 - progress),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_then_schedules_fall() {
        let lin: Vec<f32> = (0..10).map(|s| lr_at(Schedule::Linear, 1.0, 2, s, 10)).collect();
        assert_eq!(&lin[..3], &[0.0, 0.5, 1.0]);
        assert!(lin.windows(2).skip(2).all(|w| w[1] < w[0]), "{lin:?}");
        assert_eq!(lin[9], 1.0 / 8.0);
        let cos = lr_at(Schedule::Cosine, 1.0, 0, 5, 10);
        assert!((cos - 0.5).abs() < 1e-6);
        assert_eq!(lr_at(Schedule::Constant, 0.3, 0, 7, 10), 0.3);
    }
}
