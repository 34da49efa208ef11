//! Attention with the scores materialized (the straightforward, correct version): grouped-query
//! heads, a scale, and masks for causal, sliding-window, bidirectional image blocks and padding.
//! `O = softmax(scale · Q·Kᵀ, mask) · V`, built from matmul, the masked softmax and repeat_kv;
//! the backward keeps the probabilities from the forward. Memory is O(T·S) per head: a fused
//! (flash) kernel belongs beside this one, tested against it.
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_kernels::attention::{attention, attention_backward, AttentionMask};
//! let dev = Device::cpu().unwrap();
//! // 1 batch, 2 query heads sharing 1 kv head, 3 tokens, head dim 2, causal.
//! let q = Tensor::from_f32(&dev, &[0.1; 12], &[1, 2, 3, 2], DType::F32).unwrap();
//! let kv = Tensor::from_f32(&dev, &[1., 0., 0., 1., 1., 1.], &[1, 1, 3, 2], DType::F32).unwrap();
//! let (out, saved) = attention(&q, &kv, &kv, 0.5, &AttentionMask::causal()).unwrap();
//! // The first token sees only itself.
//! assert_eq!(&out.to_f32_vec().unwrap()[..2], &[1.0, 0.0]);
//! let g = attention_backward(&q, &saved, &out, 0.5).unwrap();
//! assert_eq!(g.k.shape(), &[1, 1, 3, 2]);
//! ```

mod mask;
pub mod reference;
mod repeat_kv;
mod softmax;

pub use mask::AttentionMask;
pub use repeat_kv::{repeat_kv, repeat_kv_backward};
pub use softmax::{masked_softmax, masked_softmax_backward};

use crate::matmul::{matmul, matmul_backward};
use lapidary_core::{Error, Result, Tensor};

/// What the attention backward needs from the forward.
#[derive(Debug, Clone)]
pub struct AttentionSaved {
    /// Keys and values repeated to the query heads, `[B, H, S, D]`.
    pub k: Tensor,
    /// See `k`.
    pub v: Tensor,
    /// Softmax probabilities, `[B, H, T, S]`.
    pub probs: Tensor,
    /// Query heads per key/value head.
    pub groups: usize,
}

/// Gradients of attention with respect to q, k and v (k and v in their `Hkv` layout).
#[derive(Debug)]
pub struct AttentionGrads {
    /// `[B, H, T, D]`.
    pub q: Tensor,
    /// `[B, Hkv, S, D]`.
    pub k: Tensor,
    /// `[B, Hkv, S, D]`.
    pub v: Tensor,
}

/// Multi-head attention. `q: [B, H, T, D]`, `k, v: [B, Hkv, S, D]` with `H` a multiple of `Hkv`.
/// Returns `[B, H, T, D]` and what the backward needs.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: &AttentionMask,
) -> Result<(Tensor, AttentionSaved)> {
    if q.rank() != 4 {
        return Err(Error::shape("attention: q", "[B, H, T, D]", q.shape()));
    }
    let (b, h, _, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    if k.rank() != 4 || k.dim(0) != b || k.dim(3) != d || k.dim(1) == 0 || h % k.dim(1) != 0 {
        return Err(Error::shape("attention: k", format!("[{b}, Hkv, S, {d}] with {h} divisible by Hkv"), k.shape()));
    }
    v.expect_shape("attention: v (as k)", k.shape())?;
    let groups = h / k.dim(1);
    let kr = repeat_kv(k, groups)?;
    let vr = repeat_kv(v, groups)?;
    let scores = matmul(q, &kr, None, false, true)?;
    let probs = masked_softmax(&scores, scale, mask)?;
    let out = matmul(&probs, &vr, None, false, false)?;
    Ok((out, AttentionSaved { k: kr, v: vr, probs, groups }))
}

/// Backward of [`attention`] given `dout: [B, H, T, D]`.
pub fn attention_backward(q: &Tensor, saved: &AttentionSaved, dout: &Tensor, scale: f32) -> Result<AttentionGrads> {
    dout.expect_shape("attention_backward: dout", q.shape())?;
    // out = P·V
    let g1 = matmul_backward(&saved.probs, &saved.v, dout, false, false, true, true, false)?;
    let dprobs = g1.a.expect("asked for");
    let dv = g1.b.expect("asked for");
    let dscores = masked_softmax_backward(&saved.probs, &dprobs, scale)?;
    // scores = Q·Kᵀ
    let g2 = matmul_backward(q, &saved.k, &dscores, false, true, true, true, false)?;
    Ok(AttentionGrads {
        q: g2.a.expect("asked for"),
        k: repeat_kv_backward(&g2.b.expect("asked for"), saved.groups)?,
        v: repeat_kv_backward(&dv, saved.groups)?,
    })
}

#[cfg(test)]
mod tests;
