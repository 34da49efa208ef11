//! Gemma 3's multimodal projector, as HF computes it: the vision tower's `[N, P, Cv]` patch
//! features, seen as a `side × side` grid, average-pooled (kernel = stride = side / √mm_tokens)
//! to `mm_tokens_per_image` tokens, normalized by a Gemma RMSNorm `(1 + w)` with the vision
//! epsilon, then multiplied by `mm_input_projection_weight` (`[Cv, Ct]`, used as `x @ W`, not a
//! Linear).

use lapidary_autograd::{Tape, Trainable, Var, ops};
use lapidary_core::{Error, Result};
use lapidary_nn::Weights;

/// The projector from vision features to text embeddings.
pub struct MultiModalProjector {
    norm: Var,
    projection: Var,
    pool: usize,
    eps: f32,
}

impl MultiModalProjector {
    /// Loads `{prefix}mm_soft_emb_norm.weight` (`[vision_hidden]`) and
    /// `{prefix}mm_input_projection_weight` (`[vision_hidden, text_hidden]`).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        prefix: &str,
        vision_hidden: usize,
        text_hidden: usize,
        patch_grid: usize,
        mm_tokens_per_image: usize,
        vision_eps: f64,
        tape: &Tape,
        trainable: Trainable,
    ) -> Result<Self> {
        let side = (mm_tokens_per_image as f64).sqrt() as usize;
        if side * side != mm_tokens_per_image || side == 0 || !patch_grid.is_multiple_of(side) {
            return Err(Error::invalid(format!(
                "mm_tokens_per_image {mm_tokens_per_image} must be a perfect square whose side divides the patch grid side {patch_grid}"
            )));
        }
        let norm_name = format!("{prefix}mm_soft_emb_norm.weight");
        let proj_name = format!("{prefix}mm_input_projection_weight");
        Ok(MultiModalProjector {
            norm: w.param(tape, &norm_name, &[vision_hidden], trainable)?,
            projection: w.param(tape, &proj_name, &[vision_hidden, text_hidden], trainable)?,
            pool: patch_grid / side,
            eps: vision_eps as f32,
        })
    }

    /// `[N, P, Cv] -> [N, mm_tokens_per_image, Ct]`.
    pub fn forward(&self, vision: &Var) -> Result<Var> {
        let pooled = ops::avg_pool(vision, self.pool)?;
        let normed = ops::rms_norm(&pooled, &self.norm, self.eps)?;
        ops::matmul(&normed, &self.projection, None, false, false)
    }

    /// The projector's parameters (norm weight, projection weight).
    pub fn params(&self) -> Vec<Var> {
        vec![self.norm.clone(), self.projection.clone()]
    }
}
