//! Masked grouped-query attention `O = softmax(scale · Q·Kᵀ, mask) · V`, forward and backward,
//! two ways behind one entry. Fused (flash): the scores never leave the kernel, K/V heads are
//! shared by indexing, the forward saves only O and the log-sum-exp, memory O(T·D); in the CPU's
//! shape (`flash.rs` / `flash_backward.rs`: a unit per four query rows, keys in vector lanes) or
//! the GPU's (`flash_tiled.rs` / `flash_tiled_backward.rs`: tiles in shared memory, tensor
//! cores). Materialized (the reference): matmul, the masked softmax and
//! repeat_kv, keeping the `[B, H, T, S]` probabilities for the backward, memory O(T·S) per head.
//! [`attention`] picks by [`AttentionPath::Auto`]; masks: causal, sliding window, bidirectional
//! image blocks, padding, packed segments (see [`AttentionMask`]).
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

mod flash;
mod flash_backward;
mod flash_lanes;
mod flash_mask;
mod flash_tiled;
mod flash_tiled_backward;
mod mask;
pub mod reference;
mod repeat_kv;
mod softmax;

pub use mask::{AttentionMask, segments_from_positions};
pub use repeat_kv::{repeat_kv, repeat_kv_backward};
pub use softmax::{masked_softmax, masked_softmax_backward};

use crate::matmul::{Layout, Needs, matmul, matmul_backward};
use lapidary_core::{Error, Result, Tensor};

/// Which implementation [`attention_with`] runs (`Auto` as [`lapidary_core::settings`] says:
/// `LAPIDARY_ATTENTION=flash|tiled|materialized` or `Settings::attention`, else by device).
pub use lapidary_core::settings::AttentionPath;

/// The path `path` resolves to on a CPU or a GPU: `Auto` takes the settings' path, and where
/// that is `Auto` too, the CPU-shaped fused kernels on the CPU and the GPU-shaped ones on GPUs.
fn resolve(path: AttentionPath, cpu: bool) -> AttentionPath {
    let chosen = if path == AttentionPath::Auto { lapidary_core::settings().attention } else { path };
    match chosen {
        AttentionPath::Auto if cpu => AttentionPath::Flash,
        AttentionPath::Auto => AttentionPath::Tiled,
        p => p,
    }
}

/// What the attention backward needs from the forward.
#[derive(Debug, Clone)]
pub struct AttentionSaved {
    inner: Saved,
}

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per attention call
enum Saved {
    Materialized {
        /// Keys and values repeated to the query heads, `[B, H, S, D]`.
        k: Tensor,
        v: Tensor,
        /// Softmax probabilities, `[B, H, T, S]`.
        probs: Tensor,
        /// Query heads per key/value head.
        groups: usize,
    },
    Flash {
        /// Keys and values as given, `[B, Hkv, S, D]`.
        k: Tensor,
        v: Tensor,
        /// The forward's output and log-sum-exp per row.
        out: Tensor,
        lse: Tensor,
        mask: AttentionMask,
        /// Whether the GPU-shaped kernels ran (the backward then takes them too where they fit).
        tiled: bool,
    },
}

impl AttentionSaved {
    /// The probabilities `[B, H, T, S]`, kept by the materialized path only.
    pub fn probs(&self) -> Option<&Tensor> {
        match &self.inner {
            Saved::Materialized { probs, .. } => Some(probs),
            Saved::Flash { .. } => None,
        }
    }

    /// Log-sum-exp of each query row's scores `[B, H, T]` (f32), kept by the fused path only.
    pub fn log_sum_exp(&self) -> Option<&Tensor> {
        match &self.inner {
            Saved::Flash { lse, .. } => Some(lse),
            Saved::Materialized { .. } => None,
        }
    }
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
/// Returns `[B, H, T, D]` and what the backward needs. Runs [`AttentionPath::Auto`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: &AttentionMask,
) -> Result<(Tensor, AttentionSaved)> {
    attention_with(q, k, v, scale, mask, AttentionPath::Auto)
}

/// [`attention`] on the path given.
pub fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: &AttentionMask,
    path: AttentionPath,
) -> Result<(Tensor, AttentionSaved)> {
    if q.rank() != 4 {
        return Err(Error::shape("attention: q", "[B, H, T, D]", q.shape()));
    }
    let (b, h, _, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    if k.rank() != 4 || k.dim(0) != b || k.dim(3) != d || k.dim(1) == 0 || h % k.dim(1) != 0 {
        return Err(Error::shape("attention: k", format!("[{b}, Hkv, S, {d}] with {h} divisible by Hkv"), k.shape()));
    }
    v.expect_shape("attention: v (as k)", k.shape())?;
    for (name, t) in [("k", k), ("v", v)] {
        if t.dtype() != q.dtype() {
            return Err(Error::DType {
                context: format!("attention: {name}"),
                expected: format!("{} (as q)", q.dtype()),
                got: t.dtype(),
            });
        }
    }
    mask.check(b, k.dim(2))?;
    let path = resolve(path, q.device().is_cpu());
    if path != AttentionPath::Materialized {
        let tiled = if path == AttentionPath::Tiled { flash_tiled::forward_shape(q) } else { None };
        let (out, lse) = match tiled {
            Some(shape) => flash_tiled::tiled_forward(q, k, v, scale, mask, shape)?,
            None => flash::flash_forward(q, k, v, scale, mask)?,
        };
        let inner = Saved::Flash {
            k: k.clone(),
            v: v.clone(),
            out: out.clone(),
            lse,
            mask: mask.clone(),
            tiled: tiled.is_some(),
        };
        return Ok((out, AttentionSaved { inner }));
    }
    let groups = h / k.dim(1);
    let kr = repeat_kv(k, groups)?;
    let vr = repeat_kv(v, groups)?;
    let scores = matmul(q, &kr, None, Layout::ABt)?;
    let probs = masked_softmax(&scores, scale, mask)?;
    let out = matmul(&probs, &vr, None, Layout::AB)?;
    Ok((out, AttentionSaved { inner: Saved::Materialized { k: kr, v: vr, probs, groups } }))
}

/// Backward of [`attention`] given `dout: [B, H, T, D]`.
pub fn attention_backward(q: &Tensor, saved: &AttentionSaved, dout: &Tensor, scale: f32) -> Result<AttentionGrads> {
    dout.expect_shape("attention_backward: dout", q.shape())?;
    let (k, v, probs, groups) = match &saved.inner {
        Saved::Flash { k, v, out, lse, mask, tiled } => {
            return if *tiled {
                flash_tiled_backward::tiled_backward(q, k, v, out, lse, dout, scale, mask)
            } else {
                flash_backward::flash_backward(q, k, v, out, lse, dout, scale, mask)
            };
        }
        Saved::Materialized { k, v, probs, groups } => (k, v, probs, *groups),
    };
    // out = P·V
    let g1 = matmul_backward(probs, v, dout, Layout::AB, Needs::OPERANDS)?;
    let dprobs = g1.a.expect("asked for");
    let dv = g1.b.expect("asked for");
    let dscores = masked_softmax_backward(probs, &dprobs, scale)?;
    // scores = Q·Kᵀ
    let g2 = matmul_backward(q, k, &dscores, Layout::ABt, Needs::OPERANDS)?;
    Ok(AttentionGrads {
        q: g2.a.expect("asked for"),
        k: repeat_kv_backward(&g2.b.expect("asked for"), groups)?,
        v: repeat_kv_backward(&dv, groups)?,
    })
}

#[cfg(test)]
mod tests;
