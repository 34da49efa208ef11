//! The SigLIP vision transformer as HF's `SiglipVisionModel` computes it (no pooling head, as in
//! Gemma 3): patch embedding (a stride-p convolution done as im2col + matmul) plus learned
//! positions, pre-LN encoder layers (biased q/k/v/out projections, full bidirectional attention,
//! gelu-tanh MLP), then `post_layernorm`. Parameters keep HF's names under a prefix. Each layer
//! can run as a checkpointed segment that receives its parameters explicitly.

use crate::SiglipVisionConfig;
use lapidary_autograd::{Var, ops};
use lapidary_core::Result;
use lapidary_kernels::attention::AttentionMask;
use lapidary_kernels::matmul::Layout;
use lapidary_nn::{Checkpointing, Layer, Linear, ParamFn, Scope, checkpointed, map_within};

/// One pre-LN encoder layer.
#[derive(Clone)]
pub struct EncoderLayer {
    layer_norm1: (Var, Var),
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: (Var, Var),
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    eps: f32,
}

/// The SigLIP vision tower.
pub struct SiglipVisionModel {
    cfg: SiglipVisionConfig,
    patch_weight: Var,
    patch_bias: Var,
    positions: Var,
    layers: Vec<EncoderLayer>,
    post_layernorm: (Var, Var),
}

fn layer_norm(s: &Scope<'_>, dim: usize) -> Result<(Var, Var)> {
    Ok((s.param("weight", &[dim])?, s.param("bias", &[dim])?))
}

impl EncoderLayer {
    fn load(cfg: &SiglipVisionConfig, s: &Scope<'_>) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (attn, mlp) = (s.at("self_attn"), s.at("mlp"));
        Ok(EncoderLayer {
            layer_norm1: layer_norm(&s.at("layer_norm1"), h)?,
            q_proj: attn.linear_with_bias("q_proj", h, h)?,
            k_proj: attn.linear_with_bias("k_proj", h, h)?,
            v_proj: attn.linear_with_bias("v_proj", h, h)?,
            out_proj: attn.linear_with_bias("out_proj", h, h)?,
            layer_norm2: layer_norm(&s.at("layer_norm2"), h)?,
            fc1: mlp.linear_with_bias("fc1", i, h)?,
            fc2: mlp.linear_with_bias("fc2", h, i)?,
            heads: cfg.num_attention_heads,
            eps: cfg.layer_norm_eps as f32,
        })
    }

    /// The layer's linears (q, k, v, out projections, fc1, fc2), to attach adapters to.
    pub fn linears_mut(&mut self) -> [&mut Linear; 6] {
        [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj, &mut self.out_proj, &mut self.fc1, &mut self.fc2]
    }
}

impl Layer for EncoderLayer {
    fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self> {
        let norm = |name: &str, (w, b): &(Var, Var), f: &mut ParamFn<'_>| -> Result<(Var, Var)> {
            Ok((f(&format!("{name}.weight"), w)?, f(&format!("{name}.bias"), b)?))
        };
        Ok(EncoderLayer {
            layer_norm1: norm("layer_norm1", &self.layer_norm1, f)?,
            q_proj: map_within("self_attn.q_proj", &self.q_proj, f)?,
            k_proj: map_within("self_attn.k_proj", &self.k_proj, f)?,
            v_proj: map_within("self_attn.v_proj", &self.v_proj, f)?,
            out_proj: map_within("self_attn.out_proj", &self.out_proj, f)?,
            layer_norm2: norm("layer_norm2", &self.layer_norm2, f)?,
            fc1: map_within("mlp.fc1", &self.fc1, f)?,
            fc2: map_within("mlp.fc2", &self.fc2, f)?,
            ..self.clone()
        })
    }
}

impl EncoderLayer {
    /// `[N, P, C] -> [N, P, C]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let (n, p, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let d = c / self.heads;
        let h = ops::layer_norm(x, &self.layer_norm1.0, &self.layer_norm1.1, self.eps)?;
        let heads =
            |l: &Linear| -> Result<Var> { ops::swap_middle(&ops::reshape(&l.forward(&h)?, &[n, p, self.heads, d])?) };
        let att = ops::attention(
            &heads(&self.q_proj)?,
            &heads(&self.k_proj)?,
            &heads(&self.v_proj)?,
            (d as f32).powf(-0.5),
            &AttentionMask::full(),
        )?;
        let att = ops::reshape(&ops::swap_middle(&att)?, &[n, p, c])?;
        let x = ops::add(x, &self.out_proj.forward(&att)?)?;
        let h = ops::layer_norm(&x, &self.layer_norm2.0, &self.layer_norm2.1, self.eps)?;
        let mlp = self.fc2.forward(&ops::gelu_tanh(&self.fc1.forward(&h)?)?)?;
        ops::add(&x, &mlp)
    }
}

impl SiglipVisionModel {
    /// Loads the tower from `scope` (HF names below it: `embeddings...`,
    /// `encoder.layers.N...`, `post_layernorm...`; e.g. the scope `vision_tower` of a Gemma 3
    /// checkpoint), registering its parameters as the scope says.
    pub fn load(cfg: &SiglipVisionConfig, scope: &Scope<'_>) -> Result<Self> {
        let (h, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let (embeddings, patch) = (scope.at("embeddings"), scope.at("embeddings").at("patch_embedding"));
        // Conv weight [h, c, p, p] used as a matmul weight [h, c·p·p] (same bytes).
        let patch_weight = scope.tape().param(
            patch.name("weight"),
            patch.tensor("weight", &[h, c, p, p])?.reshape(&[h, c * p * p])?,
            scope.trainable(),
        );
        let layers = scope.at("encoder").at("layers");
        Ok(SiglipVisionModel {
            cfg: cfg.clone(),
            patch_weight,
            patch_bias: patch.param("bias", &[h])?,
            positions: embeddings.at("position_embedding").param("weight", &[cfg.num_patches(), h])?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::load(cfg, &layers.at(i)))
                .collect::<Result<_>>()?,
            post_layernorm: layer_norm(&scope.at("post_layernorm"), h)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SiglipVisionConfig {
        &self.cfg
    }

    /// The encoder layers.
    pub fn layers(&self) -> &[EncoderLayer] {
        &self.layers
    }

    /// The encoder layers (their linears take adapters).
    pub fn layers_mut(&mut self) -> &mut [EncoderLayer] {
        &mut self.layers
    }

    /// `pixel_values: [N, C, H, W]` -> last hidden state `[N, patches, hidden]` (after
    /// `post_layernorm`). With `checkpointing`, each layer is recomputed during backward.
    pub fn forward(&self, pixels: &Var, checkpointing: Checkpointing) -> Result<Var> {
        let patches = ops::im2col(pixels, self.cfg.patch_size)?;
        let x = ops::matmul(&patches, &self.patch_weight, Some(&self.patch_bias), Layout::ABt)?;
        let mut x = ops::add(&x, &self.positions)?;
        for layer in &self.layers {
            x = checkpointed(layer, &x, checkpointing, |l, x| l.forward(x))?;
        }
        ops::layer_norm(&x, &self.post_layernorm.0, &self.post_layernorm.1, self.cfg.layer_norm_eps as f32)
    }
}
