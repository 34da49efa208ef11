//! The Gemma 3 text decoder as HF computes it: scaled token embeddings, then layers of
//! (RMSNorm → attention with q/k RMSNorm per head, RoPE local or global, sliding or full causal
//! mask, image blocks bidirectional → RMSNorm) and (RMSNorm → GeGLU MLP → RMSNorm), each added
//! to the residual; a final RMSNorm. All norms are Gemma's `(1 + w)`. Each layer can run as a
//! checkpointed segment that receives its parameters explicitly.

use crate::config::{Gemma3TextConfig, LayerKind};
use lapidary_autograd::{FrozenPanels, Var, ops};
use lapidary_core::{Result, Tensor};
use lapidary_kernels::attention::AttentionMask;
use lapidary_kernels::matmul::Layout;
use lapidary_model::{KvCache, LayerCache};
use lapidary_nn::{Checkpointing, Layer, Linear, ParamFn, Scope, checkpointed, map_within};

/// Per-batch inputs every layer shares: RoPE tables per layer kind and the masks.
#[derive(Clone)]
pub struct DecoderContext {
    /// `(cos, sin)` for sliding layers, `[1, T, head_dim]`.
    pub rope_local: (Tensor, Tensor),
    /// `(cos, sin)` for full-attention layers.
    pub rope_global: (Tensor, Tensor),
    /// Mask of sliding layers.
    pub mask_sliding: AttentionMask,
    /// Mask of full-attention layers.
    pub mask_full: AttentionMask,
}

/// One decoder layer.
#[derive(Clone)]
pub struct DecoderLayer {
    kind: LayerKind,
    input_layernorm: Var,
    q_norm: Var,
    k_norm: Var,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: Var,
    pre_feedforward_layernorm: Var,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    post_feedforward_layernorm: Var,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    scale: f32,
}

impl DecoderLayer {
    fn load(cfg: &Gemma3TextConfig, kind: LayerKind, s: &Scope<'_>) -> Result<Self> {
        let (h, d, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (hq, hkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let (attn, mlp) = (s.at("self_attn"), s.at("mlp"));
        let norm = |s: &Scope<'_>, name: &str, dim: usize| s.at(name).param("weight", &[dim]);
        // Fields load in the order written: the norms, then the linears (the order parameters
        // are registered, and so written by merge and export).
        Ok(DecoderLayer {
            kind,
            input_layernorm: norm(s, "input_layernorm", h)?,
            post_attention_layernorm: norm(s, "post_attention_layernorm", h)?,
            pre_feedforward_layernorm: norm(s, "pre_feedforward_layernorm", h)?,
            post_feedforward_layernorm: norm(s, "post_feedforward_layernorm", h)?,
            q_norm: norm(&attn, "q_norm", d)?,
            k_norm: norm(&attn, "k_norm", d)?,
            q_proj: attn.linear("q_proj", hq * d, h)?,
            k_proj: attn.linear("k_proj", hkv * d, h)?,
            v_proj: attn.linear("v_proj", hkv * d, h)?,
            o_proj: attn.linear("o_proj", h, hq * d)?,
            gate_proj: mlp.linear("gate_proj", i, h)?,
            up_proj: mlp.linear("up_proj", i, h)?,
            down_proj: mlp.linear("down_proj", h, i)?,
            heads: hq,
            kv_heads: hkv,
            head_dim: d,
            eps: cfg.rms_norm_eps as f32,
            scale: cfg.query_pre_attn_scalar.powf(-0.5) as f32,
        })
    }

    /// The layer's linears (q, k, v, o, gate, up, down projections), to attach adapters to.
    pub fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
    }
}

impl Layer for DecoderLayer {
    fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self> {
        Ok(DecoderLayer {
            input_layernorm: f("input_layernorm.weight", &self.input_layernorm)?,
            q_norm: f("self_attn.q_norm.weight", &self.q_norm)?,
            k_norm: f("self_attn.k_norm.weight", &self.k_norm)?,
            q_proj: map_within("self_attn.q_proj", &self.q_proj, f)?,
            k_proj: map_within("self_attn.k_proj", &self.k_proj, f)?,
            v_proj: map_within("self_attn.v_proj", &self.v_proj, f)?,
            o_proj: map_within("self_attn.o_proj", &self.o_proj, f)?,
            post_attention_layernorm: f("post_attention_layernorm.weight", &self.post_attention_layernorm)?,
            pre_feedforward_layernorm: f("pre_feedforward_layernorm.weight", &self.pre_feedforward_layernorm)?,
            gate_proj: map_within("mlp.gate_proj", &self.gate_proj, f)?,
            up_proj: map_within("mlp.up_proj", &self.up_proj, f)?,
            down_proj: map_within("mlp.down_proj", &self.down_proj, f)?,
            post_feedforward_layernorm: f("post_feedforward_layernorm.weight", &self.post_feedforward_layernorm)?,
            ..self.clone()
        })
    }
}

impl DecoderLayer {
    /// `[B, T, H] -> [B, T, H]`.
    pub fn forward(&self, h: &Var, ctx: &DecoderContext) -> Result<Var> {
        self.forward_cached(h, ctx, None)
    }

    /// [`Self::forward`] that appends this call's keys and values (after RoPE) to `cache` and
    /// attends over all of them (the mask's `q_offset` must be the cached length).
    pub fn forward_cached(&self, h: &Var, ctx: &DecoderContext, cache: Option<&mut LayerCache>) -> Result<Var> {
        let (b, t) = (h.shape()[0], h.shape()[1]);
        let d = self.head_dim;
        let (rope, mask) = match self.kind {
            LayerKind::Sliding => (&ctx.rope_local, &ctx.mask_sliding),
            LayerKind::Full => (&ctx.rope_global, &ctx.mask_full),
        };
        let x = ops::gemma_rms_norm(h, &self.input_layernorm, self.eps)?;
        let heads =
            |l: &Linear, n: usize| -> Result<Var> { ops::swap_middle(&ops::reshape(&l.forward(&x)?, &[b, t, n, d])?) };
        let q = ops::rope(
            &ops::gemma_rms_norm(&heads(&self.q_proj, self.heads)?, &self.q_norm, self.eps)?,
            &rope.0,
            &rope.1,
        )?;
        let k = heads(&self.k_proj, self.kv_heads)?;
        let mut k = ops::rope(&ops::gemma_rms_norm(&k, &self.k_norm, self.eps)?, &rope.0, &rope.1)?;
        let mut v = heads(&self.v_proj, self.kv_heads)?;
        if let Some(cache) = cache {
            let (ka, va) = lapidary_model::kv_cache::append(cache, k.value(), v.value())?;
            k = h.tape().input(ka);
            v = h.tape().input(va);
        }
        let att = ops::attention(&q, &k, &v, self.scale, mask)?;
        let att = self.o_proj.forward(&ops::reshape(&ops::swap_middle(&att)?, &[b, t, self.heads * d])?)?;
        let h = ops::add(h, &ops::gemma_rms_norm(&att, &self.post_attention_layernorm, self.eps)?)?;
        let x = ops::gemma_rms_norm(&h, &self.pre_feedforward_layernorm, self.eps)?;
        let mlp = self.down_proj.forward(&ops::geglu(&self.gate_proj.forward(&x)?, &self.up_proj.forward(&x)?)?)?;
        ops::add(&h, &ops::gemma_rms_norm(&mlp, &self.post_feedforward_layernorm, self.eps)?)
    }
}

/// The decoder stack with its (tied) embedding.
pub struct Gemma3TextModel {
    cfg: Gemma3TextConfig,
    embed: Var,
    /// The tied head's packed forms while the embedding is frozen (kept between steps).
    head_panels: FrozenPanels,
    layers: Vec<DecoderLayer>,
    norm: Var,
}

impl Gemma3TextModel {
    /// Loads `embed_tokens.weight`, `layers.N...`, `norm.weight` below `scope` (HF names; the
    /// scope `language_model.model` in a Gemma3ForConditionalGeneration checkpoint).
    pub fn load(cfg: &Gemma3TextConfig, scope: &Scope<'_>) -> Result<Self> {
        let layers = scope.at("layers");
        Ok(Gemma3TextModel {
            cfg: cfg.clone(),
            embed: scope.at("embed_tokens").param("weight", &[cfg.vocab_size, cfg.hidden_size])?,
            head_panels: FrozenPanels::default(),
            layers: cfg
                .layer_types
                .iter()
                .enumerate()
                .map(|(i, &kind)| DecoderLayer::load(cfg, kind, &layers.at(i)))
                .collect::<Result<_>>()?,
            norm: scope.at("norm").param("weight", &[cfg.hidden_size])?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Gemma3TextConfig {
        &self.cfg
    }

    /// The token embedding `[vocab, hidden]` (also the output head).
    pub fn embed_tokens(&self) -> &Var {
        &self.embed
    }

    /// The layers.
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// The layers (their linears take adapters).
    pub fn layers_mut(&mut self) -> &mut [DecoderLayer] {
        &mut self.layers
    }

    /// Token embeddings scaled by `sqrt(hidden)` (rounded to the weight dtype, as HF does):
    /// `[ids.len(), hidden]`. Ids at or beyond the vocabulary (image soft tokens) look up row 0.
    pub fn embed(&self, ids: &[u32]) -> Result<Var> {
        let v = self.cfg.vocab_size as u32;
        let ids: Vec<u32> = ids.iter().map(|&i| if i >= v { 0 } else { i }).collect();
        let scale = self.embed.value().dtype().round((self.cfg.hidden_size as f32).sqrt());
        ops::scale(&ops::gather_rows(&self.embed, &ids)?, scale)
    }

    /// Layers and final norm over `[B, T, H]`. Returns HF's `hidden_states`: the input, the
    /// output of every layer but the last, and the final normalized output (the last element).
    pub fn forward(&self, h: &Var, ctx: &DecoderContext, checkpointing: Checkpointing) -> Result<Vec<Var>> {
        let mut h = h.clone();
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            states.push(h.clone());
            let c = ctx.clone();
            h = checkpointed(layer, &h, checkpointing, move |l, h| l.forward(h, &c))?;
        }
        states.push(ops::gemma_rms_norm(&h, &self.norm, self.cfg.rms_norm_eps as f32)?);
        Ok(states)
    }

    /// [`Self::forward`] for generation: extends `cache` (one entry per layer) with this call's
    /// keys and values and returns only the final normalized output.
    pub fn forward_cached(&self, h: &Var, ctx: &DecoderContext, cache: &mut KvCache) -> Result<Var> {
        let mut h = h.clone();
        for (layer, c) in self.layers.iter().zip(cache.layers_mut(self.layers.len())?) {
            h = layer.forward_cached(&h, ctx, Some(c))?;
        }
        cache.advance(h.shape()[1]);
        ops::gemma_rms_norm(&h, &self.norm, self.cfg.rms_norm_eps as f32)
    }

    /// Logits `[rows, vocab]` of final hidden states `[rows, hidden]` through the tied head.
    pub fn logits(&self, h: &Var) -> Result<Var> {
        ops::matmul(h, &self.embed, None, Layout::ABt)
    }

    /// Cross-entropy of `labels` (-100 ignored) at the rows of the final hidden states
    /// `h: [N, H]` through the tied head, divided by `normalizer` (default: the label count),
    /// with the head and the loss fused: the `[N, vocab]` logits are never materialized.
    pub fn head_loss(&self, h: &Var, labels: &[i64], normalizer: Option<f32>) -> Result<Var> {
        ops::linear_cross_entropy(h, &self.embed, &self.head_panels, labels, normalizer, ops::HeadLoss::default())
    }
}
