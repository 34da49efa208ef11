//! The SigLIP vision transformer as HF's `SiglipVisionModel` computes it (no pooling head, as in
//! Gemma 3): patch embedding (a stride-p convolution done as im2col + matmul) plus learned
//! positions, pre-LN encoder layers (biased q/k/v/out projections, full bidirectional attention,
//! gelu-tanh MLP), then `post_layernorm`. Parameters keep HF's names under a prefix. Each layer
//! can run as a checkpointed segment that receives its parameters explicitly.

use crate::SiglipVisionConfig;
use lapidary_autograd::{Tape, Trainable, Var, ops};
use lapidary_core::{Error, Result};
use lapidary_kernels::attention::AttentionMask;
use lapidary_nn::{Layer, Linear, Weights, checkpointed, rebind_all};

/// One pre-LN encoder layer.
#[derive(Clone)]
pub struct EncoderLayer {
    ln1: (Var, Var),
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: (Var, Var),
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
    post: (Var, Var),
}

fn layer_norm(w: &Weights, tape: &Tape, path: &str, dim: usize, t: Trainable) -> Result<(Var, Var)> {
    Ok((w.param(tape, &format!("{path}.weight"), &[dim], t)?, w.param(tape, &format!("{path}.bias"), &[dim], t)?))
}

fn linear(w: &Weights, tape: &Tape, path: &str, out: usize, inp: usize, t: Trainable) -> Result<Linear> {
    Linear::load(w, tape, path, out, inp, true, t)
}

impl EncoderLayer {
    fn load(cfg: &SiglipVisionConfig, w: &Weights, tape: &Tape, p: &str, t: Trainable) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(EncoderLayer {
            ln1: layer_norm(w, tape, &format!("{p}.layer_norm1"), h, t)?,
            q: linear(w, tape, &format!("{p}.self_attn.q_proj"), h, h, t)?,
            k: linear(w, tape, &format!("{p}.self_attn.k_proj"), h, h, t)?,
            v: linear(w, tape, &format!("{p}.self_attn.v_proj"), h, h, t)?,
            out: linear(w, tape, &format!("{p}.self_attn.out_proj"), h, h, t)?,
            ln2: layer_norm(w, tape, &format!("{p}.layer_norm2"), h, t)?,
            fc1: linear(w, tape, &format!("{p}.mlp.fc1"), i, h, t)?,
            fc2: linear(w, tape, &format!("{p}.mlp.fc2"), h, i, t)?,
            heads: cfg.num_attention_heads,
            eps: cfg.layer_norm_eps as f32,
        })
    }

    fn linears(&self) -> [&Linear; 6] {
        [&self.q, &self.k, &self.v, &self.out, &self.fc1, &self.fc2]
    }

    /// The layer's linears (q, k, v, out projections, fc1, fc2), to attach adapters to.
    pub fn linears_mut(&mut self) -> [&mut Linear; 6] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.out, &mut self.fc1, &mut self.fc2]
    }
}

impl Layer for EncoderLayer {
    fn params(&self) -> Vec<Var> {
        let mut v = vec![self.ln1.0.clone(), self.ln1.1.clone(), self.ln2.0.clone(), self.ln2.1.clone()];
        for l in self.linears() {
            v.extend(l.params());
        }
        v
    }

    fn rebind(&self, ps: &[Var]) -> Result<Self> {
        let [q, k, v, out, fc1, fc2]: [Linear; 6] = rebind_all(&self.linears(), &ps[4..])?
            .try_into()
            .map_err(|_| Error::invalid("siglip layer: six linears"))?;
        Ok(EncoderLayer {
            ln1: (ps[0].clone(), ps[1].clone()),
            ln2: (ps[2].clone(), ps[3].clone()),
            q,
            k,
            v,
            out,
            fc1,
            fc2,
            heads: self.heads,
            eps: self.eps,
        })
    }
}

impl EncoderLayer {
    /// `[N, P, C] -> [N, P, C]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let (n, p, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let d = c / self.heads;
        let h = ops::layer_norm(x, &self.ln1.0, &self.ln1.1, self.eps)?;
        let heads =
            |l: &Linear| -> Result<Var> { ops::swap_middle(&ops::reshape(&l.forward(&h)?, &[n, p, self.heads, d])?) };
        let att = ops::attention(
            &heads(&self.q)?,
            &heads(&self.k)?,
            &heads(&self.v)?,
            (d as f32).powf(-0.5),
            &AttentionMask::full(),
        )?;
        let att = ops::reshape(&ops::swap_middle(&att)?, &[n, p, c])?;
        let x = ops::add(x, &self.out.forward(&att)?)?;
        let h = ops::layer_norm(&x, &self.ln2.0, &self.ln2.1, self.eps)?;
        let mlp = self.fc2.forward(&ops::gelu_tanh(&self.fc1.forward(&h)?)?)?;
        ops::add(&x, &mlp)
    }
}

impl SiglipVisionModel {
    /// Loads the tower from `w` with parameter names `{prefix}embeddings...`,
    /// `{prefix}encoder.layers.N...`, `{prefix}post_layernorm...` (HF names; e.g. prefix
    /// `vision_tower.`), registering them on `tape` as `trainable` or frozen.
    pub fn load(
        cfg: &SiglipVisionConfig,
        w: &Weights,
        prefix: &str,
        tape: &Tape,
        trainable: Trainable,
    ) -> Result<Self> {
        let (h, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let pw_name = format!("{prefix}embeddings.patch_embedding.weight");
        // Conv weight [h, c, p, p] used as a matmul weight [h, c·p·p] (same bytes).
        let patch_weight =
            tape.param(&pw_name, w.tensor(&pw_name, &[h, c, p, p])?.reshape(&[h, c * p * p])?, trainable);
        let patch_bias = w.param(tape, &format!("{prefix}embeddings.patch_embedding.bias"), &[h], trainable)?;
        let positions = w.param(
            tape,
            &format!("{prefix}embeddings.position_embedding.weight"),
            &[cfg.num_patches(), h],
            trainable,
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(cfg, w, tape, &format!("{prefix}encoder.layers.{i}"), trainable))
            .collect::<Result<Vec<_>>>()?;
        let post = layer_norm(w, tape, &format!("{prefix}post_layernorm"), h, trainable)?;
        Ok(SiglipVisionModel { cfg: cfg.clone(), patch_weight, patch_bias, positions, layers, post })
    }

    /// The configuration.
    pub fn config(&self) -> &SiglipVisionConfig {
        &self.cfg
    }

    /// The encoder layers (their linears take adapters).
    pub fn layers_mut(&mut self) -> &mut [EncoderLayer] {
        &mut self.layers
    }

    /// `pixel_values: [N, C, H, W]` -> last hidden state `[N, patches, hidden]` (after
    /// `post_layernorm`). With `checkpointing`, each layer is recomputed during backward.
    pub fn forward(&self, pixels: &Var, checkpointing: bool) -> Result<Var> {
        let patches = ops::im2col(pixels, self.cfg.patch_size)?;
        let x = ops::matmul(&patches, &self.patch_weight, Some(&self.patch_bias), false, true)?;
        let mut x = ops::add(&x, &self.positions)?;
        for layer in &self.layers {
            x = checkpointed(layer, &x, checkpointing, |l, x| l.forward(x))?;
        }
        ops::layer_norm(&x, &self.post.0, &self.post.1, self.cfg.layer_norm_eps as f32)
    }
}
