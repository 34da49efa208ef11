//! The Gemma 4 vision tower and its embedder as HF computes them: patch pixels (`[images,
//! patches, 3·p·p]`, HF's processor layout, padding patches at position (-1, -1)) scaled to
//! [-1, 1] and projected, plus the two learned position tables (x and y); encoder layers of
//! (RMSNorm → attention with q/k norms, a weightless v-norm, 2D RoPE over the head's two halves,
//! scaling 1, padding keys masked → RMSNorm) and (RMSNorm → GeGLU MLP → RMSNorm), every linear
//! clipped (its input and output clamped to the checkpoint's bounds, an adapter inside the
//! clamps); pooling of `k × k` patches by position, times `sqrt(hidden)`, padding slots dropped,
//! standardized; then the embedder (weightless RMSNorm, projection to the text width). Not the
//! image processor or where the soft tokens go in the text.

use crate::config::Gemma4VisionConfig;
use lapidary_autograd::{Var, ops};
use lapidary_core::{DType, Error, Result, Tensor};
use lapidary_kernels::attention::AttentionMask;
use lapidary_kernels::rope;
use lapidary_nn::{Checkpointing, Layer, Linear, ParamFn, Scope, checkpointed, map_within};

/// A linear whose input and output are clamped (HF's `Gemma4ClippableLinear`): the weight and
/// any adapter live in the inner `linear`, as PEFT names it.
#[derive(Clone)]
pub struct ClippedLinear {
    linear: Linear,
    /// `(input_min, input_max, output_min, output_max)`; `None` when the model clips nothing.
    bounds: Option<[f32; 4]>,
}

impl ClippedLinear {
    fn load(s: &Scope<'_>, out: usize, inp: usize, clipped: bool) -> Result<Self> {
        let bounds = if clipped {
            let b = |leaf: &str| -> Result<f32> { Ok(s.tensor(leaf, &[])?.to_f32_vec()?[0]) };
            Some([b("input_min")?, b("input_max")?, b("output_min")?, b("output_max")?])
        } else {
            None
        };
        Ok(ClippedLinear { linear: s.linear("linear", out, inp)?, bounds })
    }

    /// `clamp(linear(clamp(x, in)), out)`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        match self.bounds {
            None => self.linear.forward(x),
            Some([lo, hi, out_lo, out_hi]) => {
                ops::clamp(&self.linear.forward(&ops::clamp(x, lo, hi)?)?, out_lo, out_hi)
            }
        }
    }

    /// The inner linear (adapters attach here).
    pub fn linear_mut(&mut self) -> &mut Linear {
        &mut self.linear
    }

    fn map(&self, prefix: &str, f: &mut ParamFn<'_>) -> Result<Self> {
        Ok(ClippedLinear { linear: map_within(&format!("{prefix}.linear"), &self.linear, f)?, bounds: self.bounds })
    }
}

/// Per-pass inputs every encoder layer shares.
#[derive(Clone)]
pub struct VisionContext {
    /// Axial `(cos, sin)`, `[images, patches, head_dim]`.
    pub rope: (Tensor, Tensor),
    /// Bidirectional, padding patches masked as keys.
    pub mask: AttentionMask,
}

/// One encoder layer.
#[derive(Clone)]
pub struct VisionLayer {
    input_layernorm: Var,
    post_attention_layernorm: Var,
    pre_feedforward_layernorm: Var,
    post_feedforward_layernorm: Var,
    q_norm: Var,
    k_norm: Var,
    q_proj: ClippedLinear,
    k_proj: ClippedLinear,
    v_proj: ClippedLinear,
    o_proj: ClippedLinear,
    gate_proj: ClippedLinear,
    up_proj: ClippedLinear,
    down_proj: ClippedLinear,
    ones: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
}

impl VisionLayer {
    fn load(cfg: &Gemma4VisionConfig, s: &Scope<'_>) -> Result<Self> {
        let (h, d, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (hq, hkv, clip) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.use_clipped_linears);
        let (attn, mlp) = (s.at("self_attn"), s.at("mlp"));
        let norm = |s: &Scope<'_>, name: &str, dim: usize| s.at(name).param("weight", &[dim]);
        let q_norm = norm(&attn, "q_norm", d)?;
        let ones = Tensor::from_f32(s.weights().device(), &vec![1.0; d], &[d], q_norm.value().dtype())?;
        Ok(VisionLayer {
            input_layernorm: norm(s, "input_layernorm", h)?,
            post_attention_layernorm: norm(s, "post_attention_layernorm", h)?,
            pre_feedforward_layernorm: norm(s, "pre_feedforward_layernorm", h)?,
            post_feedforward_layernorm: norm(s, "post_feedforward_layernorm", h)?,
            q_norm,
            k_norm: norm(&attn, "k_norm", d)?,
            q_proj: ClippedLinear::load(&attn.at("q_proj"), hq * d, h, clip)?,
            k_proj: ClippedLinear::load(&attn.at("k_proj"), hkv * d, h, clip)?,
            v_proj: ClippedLinear::load(&attn.at("v_proj"), hkv * d, h, clip)?,
            o_proj: ClippedLinear::load(&attn.at("o_proj"), h, hq * d, clip)?,
            gate_proj: ClippedLinear::load(&mlp.at("gate_proj"), i, h, clip)?,
            up_proj: ClippedLinear::load(&mlp.at("up_proj"), i, h, clip)?,
            down_proj: ClippedLinear::load(&mlp.at("down_proj"), h, i, clip)?,
            ones,
            heads: hq,
            kv_heads: hkv,
            head_dim: d,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    /// The clipped linears (q, k, v, o, gate, up, down), to attach adapters to their inner linear.
    pub fn linears_mut(&mut self) -> [&mut ClippedLinear; 7] {
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

    /// `[images, patches, H] -> [images, patches, H]`.
    pub fn forward(&self, h: &Var, ctx: &VisionContext) -> Result<Var> {
        let (n, p) = (h.shape()[0], h.shape()[1]);
        let (d, eps) = (self.head_dim, self.eps);
        let (cos, sin) = &ctx.rope;
        let x = ops::rms_norm(h, &self.input_layernorm, eps)?;
        let heads = |y: &Var, k: usize| -> Result<Var> { ops::swap_middle(&ops::reshape(y, &[n, p, k, d])?) };
        let q = ops::rms_norm(&heads(&self.q_proj.forward(&x)?, self.heads)?, &self.q_norm, eps)?;
        let k = ops::rms_norm(&heads(&self.k_proj.forward(&x)?, self.kv_heads)?, &self.k_norm, eps)?;
        let v = heads(&self.v_proj.forward(&x)?, self.kv_heads)?;
        let v = ops::rms_norm(&v, &h.tape().input(self.ones.clone()), eps)?;
        let (q, k) = (ops::rope_parts(&q, cos, sin, 2)?, ops::rope_parts(&k, cos, sin, 2)?);
        let att = ops::attention(&q, &k, &v, 1.0, &ctx.mask)?;
        let att = self.o_proj.forward(&ops::reshape(&ops::swap_middle(&att)?, &[n, p, self.heads * d])?)?;
        let h = ops::add(h, &ops::rms_norm(&att, &self.post_attention_layernorm, eps)?)?;
        let x = ops::rms_norm(&h, &self.pre_feedforward_layernorm, eps)?;
        let mlp = self.down_proj.forward(&ops::geglu(&self.gate_proj.forward(&x)?, &self.up_proj.forward(&x)?)?)?;
        ops::add(&h, &ops::rms_norm(&mlp, &self.post_feedforward_layernorm, eps)?)
    }
}

impl Layer for VisionLayer {
    fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self> {
        Ok(VisionLayer {
            input_layernorm: f("input_layernorm.weight", &self.input_layernorm)?,
            q_proj: self.q_proj.map("self_attn.q_proj", f)?,
            k_proj: self.k_proj.map("self_attn.k_proj", f)?,
            v_proj: self.v_proj.map("self_attn.v_proj", f)?,
            o_proj: self.o_proj.map("self_attn.o_proj", f)?,
            q_norm: f("self_attn.q_norm.weight", &self.q_norm)?,
            k_norm: f("self_attn.k_norm.weight", &self.k_norm)?,
            gate_proj: self.gate_proj.map("mlp.gate_proj", f)?,
            up_proj: self.up_proj.map("mlp.up_proj", f)?,
            down_proj: self.down_proj.map("mlp.down_proj", f)?,
            post_attention_layernorm: f("post_attention_layernorm.weight", &self.post_attention_layernorm)?,
            pre_feedforward_layernorm: f("pre_feedforward_layernorm.weight", &self.pre_feedforward_layernorm)?,
            post_feedforward_layernorm: f("post_feedforward_layernorm.weight", &self.post_feedforward_layernorm)?,
            ..self.clone()
        })
    }
}

/// Which patches one soft token averages: for each pooled slot of each image, the rows (in the
/// flattened `[images * patches]` order) of its patches. Built from the patch positions as HF's
/// pooler does (slot = `x / k + (width / k) · (y / k)`, width from the image's largest x).
#[derive(Clone, Debug, PartialEq)]
pub struct Pooling {
    /// Per kept slot, the rows of its real patches (at most `k²`; fewer at an image's edge or
    /// where padding patches fell in).
    pub slots: Vec<Vec<u32>>,
    /// Kept slots per image.
    pub per_image: Vec<usize>,
    /// `k²`.
    pub k_squared: usize,
}

impl Pooling {
    /// From `positions` (`[images, patches, 2]`, (-1, -1) on padding) pooled `k × k`.
    pub fn from_positions(positions: &[i64], images: usize, patches: usize, k: usize) -> Result<Self> {
        if positions.len() != images * patches * 2 || k == 0 || !patches.is_multiple_of(k * k) {
            return Err(Error::invalid(format!(
                "image_position_ids: {} values for {images} image(s) of {patches} patches pooled {k}x{k}: expected \
                 [images, patches, 2] with patches a multiple of {}",
                positions.len(),
                k * k
            )));
        }
        let length = patches / (k * k);
        let (mut slots, mut per_image) = (Vec::new(), Vec::with_capacity(images));
        for img in 0..images {
            let pos = &positions[img * patches * 2..(img + 1) * patches * 2];
            let clamped = |i: usize, c: usize| pos[2 * i + c].max(0) as usize;
            let width = (0..patches).map(|i| clamped(i, 0)).max().unwrap_or(0) + 1;
            // Per slot: whether any patch (padding included, as HF counts it) falls in it, and
            // its real patches (a padding patch is zero there).
            let mut by_slot: Vec<(bool, Vec<u32>)> = vec![(false, Vec::new()); length];
            for i in 0..patches {
                let slot = clamped(i, 0) / k + (width / k) * (clamped(i, 1) / k);
                if slot >= length {
                    return Err(Error::invalid(format!(
                        "image_position_ids: patch {i} of image {img} at ({}, {}) pools into slot {slot}, past the {length} soft tokens",
                        pos[2 * i],
                        pos[2 * i + 1]
                    )));
                }
                by_slot[slot].0 = true;
                if !(pos[2 * i] == -1 && pos[2 * i + 1] == -1) {
                    if by_slot[slot].1.len() == k * k {
                        return Err(Error::invalid(format!(
                            "image_position_ids: more than {} patches of image {img} pool into slot {slot} (patch {i} \
                             at ({}, {})): positions repeat",
                            k * k,
                            pos[2 * i],
                            pos[2 * i + 1]
                        )));
                    }
                    by_slot[slot].1.push((img * patches + i) as u32);
                }
            }
            let kept: Vec<Vec<u32>> = by_slot.into_iter().filter(|s| s.0).map(|s| s.1).collect();
            per_image.push(kept.len());
            slots.extend(kept);
        }
        Ok(Pooling { slots, per_image, k_squared: k * k })
    }
}

/// The vision tower with its embedder into the text width.
pub struct Gemma4VisionModel {
    cfg: Gemma4VisionConfig,
    input_proj: Linear,
    position_table: Var,
    layers: Vec<VisionLayer>,
    /// `(std_bias, std_scale)` when the model standardizes.
    standardize: Option<(Tensor, Tensor)>,
    embedding_projection: Linear,
    ones: Tensor,
}

impl Gemma4VisionModel {
    /// Loads the tower below `tower` (`model.vision_tower`) and the embedder below `embedder`
    /// (`model.embed_vision`), which projects to `text_hidden`.
    pub fn load(cfg: &Gemma4VisionConfig, tower: &Scope<'_>, embedder: &Scope<'_>, text_hidden: usize) -> Result<Self> {
        let (h, p) = (cfg.hidden_size, cfg.patch_size);
        let patch = tower.at("patch_embedder");
        let layers = tower.at("encoder").at("layers");
        let standardize = if cfg.standardize {
            Some((tower.tensor("std_bias", &[h])?, tower.tensor("std_scale", &[h])?))
        } else {
            None
        };
        let position_table = patch.param("position_embedding_table", &[2, cfg.position_embedding_size, h])?;
        let ones = Tensor::from_f32(tower.weights().device(), &vec![1.0; h], &[h], position_table.value().dtype())?;
        Ok(Gemma4VisionModel {
            cfg: cfg.clone(),
            input_proj: patch.linear("input_proj", h, 3 * p * p)?,
            position_table,
            layers: (0..cfg.num_hidden_layers).map(|i| VisionLayer::load(cfg, &layers.at(i))).collect::<Result<_>>()?,
            standardize,
            embedding_projection: embedder.linear("embedding_projection", text_hidden, h)?,
            ones,
        })
    }

    /// The encoder layers.
    pub fn layers(&self) -> &[VisionLayer] {
        &self.layers
    }

    /// The encoder layers (their clipped linears take adapters).
    pub fn layers_mut(&mut self) -> &mut [VisionLayer] {
        &mut self.layers
    }

    /// Every linear, to attach adapters to, in PEFT's `all-linear` order: the patch projection,
    /// the layers' clipped linears (their inner linear, the one PEFT adapts), the embedder's
    /// projection into the text width.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = vec![&mut self.input_proj];
        for l in &mut self.layers {
            v.extend(l.linears_mut().into_iter().map(|c| c.linear_mut()));
        }
        v.push(&mut self.embedding_projection);
        v
    }

    /// Soft tokens in the text width, `[kept slots of every image, text_hidden]` in image order,
    /// of `pixels: [images, patches, 3·p·p]` at `positions` (`[images, patches, 2]` as x, y;
    /// (-1, -1) on padding). Also returns the slots kept per image.
    pub fn forward(&self, pixels: &Var, positions: &[i64], checkpointing: Checkpointing) -> Result<(Var, Vec<usize>)> {
        let (h, p) = (self.cfg.hidden_size, self.cfg.patch_size);
        let shape = pixels.shape().to_vec();
        if shape.len() != 3 || shape[2] != 3 * p * p {
            return Err(Error::shape("pixel_values", format!("[images, patches, {}]", 3 * p * p), &shape));
        }
        let (images, patches) = (shape[0], shape[1]);
        let k = self.cfg.pooling_kernel_size;
        let pooling = Pooling::from_positions(positions, images, patches, k)?;
        let rows = images * patches;
        let padding: Vec<u32> = (0..rows as u32)
            .filter(|&i| positions[2 * i as usize] == -1 && positions[2 * i as usize + 1] == -1)
            .collect();
        let size = self.cfg.position_embedding_size as i64;
        if let Some(i) = (0..rows).find(|&i| positions[2 * i] >= size || positions[2 * i + 1] >= size) {
            return Err(Error::invalid(format!(
                "image_position_ids: patch {} of image {} at ({}, {}) is past the {size}-entry position table",
                i % patches,
                i / patches,
                positions[2 * i],
                positions[2 * i + 1]
            )));
        }
        let dev = pixels.value().device().clone();
        let dtype = pixels.value().dtype();
        let constant = |v: Vec<f32>, shape: &[usize]| -> Result<Var> {
            Ok(pixels.tape().input(Tensor::from_f32(&dev, &v, shape, dtype)?))
        };
        // 2 (x - 0.5), as 2x - 1 (the same rounding).
        let flat = ops::reshape(pixels, &[rows, 3 * p * p])?;
        let x = ops::add(&ops::scale(&flat, 2.0)?, &constant(vec![-1.0; 3 * p * p], &[3 * p * p])?)?;
        let x = self.input_proj.forward(&x)?;
        // Position embeddings: the x table's row plus the y table's, zero on padding patches.
        let table = ops::reshape(&self.position_table, &[2 * self.cfg.position_embedding_size, h])?;
        let ids = |c: usize, offset: usize| -> Vec<u32> {
            (0..rows).map(|i| (positions[2 * i + c].max(0) as usize + offset) as u32).collect()
        };
        let mut pos = ops::add(
            &ops::gather_rows(&table, &ids(0, 0))?,
            &ops::gather_rows(&table, &ids(1, self.cfg.position_embedding_size))?,
        )?;
        if !padding.is_empty() {
            pos = ops::scatter_rows(&pos, &constant(vec![0.0; padding.len() * h], &[padding.len(), h])?, &padding)?;
        }
        let mut hs = ops::reshape(&ops::add(&x, &pos)?, &[images, patches, h])?;
        let ctx = self.context(positions, images, patches, &dev)?;
        for layer in &self.layers {
            let c = ctx.clone();
            hs = checkpointed(layer, &hs, checkpointing, move |l, x| l.forward(x, &c))?;
        }
        let pooled = self.pool(&ops::reshape(&hs, &[rows, h])?, &pooling)?;
        let pooled = ops::scale(&pooled, (h as f32).sqrt())?;
        let pooled = match &self.standardize {
            None => pooled,
            Some((bias, scale)) => {
                let minus_bias = ops::scale(&pixels.tape().input(bias.clone()), -1.0)?;
                ops::mul(&ops::add(&pooled, &minus_bias)?, &pixels.tape().input(scale.clone()))?
            }
        };
        let normed = ops::rms_norm(&pooled, &pixels.tape().input(self.ones.clone()), self.cfg.rms_norm_eps as f32)?;
        Ok((self.embedding_projection.forward(&normed)?, pooling.per_image))
    }

    /// The mean of each kept slot's patches (padding patches count as zero) `[slots, H]`.
    fn pool(&self, hs: &Var, pooling: &Pooling) -> Result<Var> {
        let (rows, h) = (hs.shape()[0], hs.shape()[1]);
        // One zero row past the patches stands for padding patches (zero in HF's pooler) and
        // for the missing patches of a slot at the image's edge.
        let zero_row = rows as u32;
        let zeros = hs.tape().input(Tensor::zeros(hs.value().device(), &[rows + 1, h], hs.value().dtype())?);
        let padded = ops::scatter_rows(&zeros, hs, &(0..zero_row).collect::<Vec<_>>())?;
        let mut sum: Option<Var> = None;
        for j in 0..pooling.k_squared {
            let ids: Vec<u32> = pooling.slots.iter().map(|s| s.get(j).copied().unwrap_or(zero_row)).collect();
            let part = ops::gather_rows(&padded, &ids)?;
            sum = Some(match sum {
                None => part,
                Some(acc) => ops::add(&acc, &part)?,
            });
        }
        ops::scale(&sum.expect("k >= 1"), 1.0 / pooling.k_squared as f32)
    }

    fn context(
        &self,
        positions: &[i64],
        images: usize,
        patches: usize,
        dev: &lapidary_core::Device,
    ) -> Result<VisionContext> {
        let d = self.cfg.head_dim;
        let pos: Vec<[f32; 2]> = positions.chunks(2).map(|c| [c[0] as f32, c[1] as f32]).collect();
        let (c, s) = rope::axial_tables(&pos, d, self.cfg.rope_theta);
        let upload = |v: &[f32]| Tensor::from_f32(dev, v, &[images, patches, d], DType::F32);
        let keep: Vec<f32> = pos.iter().map(|p| f32::from(!(p[0] == -1.0 && p[1] == -1.0))).collect();
        let mask = AttentionMask {
            key_padding: Some(Tensor::from_f32(dev, &keep, &[images, patches], DType::F32)?),
            ..AttentionMask::full()
        };
        Ok(VisionContext { rope: (upload(&c)?, upload(&s)?), mask })
    }
}
