//! Scalar outputs: token cross-entropy (mean over counted tokens, or over a given normalizer for
//! gradient accumulation) and the sum of all elements.

use super::upstream;
use crate::Var;
use lapidary_core::{Error, Result};
use lapidary_kernels::{elementwise as ew, gather, loss as ls, reduce};

/// Cross-entropy of `logits: [N, V]` against `labels` (-100 ignored), divided by `normalizer`
/// (default: the number of counted tokens, i.e. the mean). Returns a `[1]` f32 loss.
pub fn cross_entropy(logits: &Var, labels: &[i64], normalizer: Option<f32>) -> Result<Var> {
    let ce = ls::cross_entropy(logits.value(), labels)?;
    let norm = normalizer.unwrap_or(ce.count as f32);
    if norm <= 0.0 {
        return Err(Error::invalid("cross_entropy: no label to count (every label is -100) and no normalizer given"));
    }
    let loss = ew::scale(&ce.loss_sum, 1.0 / norm)?;
    let lv = logits.value().clone();
    logits.tape().record1(
        &[logits],
        loss,
        Box::new(move |outs, _| {
            let g = upstream(outs).to_f32_vec()?[0];
            Ok(vec![Some(ls::cross_entropy_backward(&lv, &ce, g / norm)?)])
        }),
    )
}

/// Sum of every element, as a `[1]` value.
pub fn sum_all(x: &Var) -> Result<Var> {
    let n = x.value().numel();
    let out = reduce::sum_last(&x.value().reshape(&[n])?)?;
    let shape = x.shape().to_vec();
    let dtype = x.value().dtype();
    let dev = x.value().device().clone();
    x.tape().record1(
        &[x],
        out,
        Box::new(move |outs, _| {
            let zeros = gather::fill(&dev, &[n, 1], 0.0, dtype)?;
            Ok(vec![Some(ew::add(&zeros, &upstream(outs))?.reshape(&shape)?)])
        }),
    )
}
