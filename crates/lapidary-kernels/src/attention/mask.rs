//! The attention mask, described rather than materialized: causal, sliding window
//! (`q - window < k <= q`), bidirectional blocks (tokens of one image see each other), key padding.
//! The softmax kernel evaluates it per score. Not a dense mask tensor.

use lapidary_core::{Result, Tensor};

/// Which keys each query may see. A query at absolute position `q` sees key `k` when
/// `(k <= q [causal] and q - k < window [sliding]) or (block[q] > 0 and block[q] == block[k])`,
/// and key `k` is not padding. A query that sees no key (e.g. a padding query whose whole
/// sliding window is padding) gets all-zero probabilities, hence a zero output and no gradient,
/// as HF's default SDPA attention gives (HF's eager attention would attend uniformly instead).
#[derive(Clone, Debug, Default)]
pub struct AttentionMask {
    /// Only keys at or before the query.
    pub causal: bool,
    /// Sliding window length (a query sees at most this many keys back, itself included).
    pub window: Option<usize>,
    /// `[B, S]` f32 block ids over key positions (0 = none; equal positive ids form a
    /// bidirectional block, e.g. one image's tokens). Queries use the ids at their own position.
    pub blocks: Option<Tensor>,
    /// `[B, S]` f32, 1 for real keys and 0 for padding.
    pub key_padding: Option<Tensor>,
    /// Absolute position of the first query (keys start at 0): non-zero with a KV cache.
    pub q_offset: usize,
}

impl AttentionMask {
    /// Causal attention (Gemma's global layers).
    pub fn causal() -> Self {
        AttentionMask { causal: true, ..Default::default() }
    }

    /// Causal attention within a sliding window (Gemma's local layers).
    pub fn sliding(window: usize) -> Self {
        AttentionMask { causal: true, window: Some(window), ..Default::default() }
    }

    /// Full bidirectional attention (SigLIP).
    pub fn full() -> Self {
        AttentionMask::default()
    }

    /// The same mask with bidirectional blocks.
    pub fn with_blocks(mut self, blocks: Tensor) -> Self {
        self.blocks = Some(blocks);
        self
    }

    /// The same mask with key padding.
    pub fn with_key_padding(mut self, keep: Tensor) -> Self {
        self.key_padding = Some(keep);
        self
    }

    pub(crate) fn check(&self, batch: usize, s: usize) -> Result<()> {
        if let Some(b) = &self.blocks {
            b.expect_shape("attention mask: blocks", &[batch, s])?;
        }
        if let Some(p) = &self.key_padding {
            p.expect_shape("attention mask: key_padding", &[batch, s])?;
        }
        Ok(())
    }

    /// Whether query `q` (absolute) of batch row `b` sees key `k`, given host copies of the
    /// block ids and padding: the reference definition the kernel is tested against.
    pub fn allows(
        &self,
        blocks: Option<&[f32]>,
        keep: Option<&[f32]>,
        s_len: usize,
        b: usize,
        q: usize,
        k: usize,
    ) -> bool {
        let mut ok = !self.causal || k <= q;
        if let Some(w) = self.window {
            ok &= q < k + w;
        }
        if let Some(bl) = blocks {
            let (bq, bk) = (bl[b * s_len + q.min(s_len - 1)], bl[b * s_len + k]);
            ok |= bq > 0.0 && bq == bk && q < s_len;
        }
        if let Some(kp) = keep {
            ok &= kp[b * s_len + k] > 0.0;
        }
        ok
    }
}
