//! The attention mask, described rather than materialized: causal, sliding window
//! (`q - window < k <= q`), bidirectional blocks (tokens of one image see each other), key padding,
//! and segments (several sequences packed in one row never see each other), with blocks either
//! reaching past the window (Gemma 3) or bounded by it (Gemma 4). The kernels evaluate it per
//! score (`flash_mask.rs`). Not a dense mask tensor.

use lapidary_core::{Result, Tensor};

/// Which keys each query may see. A query at absolute position `q` sees key `k` when
/// `(k <= q [causal] and q - k < window [sliding]) or (block[q] > 0 and block[q] == block[k])`,
/// and key `k` is not padding, and `segment[q] == segment[k]`. With `blocks_in_window` the
/// window bounds the blocks too: `q - k < window and (k <= q or same block)`, as Gemma 4's
/// sliding layers compose them (a block key further back than the window is not seen). A query that sees no key (e.g. a padding query whose whole
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
    /// The sliding window also bounds the blocks (Gemma 4); `false`: a block is seen whole
    /// whatever the window (Gemma 3). No effect without both a window and blocks.
    pub blocks_in_window: bool,
    /// `[B, S]` f32, 1 for real keys and 0 for padding.
    pub key_padding: Option<Tensor>,
    /// `[B, S]` f32 segment ids over key positions: a query sees only keys of its own segment
    /// (several conversations packed in one row). Queries use the ids at their own position.
    /// See [`segments_from_positions`].
    pub segments: Option<Tensor>,
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

    /// The same mask with the window bounding its blocks (see [`AttentionMask::blocks_in_window`]).
    pub fn with_blocks_in_window(mut self) -> Self {
        self.blocks_in_window = true;
        self
    }

    /// The same mask with key padding.
    pub fn with_key_padding(mut self, keep: Tensor) -> Self {
        self.key_padding = Some(keep);
        self
    }

    /// The same mask with segments.
    pub fn with_segments(mut self, segments: Tensor) -> Self {
        self.segments = Some(segments);
        self
    }

    pub(crate) fn check(&self, batch: usize, s: usize) -> Result<()> {
        if let Some(b) = &self.blocks {
            b.expect_shape("attention mask: blocks", &[batch, s])?;
        }
        if let Some(p) = &self.key_padding {
            p.expect_shape("attention mask: key_padding", &[batch, s])?;
        }
        if let Some(p) = &self.segments {
            p.expect_shape("attention mask: segments", &[batch, s])?;
        }
        for (name, t) in [("blocks", &self.blocks), ("key_padding", &self.key_padding), ("segments", &self.segments)] {
            if let Some(t) = t
                && t.dtype() != lapidary_core::DType::F32
            {
                return Err(lapidary_core::Error::DType {
                    context: format!("attention mask: {name}"),
                    expected: "f32".into(),
                    got: t.dtype(),
                });
            }
        }
        Ok(())
    }

    /// Whether query `q` (absolute) of batch row `b` sees key `k`, given host copies of the
    /// block ids, padding and segment ids: the reference definition the kernels are tested
    /// against.
    #[allow(clippy::too_many_arguments)]
    pub fn allows(
        &self,
        blocks: Option<&[f32]>,
        keep: Option<&[f32]>,
        segments: Option<&[f32]>,
        s_len: usize,
        b: usize,
        q: usize,
        k: usize,
    ) -> bool {
        let in_window = self.window.is_none_or(|w| q < k + w);
        let mut ok = (!self.causal || k <= q) && in_window;
        if let Some(bl) = blocks {
            let (bq, bk) = (bl[b * s_len + q.min(s_len - 1)], bl[b * s_len + k]);
            ok |= bq > 0.0 && bq == bk && q < s_len && (in_window || !self.blocks_in_window);
        }
        if let Some(kp) = keep {
            ok &= kp[b * s_len + k] > 0.0;
        }
        if let Some(sg) = segments {
            ok &= q < s_len && sg[b * s_len + q] == sg[b * s_len + k];
        }
        ok
    }
}

/// Segment ids `[B, T]` (f32) from position ids `[B, T]` (row-major): a segment starts at the
/// first token of a row and wherever the position is 0 (the convention of padding-free
/// collators), and ids count up from 0 along each row.
pub fn segments_from_positions(position_ids: &[i64], batch: usize, t: usize) -> Vec<f32> {
    let mut ids = vec![0f32; batch * t];
    for b in 0..batch {
        let mut id = 0f32;
        for i in 0..t {
            if i > 0 && position_ids[b * t + i] == 0 {
                id += 1.0;
            }
            ids[b * t + i] = id;
        }
    }
    ids
}
