//! Gemma 3's multimodal projector, as HF computes it: the vision tower's `[N, P, Cv]` patch
//! features, seen as a `side × side` grid, average-pooled (kernel = stride = side / √mm_tokens)
//! to `mm_tokens_per_image` tokens, normalized by a Gemma RMSNorm `(1 + w)` with the vision
//! epsilon, then multiplied by `mm_input_projection_weight` (`[Cv, Ct]`, used as `x @ W`, not a
//! Linear).

use crate::config::Gemma3Config;
use lapidary_autograd::{Var, ops};
use lapidary_core::{Error, Result};
use lapidary_kernels::matmul::Layout;
use lapidary_nn::Scope;

/// The projector from vision features to text embeddings.
pub struct MultiModalProjector {
    norm: Var,
    projection: Var,
    pool: usize,
    eps: f32,
}

impl MultiModalProjector {
    /// Loads `mm_soft_emb_norm.weight` (`[vision_hidden]`) and `mm_input_projection_weight`
    /// (`[vision_hidden, text_hidden]`) below `scope`, for `cfg`'s tower, pooling and text width.
    pub fn load(cfg: &Gemma3Config, scope: &Scope<'_>) -> Result<Self> {
        let vision = cfg.vision.as_ref().ok_or_else(|| Error::invalid("projector: the model has no vision tower"))?;
        // mm_tokens_per_image is a perfect square whose side divides the patch grid's.
        cfg.validate_multimodal()?;
        let side = (1..).find(|s| s * s >= cfg.mm_tokens_per_image).expect("a square root");
        Ok(MultiModalProjector {
            norm: scope.at("mm_soft_emb_norm").param("weight", &[vision.hidden_size])?,
            projection: scope.param("mm_input_projection_weight", &[vision.hidden_size, cfg.text.hidden_size])?,
            pool: vision.grid() / side,
            eps: vision.layer_norm_eps as f32,
        })
    }

    /// `[N, P, Cv] -> [N, mm_tokens_per_image, Ct]`.
    pub fn forward(&self, vision: &Var) -> Result<Var> {
        let pooled = ops::avg_pool(vision, self.pool)?;
        let normed = ops::gemma_rms_norm(&pooled, &self.norm, self.eps)?;
        ops::matmul(&normed, &self.projection, None, Layout::AB)
    }
}
