//! Layer-level ops: Gemma's RMSNorm (`1 + w`), RMSNorm, LayerNorm, RoPE and masked grouped-query
//! attention.

use super::upstream;
use crate::Var;
use lapidary_core::{Result, Tensor};
use lapidary_kernels::{attention as at, norm as nm, rope as rp};

/// Gemma's RMSNorm `x * rsqrt(mean(x²) + eps) * (1 + w)` over the last axis (Gemma 1-3).
pub fn gemma_rms_norm(x: &Var, w: &Var, eps: f32) -> Result<Var> {
    rms_norm_of(x, w, eps, nm::NormKind::GemmaRms)
}

/// RMSNorm `x * rsqrt(mean(x²) + eps) * w` over the last axis (Gemma 4, Llama, ...).
pub fn rms_norm(x: &Var, w: &Var, eps: f32) -> Result<Var> {
    rms_norm_of(x, w, eps, nm::NormKind::Rms)
}

fn rms_norm_of(x: &Var, w: &Var, eps: f32, kind: nm::NormKind) -> Result<Var> {
    let gemma = kind == nm::NormKind::GemmaRms;
    let out =
        if gemma { nm::gemma_rms_norm(x.value(), w.value(), eps)? } else { nm::rms_norm(x.value(), w.value(), eps)? };
    let (xv, wv) = (x.value().clone(), w.value().clone());
    x.tape().record1(
        &[x, w],
        out,
        Box::new(move |outs, needs| {
            let dy = upstream(outs);
            let g = if gemma {
                nm::gemma_rms_norm_backward(&xv, &wv, &dy, eps, needs[1])?
            } else {
                nm::rms_norm_backward(&xv, &wv, &dy, eps, needs[1])?
            };
            Ok(vec![needs[0].then_some(g.x), g.weight])
        }),
    )
}

/// LayerNorm with weight and bias over the last axis.
pub fn layer_norm(x: &Var, w: &Var, b: &Var, eps: f32) -> Result<Var> {
    let out = nm::layer_norm(x.value(), w.value(), b.value(), eps)?;
    let (xv, wv) = (x.value().clone(), w.value().clone());
    x.tape().record1(
        &[x, w, b],
        out,
        Box::new(move |outs, needs| {
            let g = nm::layer_norm_backward(&xv, &wv, &upstream(outs), eps, needs[1] || needs[2])?;
            Ok(vec![
                needs[0].then_some(g.x),
                if needs[1] { g.weight } else { None },
                if needs[2] { g.bias } else { None },
            ])
        }),
    )
}

/// Rotate-half RoPE of `x: [B, H, T, D]` with constant tables `[1 or B, T, D]`.
pub fn rope(x: &Var, cos: &Tensor, sin: &Tensor) -> Result<Var> {
    let out = rp::rope(x.value(), cos, sin)?;
    let (c, s) = (cos.clone(), sin.clone());
    x.tape().record1(&[x], out, Box::new(move |outs, _| Ok(vec![Some(rp::rope_backward(&upstream(outs), &c, &s)?)])))
}

/// [`rope`] over `parts` equal sections of the head, each rotated within itself (Gemma 4's 2D
/// RoPE of image patches with 2 parts).
pub fn rope_parts(x: &Var, cos: &Tensor, sin: &Tensor, parts: usize) -> Result<Var> {
    let out = rp::rope_parts(x.value(), cos, sin, parts)?;
    let (c, s) = (cos.clone(), sin.clone());
    x.tape().record1(
        &[x],
        out,
        Box::new(move |outs, _| Ok(vec![Some(rp::rope_parts_backward(&upstream(outs), &c, &s, parts)?)])),
    )
}

/// Masked grouped-query attention of `q: [B, H, T, D]` over `k, v: [B, Hkv, S, D]`.
pub fn attention(q: &Var, k: &Var, v: &Var, scale: f32, mask: &at::AttentionMask) -> Result<Var> {
    let (out, saved) = at::attention(q.value(), k.value(), v.value(), scale, mask)?;
    let qv = q.value().clone();
    q.tape().record1(
        &[q, k, v],
        out,
        Box::new(move |outs, needs| {
            let g = at::attention_backward(&qv, &saved, &upstream(outs), scale)?;
            Ok(vec![needs[0].then_some(g.q), needs[1].then_some(g.k), needs[2].then_some(g.v)])
        }),
    )
}
