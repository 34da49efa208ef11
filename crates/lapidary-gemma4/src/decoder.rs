//! The Gemma 4 decoder layer as HF computes it: RMSNorm (the weight used directly, not `1 + w`)
//! → attention (q/k RMSNorm per head and RoPE of the layer's kind, a weightless v-norm, scaling
//! 1, V from the raw K projection where K = V, or the K/V an earlier layer stored) → RMSNorm,
//! added to the residual; RMSNorm → GeGLU MLP → RMSNorm, added; on the E-series the per-layer
//! input (gate → GELU → times this layer's per-layer embedding → projection → RMSNorm, added);
//! the sum times the layer's scalar. A layer runs as one (checkpointable) segment whose inputs
//! are the hidden states, its per-layer input and the K/V it reuses, and whose outputs are the
//! hidden states and the K/V it stores, so gradients of reused K/V flow back into the layer
//! that computed them. For generation a layer also runs after cached tokens, joining its new K/V
//! to its cache. Not the stack, the embeddings or the head (`text.rs`).

use crate::config::{Gemma4TextConfig, KvSharing, LayerConfig, LayerKind};
use lapidary_autograd::{Var, ops};
use lapidary_core::{Error, Result, Tensor};
use lapidary_kernels::attention::AttentionMask;
use lapidary_model::LayerCache;
use lapidary_nn::{Layer, Linear, ParamFn, Scope, map_within};

/// One RoPE table: the layer kind and head width it serves, and `(cos, sin)`.
pub type RopeTable = (LayerKind, usize, (Tensor, Tensor));

/// RoPE tables and masks every layer of a pass shares.
#[derive(Clone)]
pub struct DecoderContext {
    /// `(kind, head width, (cos, sin))`, each table `[rows, T, head width]` (rows: 1, or the
    /// batch's rows when they have positions of their own).
    pub rope: Vec<RopeTable>,
    /// Mask of sliding layers.
    pub mask_sliding: AttentionMask,
    /// Mask of full layers.
    pub mask_full: AttentionMask,
}

impl DecoderContext {
    fn rope(&self, kind: LayerKind, head_dim: usize) -> Result<&(Tensor, Tensor)> {
        self.rope.iter().find(|(k, d, _)| *k == kind && *d == head_dim).map(|(_, _, t)| t).ok_or_else(|| {
            Error::invalid(format!("decoder context: no RoPE table for {kind:?} layers of head width {head_dim}"))
        })
    }

    fn mask(&self, kind: LayerKind) -> &AttentionMask {
        match kind {
            LayerKind::Sliding => &self.mask_sliding,
            LayerKind::Full => &self.mask_full,
        }
    }
}

/// A layer's own K/V projections (absent on layers that reuse an earlier layer's).
#[derive(Clone)]
struct KvProjections {
    k_proj: Linear,
    /// `None` where V is the raw K projection (`attention_k_eq_v` on full layers).
    v_proj: Option<Linear>,
    k_norm: Var,
}

/// The E-series' per-layer input block.
#[derive(Clone)]
struct PerLayerBlock {
    gate: Linear,
    projection: Linear,
    norm: Var,
}

/// One decoder layer.
#[derive(Clone)]
pub struct DecoderLayer {
    cfg: LayerConfig,
    input_layernorm: Var,
    post_attention_layernorm: Var,
    pre_feedforward_layernorm: Var,
    post_feedforward_layernorm: Var,
    q_norm: Var,
    q_proj: Linear,
    kv: Option<KvProjections>,
    o_proj: Linear,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    per_layer: Option<PerLayerBlock>,
    /// HF's `layer_scalar` buffer (not trained).
    layer_scalar: f32,
    /// Weight of the weightless v-norm.
    ones: Tensor,
    heads: usize,
    eps: f32,
}

impl DecoderLayer {
    /// Loads layer `index` below `s` (`layers.N`).
    pub fn load(cfg: &Gemma4TextConfig, index: usize, s: &Scope<'_>) -> Result<Self> {
        let l = cfg.layer(index);
        let (h, d, hq, hkv) = (cfg.hidden_size, l.head_dim, cfg.num_attention_heads, l.num_key_value_heads);
        let (attn, mlp) = (s.at("self_attn"), s.at("mlp"));
        let norm = |s: &Scope<'_>, name: &str, dim: usize| s.at(name).param("weight", &[dim]);
        let kv = match l.kv_sharing {
            KvSharing::Reuse => None,
            KvSharing::Own | KvSharing::Store => Some(KvProjections {
                k_norm: norm(&attn, "k_norm", d)?,
                k_proj: attn.linear("k_proj", hkv * d, h)?,
                v_proj: if l.k_eq_v { None } else { Some(attn.linear("v_proj", hkv * d, h)?) },
            }),
        };
        let p = cfg.hidden_size_per_layer_input;
        let per_layer = if p == 0 {
            None
        } else {
            Some(PerLayerBlock {
                norm: norm(s, "post_per_layer_input_norm", h)?,
                gate: s.linear("per_layer_input_gate", p, h)?,
                projection: s.linear("per_layer_projection", h, p)?,
            })
        };
        let scalar = s.tensor("layer_scalar", &[1])?.to_f32_vec()?[0];
        let q_norm = norm(&attn, "q_norm", d)?;
        let ones = Tensor::from_f32(s.weights().device(), &vec![1.0; d], &[d], q_norm.value().dtype())?;
        Ok(DecoderLayer {
            input_layernorm: norm(s, "input_layernorm", h)?,
            post_attention_layernorm: norm(s, "post_attention_layernorm", h)?,
            pre_feedforward_layernorm: norm(s, "pre_feedforward_layernorm", h)?,
            post_feedforward_layernorm: norm(s, "post_feedforward_layernorm", h)?,
            q_norm,
            q_proj: attn.linear("q_proj", hq * d, h)?,
            kv,
            o_proj: attn.linear("o_proj", h, hq * d)?,
            gate_proj: mlp.linear("gate_proj", l.intermediate_size, h)?,
            up_proj: mlp.linear("up_proj", l.intermediate_size, h)?,
            down_proj: mlp.linear("down_proj", h, l.intermediate_size)?,
            per_layer,
            layer_scalar: scalar,
            ones,
            heads: hq,
            eps: cfg.rms_norm_eps as f32,
            cfg: l,
        })
    }

    /// The layer's settings.
    pub fn config(&self) -> &LayerConfig {
        &self.cfg
    }

    /// Whether [`Self::forward`] takes a per-layer input.
    pub fn takes_per_layer_input(&self) -> bool {
        self.per_layer.is_some()
    }

    /// The layer's linears (q, k, v, o where it has them, gate, up, down, then the per-layer
    /// gate and projection), to attach adapters to.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = vec![&mut self.q_proj];
        if let Some(kv) = &mut self.kv {
            out.push(&mut kv.k_proj);
            out.extend(kv.v_proj.as_mut());
        }
        out.extend([&mut self.o_proj, &mut self.gate_proj, &mut self.up_proj, &mut self.down_proj]);
        if let Some(p) = &mut self.per_layer {
            out.extend([&mut p.gate, &mut p.projection]);
        }
        out
    }

    /// One pass of the layer. `ins`: the hidden states `[B, T, H]`, then this layer's per-layer
    /// input `[B, T, P]` if it takes one, then the keys and values `[B, kv heads, T, head width]`
    /// it reuses if it reuses them. Returns the hidden states, then the keys and values if it
    /// stores them for later layers.
    pub fn forward(&self, ins: &[Var], ctx: &DecoderContext) -> Result<Vec<Var>> {
        let reuses = self.kv.is_none();
        let want = 1 + usize::from(self.per_layer.is_some()) + 2 * usize::from(reuses);
        if ins.len() != want {
            return Err(Error::invalid(format!("decoder layer: {} inputs, expected {want}", ins.len())));
        }
        let per_layer_input = self.per_layer.as_ref().map(|_| &ins[1]);
        let reused = reuses.then(|| (&ins[want - 2], &ins[want - 1]));
        let (h, kv) = self.run(&ins[0], per_layer_input, reused, None, ctx)?;
        let mut outs = vec![h];
        if self.cfg.kv_sharing == KvSharing::Store {
            outs.extend([kv.0, kv.1]);
        }
        Ok(outs)
    }

    /// [`Self::forward`] for generation, without gradients: a layer with keys and values of its
    /// own appends this call's (after norm and RoPE) to `cache` and attends over all of them; a
    /// layer that reuses attends over `reused` (the storing layer's, cached tokens included).
    /// The mask's `q_offset` must be the cached length. Returns the hidden states and the keys
    /// and values attended over.
    pub fn forward_cached(
        &self,
        h: &Var,
        per_layer_input: Option<&Var>,
        reused: Option<(&Var, &Var)>,
        cache: &mut LayerCache,
        ctx: &DecoderContext,
    ) -> Result<(Var, (Var, Var))> {
        if self.per_layer.is_some() != per_layer_input.is_some() || self.kv.is_none() != reused.is_some() {
            return Err(Error::invalid("decoder layer: per-layer input or reused K/V do not match the layer"));
        }
        self.run(h, per_layer_input, reused, Some(cache), ctx)
    }

    /// The layer's computation; `cache` joins the new keys and values to the cached ones.
    fn run(
        &self,
        h: &Var,
        per_layer_input: Option<&Var>,
        reused: Option<(&Var, &Var)>,
        cache: Option<&mut LayerCache>,
        ctx: &DecoderContext,
    ) -> Result<(Var, (Var, Var))> {
        let (b, t) = (h.shape()[0], h.shape()[1]);
        let (d, eps) = (self.cfg.head_dim, self.eps);
        let rope = ctx.rope(self.cfg.kind, d)?;
        let x = ops::rms_norm(h, &self.input_layernorm, eps)?;
        let heads = |y: &Var, n: usize| -> Result<Var> { ops::swap_middle(&ops::reshape(y, &[b, t, n, d])?) };
        let q = heads(&self.q_proj.forward(&x)?, self.heads)?;
        let q = ops::rope(&ops::rms_norm(&q, &self.q_norm, eps)?, &rope.0, &rope.1)?;
        let (k, v) = match (&self.kv, reused) {
            (None, Some((k, v))) => (k.clone(), v.clone()),
            (None, None) => return Err(Error::invalid("decoder layer: reuses K/V but none were given")),
            (Some(kv), _) => {
                let hkv = self.cfg.num_key_value_heads;
                let raw_k = heads(&kv.k_proj.forward(&x)?, hkv)?;
                let raw_v = match &kv.v_proj {
                    Some(v_proj) => heads(&v_proj.forward(&x)?, hkv)?,
                    None => raw_k.clone(),
                };
                let k = ops::rope(&ops::rms_norm(&raw_k, &kv.k_norm, eps)?, &rope.0, &rope.1)?;
                let v = ops::rms_norm(&raw_v, &h.tape().input(self.ones.clone()), eps)?;
                match cache {
                    None => (k, v),
                    Some(cache) => {
                        let (ka, va) = lapidary_model::kv_cache::append(cache, k.value(), v.value())?;
                        (h.tape().input(ka), h.tape().input(va))
                    }
                }
            }
        };
        let att = ops::attention(&q, &k, &v, 1.0, ctx.mask(self.cfg.kind))?;
        let att = self.o_proj.forward(&ops::reshape(&ops::swap_middle(&att)?, &[b, t, self.heads * d])?)?;
        let h = ops::add(h, &ops::rms_norm(&att, &self.post_attention_layernorm, eps)?)?;
        let x = ops::rms_norm(&h, &self.pre_feedforward_layernorm, eps)?;
        let mlp = self.down_proj.forward(&ops::geglu(&self.gate_proj.forward(&x)?, &self.up_proj.forward(&x)?)?)?;
        let mut h = ops::add(&h, &ops::rms_norm(&mlp, &self.post_feedforward_layernorm, eps)?)?;
        if let (Some(p), Some(input)) = (&self.per_layer, per_layer_input) {
            let gated = ops::mul(&ops::gelu_tanh(&p.gate.forward(&h)?)?, input)?;
            h = ops::add(&h, &ops::rms_norm(&p.projection.forward(&gated)?, &p.norm, eps)?)?;
        } else if self.per_layer.is_some() {
            return Err(Error::invalid("decoder layer: per-layer input missing"));
        }
        Ok((ops::scale(&h, self.layer_scalar)?, (k, v)))
    }
}

impl Layer for DecoderLayer {
    fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self> {
        let kv = match &self.kv {
            None => None,
            Some(kv) => Some(KvProjections {
                k_proj: map_within("self_attn.k_proj", &kv.k_proj, f)?,
                v_proj: kv.v_proj.as_ref().map(|v| map_within("self_attn.v_proj", v, f)).transpose()?,
                k_norm: f("self_attn.k_norm.weight", &kv.k_norm)?,
            }),
        };
        let per_layer = match &self.per_layer {
            None => None,
            Some(p) => Some(PerLayerBlock {
                gate: map_within("per_layer_input_gate", &p.gate, f)?,
                projection: map_within("per_layer_projection", &p.projection, f)?,
                norm: f("post_per_layer_input_norm.weight", &p.norm)?,
            }),
        };
        Ok(DecoderLayer {
            input_layernorm: f("input_layernorm.weight", &self.input_layernorm)?,
            q_proj: map_within("self_attn.q_proj", &self.q_proj, f)?,
            q_norm: f("self_attn.q_norm.weight", &self.q_norm)?,
            kv,
            o_proj: map_within("self_attn.o_proj", &self.o_proj, f)?,
            post_attention_layernorm: f("post_attention_layernorm.weight", &self.post_attention_layernorm)?,
            pre_feedforward_layernorm: f("pre_feedforward_layernorm.weight", &self.pre_feedforward_layernorm)?,
            gate_proj: map_within("mlp.gate_proj", &self.gate_proj, f)?,
            up_proj: map_within("mlp.up_proj", &self.up_proj, f)?,
            down_proj: map_within("mlp.down_proj", &self.down_proj, f)?,
            post_feedforward_layernorm: f("post_feedforward_layernorm.weight", &self.post_feedforward_layernorm)?,
            per_layer,
            ..self.clone()
        })
    }
}
