//! Scalar outputs: token cross-entropy (mean over counted tokens, or over a given normalizer for
//! gradient accumulation), the same fused with the output projection in chunks of rows (the
//! `[tokens, vocab]` logits never exist whole), and the sum of all elements.

use super::upstream;
use crate::{FrozenPanels, Var, tape::BackwardFn};
use lapidary_core::{Error, Result, Tensor};
use lapidary_kernels::matmul::Layout;
use lapidary_kernels::{elementwise as ew, gather, loss as ls, matmul as mm, reduce};

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
            // The upstream gradient stays on the device: nothing is read back.
            let d = ls::cross_entropy_backward(&lv, &ce, 1.0 / norm)?;
            Ok(vec![Some(ew::scale_by(&d, &upstream(outs))?)])
        }),
    )
}

/// Logits of one chunk are at most this many values (256 MiB in f32) unless a chunk size is given.
const CHUNK_VALUES: usize = 1 << 26;

/// How [`linear_cross_entropy`] forms its logits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeadLoss {
    /// Rows projected at a time (default: chunks of at most 2^26 logits).
    pub chunk_rows: Option<usize>,
    /// Logits soft-capped to `cap · tanh(logits / cap)` before the loss (Gemma 2 and 4).
    pub softcap: Option<f32>,
}

impl HeadLoss {
    /// Chunks of `rows` rows, no soft-capping.
    pub fn chunks(rows: usize) -> Self {
        HeadLoss { chunk_rows: Some(rows), softcap: None }
    }

    /// Logits soft-capped at `cap` (`None`: none), default chunks.
    pub fn softcapped(cap: Option<f32>) -> Self {
        HeadLoss { chunk_rows: None, softcap: cap }
    }
}

/// `cross_entropy(h · wᵀ, labels, normalizer)` for `h: [N, H]`, `w: [V, H]` (a tied output head),
/// soft-capped first if `how` says so, without the `[N, V]` logits: only rows whose label is not
/// -100 are projected, `how.chunk_rows` at a time, each once: when a gradient is wanted it is
/// computed in the forward pass from each chunk's logits, and backward only scales it. Same loss
/// and gradients as the unfused ops, up to summation order. A frozen `w` on the CPU is served
/// from `panels`, packed once for every later call (pass a fresh [`FrozenPanels`] to keep
/// nothing); a trainable one is packed per call.
pub fn linear_cross_entropy(
    h: &Var,
    w: &Var,
    panels: &FrozenPanels,
    labels: &[i64],
    normalizer: Option<f32>,
    how: HeadLoss,
) -> Result<Var> {
    let (hv, wv) = (h.value().clone(), w.value().clone());
    if hv.rank() != 2 || wv.rank() != 2 || hv.dim(1) != wv.dim(1) {
        return Err(Error::invalid(format!(
            "linear_cross_entropy: h {:?} and w {:?}: expected [N, H] and [V, H]",
            hv.shape(),
            wv.shape()
        )));
    }
    let (n, vocab) = (hv.dim(0), wv.dim(0));
    if labels.len() != n {
        return Err(Error::invalid(format!("linear_cross_entropy: {} labels for {n} rows", labels.len())));
    }
    // Checked here, where positions are the caller's (a chunk's cross-entropy sees its own).
    if let Some((i, &l)) =
        labels.iter().enumerate().find(|&(_, &l)| l != ls::IGNORE_INDEX && (l < 0 || l as usize >= vocab))
    {
        return Err(Error::invalid(format!(
            "linear_cross_entropy: label {l} at position {i} is outside the vocabulary 0..{vocab} (and not -100)"
        )));
    }
    let rows: Vec<u32> = (0..n).filter(|&i| labels[i] != ls::IGNORE_INDEX).map(|i| i as u32).collect();
    let norm = normalizer.unwrap_or(rows.len() as f32);
    if norm <= 0.0 {
        return Err(Error::invalid(
            "linear_cross_entropy: no label to count (every label is -100) and no normalizer given",
        ));
    }
    // Whole vectors of 8 rows per chunk (the product's vector width along them).
    let step = how.chunk_rows.unwrap_or((CHUNK_VALUES / vocab.max(1)) / 8 * 8).max(1);
    let chunks: Vec<Vec<u32>> = rows.chunks(step).map(<[u32]>::to_vec).collect();
    let chunk_labels = |ids: &[u32]| -> Vec<i64> { ids.iter().map(|&i| labels[i as usize]).collect() };
    let dev = hv.device().clone();
    // The loss is a scalar and its gradient is linear in the upstream gradient g, so the
    // gradients of `loss / g` are computed here, chunk by chunk, while each chunk's logits exist:
    // backward only scales them. Each chunk is projected once (not again in backward).
    let (need_h, need_w) =
        if h.tape().is_recording() { (h.requires_grad(), w.requires_grad()) } else { (false, false) };
    let mut loss_sum = Tensor::zeros(&dev, &[1], lapidary_core::DType::F32)?;
    let mut dh = if need_h { Some(Tensor::zeros(&dev, hv.shape(), hv.dtype())?) } else { None };
    let mut dw: Option<Tensor> = None;
    // The head is prepared once for every chunk's product (packed on the CPU), or kept.
    let head = panels.prepared(w, Layout::ABt)?;
    let head_for_dh = if need_h { Some(panels.prepared(w, Layout::AB)?) } else { None };
    for ids in &chunks {
        let hc = gather::gather_rows(&hv, ids)?;
        let mut logits = mm::matmul_prepared(&hc, &head, None)?;
        if let Some(cap) = how.softcap {
            logits = ew::softcap(&logits, cap)?;
        }
        if !(need_h || need_w) {
            loss_sum = ew::add(&loss_sum, &ls::cross_entropy(&logits, &chunk_labels(ids))?.loss_sum)?;
            continue;
        }
        let (ce, mut dlogits) = ls::cross_entropy_with_grad(&logits, &chunk_labels(ids), 1.0 / norm)?;
        if let Some(cap) = how.softcap {
            dlogits = ew::softcap_backward(&logits, &dlogits, cap)?;
        }
        loss_sum = ew::add(&loss_sum, &ce.loss_sum)?;
        drop(logits);
        if let (Some(acc), Some(head_for_dh)) = (&dh, &head_for_dh) {
            let dhc = mm::matmul_prepared(&dlogits, head_for_dh, None)?;
            dh = Some(gather::scatter_rows(acc, &dhc, ids)?);
        }
        if need_w {
            let dwc = mm::matmul(&dlogits, &hc, None, Layout::AtB)?;
            dw = Some(match dw.take() {
                None => dwc,
                Some(acc) => ew::add(&acc, &dwc)?,
            });
        }
    }
    if need_w && dw.is_none() {
        dw = Some(Tensor::zeros(&dev, wv.shape(), wv.dtype())?);
    }
    let loss = ew::scale(&loss_sum, 1.0 / norm)?;
    let backward: BackwardFn = Box::new(move |outs, needs| {
        // Scaled by the upstream gradient on the device: nothing is read back.
        let g = upstream(outs);
        let scaled = |t: &Option<Tensor>, need: bool| -> Result<Option<Tensor>> {
            match t {
                Some(t) if need => Ok(Some(ew::scale_by(t, &g)?)),
                _ => Ok(None),
            }
        };
        Ok(vec![scaled(&dh, needs[0])?, scaled(&dw, needs[1])?])
    });
    h.tape().record1(&[h, w], loss, backward)
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
