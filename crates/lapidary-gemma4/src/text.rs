//! The Gemma 4 text model as HF computes it: token embeddings scaled by `sqrt(hidden)` (the pad
//! row gets no gradient, as torch's embedding with `padding_idx`), on the E-series the per-layer
//! inputs (a per-layer token embedding plus a normalized projection of the input embeddings,
//! times `1/sqrt(2)`), the decoder layers with their K/V shared by kind, the final RMSNorm, and
//! the tied head with final logit soft-capping (fused with the loss). Also the RoPE tables and
//! causal masks of a text batch, and the stack's run after cached tokens with its KV cache
//! (generation). Not the vision tower or the image blocks of a mask.

use crate::config::{Bidirectional, Gemma4TextConfig, KvSharing, LayerKind};
use crate::decoder::{DecoderContext, DecoderLayer, RopeTable};
use lapidary_autograd::{FrozenPanels, Var, ops};
use lapidary_core::{DType, Device, Error, Result, Tensor};
use lapidary_kernels::attention::{AttentionMask, segments_from_positions};
use lapidary_kernels::gather;
use lapidary_kernels::matmul::Layout;
use lapidary_kernels::rope;
use lapidary_model::KvCache;
use lapidary_nn::{Checkpointing, Linear, Scope, checkpointed_many};

/// The E-series' per-layer embeddings.
struct PerLayerEmbedding {
    /// `[vocab_size_per_layer_input, layers * P]`.
    table: Var,
    /// `hidden -> layers * P`.
    projection: Linear,
    /// RMSNorm over `P`.
    norm: Var,
}

/// The decoder stack with its (tied) embedding.
pub struct Gemma4TextModel {
    cfg: Gemma4TextConfig,
    embed: Var,
    /// The tied head's packed forms while the embedding is frozen (kept between steps).
    head_panels: FrozenPanels,
    per_layer: Option<PerLayerEmbedding>,
    layers: Vec<DecoderLayer>,
    norm: Var,
}

/// Rows of `table` at `ids` times `scale` (rounded to the table's dtype, as HF's scaled
/// embedding), the rows of `pad` taken as constants: no gradient reaches the pad row through
/// the lookup, as torch's embedding with `padding_idx` has it.
pub(crate) fn scaled_embedding(table: &Var, ids: &[u32], pad: u32, scale: f32) -> Result<Var> {
    let mut x = ops::gather_rows(table, ids)?;
    let pads: Vec<u32> = (0..ids.len() as u32).filter(|&i| ids[i as usize] == pad).collect();
    if !pads.is_empty() && table.requires_grad() {
        let rows = gather::gather_rows(table.value(), &vec![pad; pads.len()])?;
        x = ops::scatter_rows(&x, &x.tape().input(rows), &pads)?;
    }
    ops::scale(&x, table.value().dtype().round(scale))
}

/// An error naming `what` unless every id is below `vocab`.
fn check_ids(what: &str, ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= vocab) {
        None => Ok(()),
        Some(p) => Err(Error::invalid(format!(
            "{what}: token id {} at position {p} is outside the vocabulary 0..{vocab}",
            ids[p]
        ))),
    }
}

impl Gemma4TextModel {
    /// Loads `embed_tokens.weight`, the per-layer embedding (E-series), `layers.N...` and
    /// `norm.weight` below `scope` (HF names; `model.language_model` in a
    /// Gemma4ForConditionalGeneration checkpoint).
    pub fn load(cfg: &Gemma4TextConfig, scope: &Scope<'_>) -> Result<Self> {
        if cfg.bidirectional == Bidirectional::All {
            return Err(Error::invalid(
                "Gemma 4: use_bidirectional_attention = \"all\" (an encoder without causal masking) is not supported",
            ));
        }
        let (h, n, p) = (cfg.hidden_size, cfg.num_layers(), cfg.hidden_size_per_layer_input);
        let per_layer = if p == 0 {
            None
        } else {
            Some(PerLayerEmbedding {
                table: scope.at("embed_tokens_per_layer").param("weight", &[cfg.vocab_size_per_layer_input, n * p])?,
                projection: scope.linear("per_layer_model_projection", n * p, h)?,
                norm: scope.at("per_layer_projection_norm").param("weight", &[p])?,
            })
        };
        let layers = scope.at("layers");
        Ok(Gemma4TextModel {
            cfg: cfg.clone(),
            embed: scope.at("embed_tokens").param("weight", &[cfg.vocab_size, h])?,
            head_panels: FrozenPanels::default(),
            per_layer,
            layers: (0..n).map(|i| DecoderLayer::load(cfg, i, &layers.at(i))).collect::<Result<_>>()?,
            norm: scope.at("norm").param("weight", &[h])?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Gemma4TextConfig {
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

    /// Every linear, to attach adapters to: the per-layer embedding's projection (E-series),
    /// then each layer's.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = self.per_layer.as_mut().map(|p| &mut p.projection).into_iter().collect();
        for l in &mut self.layers {
            v.extend(l.linears_mut());
        }
        v
    }

    /// Token embeddings `[ids.len(), hidden]`, scaled by `sqrt(hidden)`. `ids` hold no image
    /// placeholders (HF looks those up as the pad token, then replaces them).
    pub fn embed(&self, ids: &[u32]) -> Result<Var> {
        check_ids("embed", ids, self.cfg.vocab_size)?;
        let pad = self.cfg.pad_token_id as u32;
        scaled_embedding(&self.embed, ids, pad, (self.cfg.hidden_size as f32).sqrt())
    }

    /// The E-series' per-layer inputs of tokens `ids` whose input embeddings (image features in
    /// place) are `inputs_embeds: [ids.len(), hidden]`: `[layers, ids.len() * P]`, row `i` being
    /// layer `i`'s `[tokens, P]`. `None` for a model without per-layer inputs.
    pub fn per_layer_inputs(&self, ids: &[u32], inputs_embeds: &Var) -> Result<Option<Var>> {
        let Some(ple) = &self.per_layer else { return Ok(None) };
        let (n, l, p, h) = (ids.len(), self.layers.len(), self.cfg.hidden_size_per_layer_input, self.cfg.hidden_size);
        check_ids("per-layer embedding", ids, self.cfg.vocab_size_per_layer_input)?;
        let eps = self.cfg.rms_norm_eps as f32;
        let projected = ops::scale(&ple.projection.forward(inputs_embeds)?, (h as f32).powf(-0.5))?;
        let projected = ops::rms_norm(&ops::reshape(&projected, &[n * l, p])?, &ple.norm, eps)?;
        let identity = scaled_embedding(&ple.table, ids, self.cfg.pad_token_id as u32, (p as f32).sqrt())?;
        let sum = ops::scale(&ops::add(&ops::reshape(&projected, &[n, l * p])?, &identity)?, 0.5f32.sqrt())?;
        let by_layer = ops::swap_middle(&ops::reshape(&sum, &[1, n, l, p])?)?;
        Ok(Some(ops::reshape(&by_layer, &[l, n * p])?))
    }

    /// Layers and final norm over `h: [B, T, H]`, with the per-layer inputs of
    /// [`Self::per_layer_inputs`] where the model has them. Returns HF's `hidden_states`: the
    /// input, the output of every layer but the last, and the final normalized output (last).
    pub fn forward(
        &self,
        h: &Var,
        per_layer_inputs: Option<&Var>,
        ctx: &DecoderContext,
        checkpointing: Checkpointing,
    ) -> Result<Vec<Var>> {
        let (b, t) = (h.shape()[0], h.shape()[1]);
        let p = self.cfg.hidden_size_per_layer_input;
        let mut h = h.clone();
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        // The K/V the last storing layer of each kind handed on.
        let mut stored: Vec<(LayerKind, Var, Var)> = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            states.push(h.clone());
            let lc = *layer.config();
            let mut ins = vec![h.clone()];
            if layer.takes_per_layer_input() {
                let all = per_layer_inputs.ok_or_else(|| Error::invalid("decoder: per-layer inputs are needed"))?;
                ins.push(ops::reshape(&ops::gather_rows(all, &[i as u32])?, &[b, t, p])?);
            }
            if lc.kv_sharing == KvSharing::Reuse {
                let (_, k, v) = stored.iter().find(|s| s.0 == lc.kind).ok_or_else(|| {
                    Error::invalid(format!(
                        "decoder layer {i} reuses the K/V of an earlier {:?} layer; none stored them",
                        lc.kind
                    ))
                })?;
                ins.extend([k.clone(), v.clone()]);
            }
            let refs: Vec<&Var> = ins.iter().collect();
            let c = ctx.clone();
            let mut outs = checkpointed_many(layer, &refs, checkpointing, move |l, ins| l.forward(ins, &c))?;
            if lc.kv_sharing == KvSharing::Store {
                let (v, k) = (outs.pop().expect("stored v"), outs.pop().expect("stored k"));
                stored.retain(|s| s.0 != lc.kind);
                stored.push((lc.kind, k, v));
            }
            h = outs.swap_remove(0);
        }
        states.push(ops::rms_norm(&h, &self.norm, self.cfg.rms_norm_eps as f32)?);
        Ok(states)
    }

    /// [`Self::forward`] for generation (one row, no gradients) after the tokens in `cache`:
    /// extends it with this call's keys and values and returns only the final normalized output.
    /// `ctx` must place the tokens after the cached ones ([`Self::context_after`] once the cache
    /// holds any).
    pub fn forward_cached(
        &self,
        h: &Var,
        per_layer_inputs: Option<&Var>,
        ctx: &DecoderContext,
        cache: &mut KvCache,
    ) -> Result<Var> {
        let (b, t) = (h.shape()[0], h.shape()[1]);
        let p = self.cfg.hidden_size_per_layer_input;
        let mut h = h.clone();
        // The K/V (cached tokens included) the last storing layer of each kind handed on.
        let mut stored: Vec<(LayerKind, Var, Var)> = Vec::new();
        for (i, (layer, entry)) in self.layers.iter().zip(cache.layers_mut(self.layers.len())?).enumerate() {
            let lc = *layer.config();
            let input = match (layer.takes_per_layer_input(), per_layer_inputs) {
                (false, _) => None,
                (true, Some(all)) => Some(ops::reshape(&ops::gather_rows(all, &[i as u32])?, &[b, t, p])?),
                (true, None) => return Err(Error::invalid("decoder: per-layer inputs are needed")),
            };
            let reused = match lc.kv_sharing {
                KvSharing::Reuse => Some(stored.iter().find(|s| s.0 == lc.kind).ok_or_else(|| {
                    Error::invalid(format!(
                        "decoder layer {i} reuses the K/V of an earlier {:?} layer; none stored them",
                        lc.kind
                    ))
                })?),
                _ => None,
            };
            let (out, (k, v)) = layer.forward_cached(&h, input.as_ref(), reused.map(|(_, k, v)| (k, v)), entry, ctx)?;
            if lc.kv_sharing == KvSharing::Store {
                stored.retain(|s| s.0 != lc.kind);
                stored.push((lc.kind, k, v));
            }
            h = out;
        }
        cache.advance(t);
        ops::rms_norm(&h, &self.norm, self.cfg.rms_norm_eps as f32)
    }

    /// Logits `[rows, vocab]` of final hidden states `[rows, hidden]` through the tied head,
    /// soft-capped as the configuration says.
    pub fn logits(&self, h: &Var) -> Result<Var> {
        let logits = ops::matmul(h, &self.embed, None, Layout::ABt)?;
        match self.cfg.final_logit_softcapping {
            Some(cap) => ops::softcap(&logits, cap as f32),
            None => Ok(logits),
        }
    }

    /// Cross-entropy of `labels` (-100 ignored) at the rows of the final hidden states
    /// `h: [N, H]` through the tied, soft-capped head, divided by `normalizer` (default: the label
    /// count); the `[N, vocab]` logits are never materialized.
    pub fn head_loss(&self, h: &Var, labels: &[i64], normalizer: Option<f32>) -> Result<Var> {
        let how = ops::HeadLoss::softcapped(self.cfg.final_logit_softcapping.map(|c| c as f32));
        ops::linear_cross_entropy(h, &self.embed, &self.head_panels, labels, normalizer, how)
    }

    /// RoPE tables and causal masks (sliding and full) of `rows` rows of `t` tokens on
    /// `device`: `position_ids` `[rows, t]` when rows carry their own (packed rows: a position
    /// of 0 starts a sequence, which sees only itself), else `0..t`; `attention_mask` `[rows, t]`
    /// (0 on padding).
    pub fn context(
        &self,
        device: &Device,
        rows: usize,
        t: usize,
        position_ids: Option<&[i64]>,
        attention_mask: &[i64],
    ) -> Result<DecoderContext> {
        if attention_mask.len() != rows * t || position_ids.is_some_and(|p| p.len() != rows * t) {
            return Err(Error::invalid(format!(
                "decoder context: attention_mask or position_ids do not hold {rows} rows of {t} tokens"
            )));
        }
        let (positions, table_rows): (Vec<f32>, usize) = match position_ids {
            Some(p) => (p.iter().map(|&x| x as f32).collect(), rows),
            None => ((0..t).map(|x| x as f32).collect(), 1),
        };
        let rope = self.rope_tables(device, &positions, table_rows, t)?;
        let per_token = |v: &[f32]| Tensor::from_f32(device, v, &[rows, t], DType::F32).map(Some);
        let keep: Vec<f32> = attention_mask.iter().map(|&m| f32::from(m != 0)).collect();
        let mut mask_full = AttentionMask { key_padding: per_token(&keep)?, ..AttentionMask::causal() };
        if let Some(p) = position_ids {
            mask_full.segments = per_token(&segments_from_positions(p, rows, t))?;
        }
        Ok(DecoderContext {
            rope,
            mask_sliding: AttentionMask { window: Some(self.cfg.sliding_window), ..mask_full.clone() },
            mask_full,
        })
    }

    /// RoPE tables and causal masks of one row of `t` tokens after `offset` cached ones
    /// (generation: positions `offset..offset + t`, no padding).
    pub fn context_after(&self, device: &Device, t: usize, offset: usize) -> Result<DecoderContext> {
        let positions: Vec<f32> = (offset..offset + t).map(|x| x as f32).collect();
        let rope = self.rope_tables(device, &positions, 1, t)?;
        let mask_full = AttentionMask { q_offset: offset, ..AttentionMask::causal() };
        Ok(DecoderContext {
            rope,
            mask_sliding: AttentionMask { window: Some(self.cfg.sliding_window), ..mask_full.clone() },
            mask_full,
        })
    }

    /// One RoPE table per (layer kind, head width) at `positions` (`rows` rows of `t`).
    fn rope_tables(&self, device: &Device, positions: &[f32], rows: usize, t: usize) -> Result<Vec<RopeTable>> {
        let mut rope: Vec<RopeTable> = Vec::new();
        for i in 0..self.layers.len() {
            let l = self.cfg.layer(i);
            if rope.iter().any(|(k, d, _)| *k == l.kind && *d == l.head_dim) {
                continue;
            }
            let (c, s) = rope::tables_from(positions, &l.rope.inv_freq(l.head_dim));
            let upload = |v: &[f32]| Tensor::from_f32(device, v, &[rows, t, l.head_dim], DType::F32);
            rope.push((l.kind, l.head_dim, (upload(&c)?, upload(&s)?)));
        }
        Ok(rope)
    }
}
