//! Gemma3ForConditionalGeneration: the SigLIP tower and projector turn each image into
//! `mm_tokens_per_image` embeddings, which replace the image soft tokens of the (scaled) token
//! embeddings; the decoder runs with image blocks bidirectional; logits come from the tied head;
//! the loss is HF's: mean cross-entropy of next-token labels != -100 where the next position is
//! not padding.

use crate::config::Gemma3Config;
use crate::decoder::{DecoderContext, Gemma3TextModel, KvCache};
use crate::projector::MultiModalProjector;
use lapidary_autograd::{Tape, Trainable, Var, ops};
use lapidary_core::{DType, Device, Error, Result, Tensor};
use lapidary_kernels::attention::{AttentionMask, segments_from_positions};
use lapidary_kernels::rope;
use lapidary_nn::{Linear, Weights};
use lapidary_siglip::SiglipVisionModel;

/// One batch as HF's processor makes it. Integer fields are row-major `[batch, seq]`.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// 1 on image soft tokens.
    pub token_type_ids: Vec<i64>,
    /// Labels (-100 = not counted); `None` for no loss.
    pub labels: Option<Vec<i64>>,
    /// `[images, 3, H, W]`, images in row order.
    pub pixel_values: Option<Tensor>,
    /// Positions of the tokens `[B, T]`; `None` for `0..T` in every row. A packed row holds
    /// several sequences: each starts where its position is 0 (the padding-free collators'
    /// convention), attends only within itself, and its RoPE positions restart there.
    pub position_ids: Option<Vec<i64>>,
}

/// What a forward pass returns.
pub struct Output {
    /// `[batch * seq, vocab]`.
    pub logits: Var,
    /// Mean cross-entropy, `[1]`, when labels were given.
    pub loss: Option<Var>,
    /// HF's `hidden_states`: decoder input (scaled embeddings with image features), the output
    /// of every layer but the last, and the final normalized output; each `[B, T, H]`.
    pub hidden_states: Vec<Var>,
}

impl Batch {
    /// Checks what the model would otherwise read wrongly: at least one row and one token, every
    /// field `batch x seq` long, ids within the vocabulary (or the image soft token), masks and
    /// token types 0 or 1, labels -100 or within the vocabulary. Errors name the field and the
    /// (row, position).
    pub fn validate(&self, vocab_size: usize, image_token: usize) -> Result<()> {
        let (b, t) = (self.batch, self.seq);
        if b == 0 || t == 0 {
            return Err(Error::invalid(format!("batch: {b} row(s) of {t} token(s); at least one of each is needed")));
        }
        let mut fields = vec![
            ("input_ids", &self.input_ids),
            ("attention_mask", &self.attention_mask),
            ("token_type_ids", &self.token_type_ids),
        ];
        if let Some(labels) = &self.labels {
            fields.push(("labels", labels));
        }
        for (name, v) in &fields {
            if v.len() != b * t {
                return Err(Error::invalid(format!("batch: {name} has {} values, expected {b} x {t}", v.len())));
            }
        }
        let at = |i: usize| format!("row {}, position {}", i / t, i % t);
        if let Some(p) = &self.position_ids {
            if p.len() != b * t {
                return Err(Error::invalid(format!("batch: position_ids has {} values, expected {b} x {t}", p.len())));
            }
            if let Some(i) = p.iter().position(|&x| x < 0) {
                return Err(Error::invalid(format!("batch: position_ids at {} is {}; expected >= 0", at(i), p[i])));
            }
            // A sequence may not start inside an image: its tokens would be split between two.
            if let Some(i) = (0..b * t)
                .find(|&i| i % t > 0 && p[i] == 0 && self.token_type_ids[i] == 1 && self.token_type_ids[i - 1] == 1)
            {
                return Err(Error::invalid(format!(
                    "batch: a sequence starts (position_ids 0) at {} inside an image's tokens; \
                     an image must lie within one sequence",
                    at(i)
                )));
            }
        }
        let vocab = vocab_size as i64;
        for (name, v) in fields {
            let bad = v.iter().position(|&x| match name {
                "input_ids" => !((0..vocab).contains(&x) || x == image_token as i64),
                "labels" => !(x == -100 || (0..vocab).contains(&x)),
                _ => !(x == 0 || x == 1),
            });
            if let Some(i) = bad {
                let expected = match name {
                    "input_ids" => format!("0 to {} or the image token {image_token}", vocab - 1),
                    "labels" => format!("-100 or 0 to {}", vocab - 1),
                    _ => "0 or 1".to_string(),
                };
                return Err(Error::invalid(format!("batch: {name} at {} is {}; expected {expected}", at(i), v[i])));
            }
        }
        Ok(())
    }

    /// One row of `ids` without labels or padding (a prompt): token_type_ids 1 where an id is
    /// `image_token`, the images' pixels when there are any.
    pub fn prompt(ids: &[u32], image_token: usize, pixel_values: Option<Tensor>) -> Self {
        Batch {
            batch: 1,
            seq: ids.len(),
            input_ids: ids.iter().map(|&i| i as i64).collect(),
            attention_mask: vec![1; ids.len()],
            token_type_ids: ids.iter().map(|&i| i64::from(i as usize == image_token)).collect(),
            labels: None,
            pixel_values,
            position_ids: None,
        }
    }

    /// Whether position `c` of row `r` starts a sequence (position 0 of a packed row).
    pub fn starts_sequence(&self, r: usize, c: usize) -> bool {
        c == 0 || self.position_ids.as_ref().is_some_and(|p| p[r * self.seq + c] == 0)
    }

    /// Number of positions the loss counts: next-token labels other than -100 whose position is
    /// not padding and does not start a sequence (as the loss shifts them).
    pub fn label_count(&self) -> usize {
        let (b, t) = (self.batch, self.seq);
        let Some(labels) = &self.labels else { return 0 };
        (0..b)
            .map(|r| {
                (1..t)
                    .filter(|&c| {
                        self.attention_mask[r * t + c] != 0 && labels[r * t + c] != -100 && !self.starts_sequence(r, c)
                    })
                    .count()
            })
            .sum()
    }
}

/// Whether parameter `name` (a checkpoint key, a tape leaf or an adapter tensor, with or without
/// a `model.` or PEFT `base_model.model.` prefix) is on the vision side: the SigLIP tower or the
/// multimodal projector — what a batch without images never reaches.
pub fn is_vision_side(name: &str) -> bool {
    name.split('.').any(|segment| segment == "vision_tower" || segment == "multi_modal_projector")
}

/// Trainability of the model's three parts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Parts {
    /// The SigLIP tower's own weights.
    pub vision: Trainable,
    /// The projector's norm and projection weight.
    pub projector: Trainable,
    /// The decoder's weights (embedding included).
    pub text: Trainable,
}

/// The vision-language model.
pub struct Gemma3ForConditionalGeneration {
    cfg: Gemma3Config,
    stored_names: std::collections::BTreeMap<String, String>,
    stored_shapes: std::collections::BTreeMap<String, Vec<usize>>,
    /// The vision tower and projector; `None` in a text-only model.
    vision: Option<(SiglipVisionModel, MultiModalProjector)>,
    text: Gemma3TextModel,
}

impl Gemma3ForConditionalGeneration {
    /// Loads every parameter (HF names; the 5.x and the hub layouts both load) onto `tape`.
    pub fn load(cfg: &Gemma3Config, w: &Weights, tape: &Tape, trainable: Trainable) -> Result<Self> {
        Self::load_parts(cfg, w, tape, Parts { vision: trainable, projector: trainable, text: trainable })
    }

    /// [`Self::load`] with each part's parameters trainable or frozen on their own (e.g. a
    /// trained projector between frozen towers, PEFT's `modules_to_save`).
    pub fn load_parts(cfg: &Gemma3Config, w: &Weights, tape: &Tape, parts: Parts) -> Result<Self> {
        let vision = match &cfg.vision {
            None => None,
            Some(vc) => Some((
                SiglipVisionModel::load(vc, w, "vision_tower.", tape, parts.vision)?,
                MultiModalProjector::load(
                    w,
                    "multi_modal_projector.",
                    vc.hidden_size,
                    cfg.text.hidden_size,
                    vc.grid(),
                    cfg.mm_tokens_per_image,
                    vc.layer_norm_eps,
                    tape,
                    parts.projector,
                )?,
            )),
        };
        let text = Gemma3TextModel::load(&cfg.text, w, "language_model.model.", tape, parts.text)?;
        Ok(Gemma3ForConditionalGeneration {
            cfg: cfg.clone(),
            stored_names: w.stored_names(),
            stored_shapes: w.stored_shapes(),
            vision,
            text,
        })
    }

    /// Opens an HF model directory (`config.json` and its safetensors, either layout; a
    /// Gemma3ForCausalLM directory gives a text-only model) or a `.gguf` file (text-only).
    pub fn open(
        dir: impl AsRef<std::path::Path>,
        device: &Device,
        dtype: DType,
        tape: &Tape,
        trainable: Trainable,
    ) -> Result<Self> {
        Self::open_parts(dir, device, dtype, tape, Parts { vision: trainable, projector: trainable, text: trainable })
    }

    /// [`Self::open`] with per-part trainability (see [`Self::load_parts`]).
    pub fn open_parts(
        dir: impl AsRef<std::path::Path>,
        device: &Device,
        dtype: DType,
        tape: &Tape,
        parts: Parts,
    ) -> Result<Self> {
        Self::open_packed(dir, device, dtype, tape, parts, None)
    }

    /// [`Self::open_parts`] with the frozen linear weights packed (bf16, NF4) as they are read,
    /// so the full-precision copies never reach the device.
    pub fn open_packed(
        dir: impl AsRef<std::path::Path>,
        device: &Device,
        dtype: DType,
        tape: &Tape,
        parts: Parts,
        packing: Option<lapidary_kernels::quant::PackFormat>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        if lapidary_nn::gguf::is_gguf_path(dir) {
            let f = std::rc::Rc::new(lapidary_nn::gguf::GgufFile::open(dir)?);
            let cfg = crate::gguf::config(&f)?;
            let (names, norms) = crate::gguf::tensor_names(&cfg.text);
            let w = Weights::from_gguf(f, names, norms, device, dtype).with_packing(packing);
            let model = Self::load_parts(&cfg, &w, tape, parts)?;
            w.finish(&[])?;
            return Ok(model);
        }
        let cfg = Gemma3Config::from_file(dir.join("config.json"))?;
        let w = Weights::open(dir, device, dtype)?
            .with_alias("vision_tower.", "vision_tower.vision_model.")
            .with_alias("language_model.model.", "model.language_model.")
            .with_alias("language_model.model.", "model.")
            .with_packing(packing);
        let model = Self::load_parts(&cfg, &w, tape, parts)?;
        w.finish(&["lm_head."])?;
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &Gemma3Config {
        &self.cfg
    }

    /// The key a parameter is stored under in the checkpoint it was loaded from (parameters are
    /// named with the transformers 5.x keys; a hub-layout checkpoint stores some differently).
    pub fn stored_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.stored_names.get(name).map_or(name, String::as_str)
    }

    /// The shape a parameter is stored in by its checkpoint (the patch embedding as a conv
    /// kernel `[out, c, p, p]`, used here as a matrix); `None` for one not loaded from it.
    pub fn stored_shape(&self, name: &str) -> Option<&[usize]> {
        self.stored_shapes.get(name).map(Vec::as_slice)
    }

    /// `t` (a parameter `name`, or its gradient) in the shape its checkpoint stores it in.
    pub fn in_stored_shape(&self, name: &str, t: &Tensor) -> Result<Tensor> {
        match self.stored_shape(name) {
            Some(s) if s != t.shape() => t.reshape(s),
            _ => Ok(t.clone()),
        }
    }

    /// Every linear layer of both towers (paths are checkpoint keys without `.weight`), for
    /// attaching adapters by path.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = Vec::new();
        if let Some((vision, _)) = &mut self.vision {
            for l in vision.layers_mut() {
                v.extend(l.linears_mut());
            }
        }
        for l in self.text.layers_mut() {
            v.extend(l.linears_mut());
        }
        v
    }

    /// The module path PEFT gives a linear at checkpoint path `path` (transformers 5.x in-memory
    /// names under `base_model.model.`), e.g. `language_model.model.layers.0.self_attn.q_proj` ->
    /// `base_model.model.model.language_model.layers.0.self_attn.q_proj`.
    pub fn peft_path(path: &str) -> String {
        let inner = match path.strip_prefix("language_model.model.") {
            Some(rest) => format!("model.language_model.{rest}"),
            None => format!("model.{path}"),
        };
        format!("base_model.model.{inner}")
    }

    /// PEFT's module path for a linear at `path` in a text-only model (Gemma3ForCausalLM:
    /// `base_model.model.model.layers.N...`).
    pub fn peft_path_causal_lm(path: &str) -> String {
        format!("base_model.model.model.{}", path.strip_prefix("language_model.model.").unwrap_or(path))
    }

    /// The PEFT path mapping of this model: [`Self::peft_path`] for the vision-language model,
    /// [`Self::peft_path_causal_lm`] for a text-only one.
    pub fn peft_namer(&self) -> fn(&str) -> String {
        if self.vision.is_some() { Self::peft_path } else { Self::peft_path_causal_lm }
    }

    /// Logits and (with labels) the loss of `batch`.
    pub fn forward(&self, tape: &Tape, batch: &Batch, checkpointing: bool) -> Result<Output> {
        let pixels = batch.pixel_values.as_ref().map(|p| tape.input(p.clone()));
        self.forward_with_pixels(batch, pixels.as_ref(), checkpointing)
    }

    /// [`Self::forward`] with the pixels given as a variable (e.g. a trainable leaf, to get the
    /// gradient with respect to the image); `batch.pixel_values` is ignored.
    pub fn forward_with_pixels(&self, batch: &Batch, pixels: Option<&Var>, checkpointing: bool) -> Result<Output> {
        self.forward_normalized(batch, pixels, checkpointing, None)
    }

    /// [`Self::forward_with_pixels`] with the loss's divisor given: the summed cross-entropy is
    /// divided by `normalizer` instead of this batch's label count. Gradient accumulation passes
    /// the label count of all its micro-batches, so that their losses add up to the loss of the
    /// whole batch (not a mean of means).
    pub fn forward_normalized(
        &self,
        batch: &Batch,
        pixels: Option<&Var>,
        checkpointing: bool,
        normalizer: Option<f32>,
    ) -> Result<Output> {
        let hidden_states = self.hidden_states(batch, pixels, checkpointing)?;
        let logits = self.text.logits(&self.final_rows(batch, &hidden_states)?)?;
        let loss = match next_token_labels(batch) {
            None => None,
            Some(shifted) => Some(ops::cross_entropy(&logits, &shifted, normalizer)?),
        };
        Ok(Output { logits, loss, hidden_states })
    }

    /// The loss of [`Self::forward_normalized`] alone, for training: the output head and the
    /// cross-entropy run fused over the labelled positions in chunks, so the `[tokens, vocab]`
    /// logits (2.1 GB in f32 for 2,048 tokens of Gemma 3's vocabulary, and as much again for their
    /// gradient) never exist. Same value and gradients up to summation order.
    pub fn loss_normalized(
        &self,
        batch: &Batch,
        pixels: Option<&Var>,
        checkpointing: bool,
        normalizer: Option<f32>,
    ) -> Result<Var> {
        let shifted = next_token_labels(batch).ok_or_else(|| Error::invalid("loss: the batch has no labels"))?;
        let hidden_states = self.hidden_states(batch, pixels, checkpointing)?;
        self.text.head_loss(&self.final_rows(batch, &hidden_states)?, &shifted, normalizer)
    }

    /// HF's `hidden_states` of `batch` (decoder input, every layer's output but the last, the
    /// final normalized output), each `[B, T, H]`.
    fn hidden_states(&self, batch: &Batch, pixels: Option<&Var>, checkpointing: bool) -> Result<Vec<Var>> {
        let device = self.text.embed_tokens().value().device().clone();
        let h = self.inputs_embeds(batch, pixels, checkpointing)?;
        let ctx = self.context(&device, batch, 0)?;
        self.text.forward(&h, &ctx, checkpointing)
    }

    /// The final normalized output as `[B * T, H]` rows, what the head reads.
    fn final_rows(&self, batch: &Batch, hidden_states: &[Var]) -> Result<Var> {
        let last = hidden_states.last().expect("at least the final norm");
        ops::reshape(last, &[batch.batch * batch.seq, self.cfg.text.hidden_size])
    }

    /// Decoder input `[B, T, H]`: scaled token embeddings with the image features in place of
    /// the image soft tokens.
    fn inputs_embeds(&self, batch: &Batch, pixels: Option<&Var>, checkpointing: bool) -> Result<Var> {
        let (b, t) = (batch.batch, batch.seq);
        batch.validate(self.cfg.text.vocab_size, self.cfg.image_token_index)?;
        // The image soft token may lie past the vocabulary (HF looks it up as 0, then replaces it).
        let vocab = self.cfg.text.vocab_size as i64;
        let ids: Vec<u32> = batch.input_ids.iter().map(|&i| if i < vocab { i as u32 } else { 0 }).collect();
        let mut x = self.text.embed(&ids)?;
        let image_rows: Vec<u32> =
            (0..b * t).filter(|&i| batch.input_ids[i] == self.cfg.image_token_index as i64).map(|i| i as u32).collect();
        let images = pixels.map_or(0, |p| p.shape()[0]);
        if image_rows.len() != images * self.cfg.mm_tokens_per_image {
            return Err(Error::invalid(format!(
                "batch: {} image tokens but {images} image(s) x {} tokens per image: image features and image tokens do not match",
                image_rows.len(),
                self.cfg.mm_tokens_per_image
            )));
        }
        if let Some(pixels) = pixels {
            let (vision, projector) = self
                .vision
                .as_ref()
                .ok_or_else(|| Error::invalid("batch: images given to a text-only model (no vision tower)"))?;
            let feats = projector.forward(&vision.forward(pixels, checkpointing)?)?;
            let feats = ops::reshape(&feats, &[images * self.cfg.mm_tokens_per_image, self.cfg.text.hidden_size])?;
            x = ops::scatter_rows(&x, &feats, &image_rows)?;
        }
        ops::reshape(&x, &[b, t, self.cfg.text.hidden_size])
    }

    /// Starts generation: runs the prompt (one row, with its images) and fills `cache`.
    /// Returns the logits of the last position.
    pub fn prefill(&self, tape: &Tape, batch: &Batch, cache: &mut KvCache) -> Result<Vec<f32>> {
        if batch.batch != 1 || !cache.is_empty() {
            return Err(Error::invalid("prefill: one row and an empty cache"));
        }
        let _guard = tape.no_grad();
        let pixels = batch.pixel_values.as_ref().map(|p| tape.input(p.clone()));
        let h = self.inputs_embeds(batch, pixels.as_ref(), false)?;
        let device = self.text.embed_tokens().value().device().clone();
        let ctx = self.context(&device, batch, 0)?;
        self.last_logits(&self.text.forward_cached(&h, &ctx, cache)?)
    }

    /// One generation step: the next token after the cached ones; returns its logits.
    pub fn decode_step(&self, tape: &Tape, token: u32, cache: &mut KvCache) -> Result<Vec<f32>> {
        let _guard = tape.no_grad();
        let past = cache.len();
        let batch = Batch::prompt(&[token], self.cfg.image_token_index, None);
        let h = self.inputs_embeds(&batch, None, false)?;
        let device = self.text.embed_tokens().value().device().clone();
        let ctx = self.context(&device, &batch, past)?;
        self.last_logits(&self.text.forward_cached(&h, &ctx, cache)?)
    }

    fn last_logits(&self, h: &Var) -> Result<Vec<f32>> {
        let (t, hidden) = (h.shape()[1], self.cfg.text.hidden_size);
        let all = h.value().to_f32_vec()?;
        let last = &all[(t - 1) * hidden..t * hidden];
        let device = h.value().device();
        let x = h.tape().input(Tensor::from_f32(device, last, &[1, hidden], h.value().dtype())?);
        self.text.logits(&x)?.value().to_f32_vec()
    }

    /// Rope tables and masks for `batch` at positions `offset..offset + seq` (offset > 0:
    /// decoding after `offset` cached tokens; no padding or image blocks then).
    fn context(&self, device: &Device, batch: &Batch, offset: usize) -> Result<DecoderContext> {
        let (b, t) = (batch.batch, batch.seq);
        let cfg = &self.cfg.text;
        // Positions per row when the batch gives them (packed rows), else the same for every row.
        let (positions, rows): (Vec<usize>, usize) = match &batch.position_ids {
            Some(p) if offset == 0 => (p.iter().map(|&x| x as usize).collect(), b),
            _ => ((offset..offset + t).collect(), 1),
        };
        let table = |r: crate::config::Rope| -> Result<(Tensor, Tensor)> {
            let (c, s) = rope::tables(&positions, cfg.head_dim, r.theta, r.linear_factor);
            Ok((
                Tensor::from_f32(device, &c, &[rows, t, cfg.head_dim], DType::F32)?,
                Tensor::from_f32(device, &s, &[rows, t, cfg.head_dim], DType::F32)?,
            ))
        };
        // Contiguous runs of image tokens form one bidirectional block each.
        let mut blocks = vec![0f32; b * t];
        for r in 0..b {
            let mut group = 0.0;
            for c in 0..t {
                let is_image = batch.token_type_ids[r * t + c] == 1;
                if is_image {
                    if c == 0 || batch.token_type_ids[r * t + c - 1] != 1 {
                        group += 1.0;
                    }
                    blocks[r * t + c] = group;
                }
            }
        }
        let keep: Vec<f32> = batch.attention_mask.iter().map(|&m| if m != 0 { 1.0 } else { 0.0 }).collect();
        let blocks = Tensor::from_f32(device, &blocks, &[b, t], DType::F32)?;
        let keep = Tensor::from_f32(device, &keep, &[b, t], DType::F32)?;
        if offset > 0 {
            let mut sliding = AttentionMask::sliding(cfg.sliding_window);
            let mut full = AttentionMask::causal();
            sliding.q_offset = offset;
            full.q_offset = offset;
            return Ok(DecoderContext {
                rope_local: table(cfg.rope_local)?,
                rope_global: table(cfg.rope_global)?,
                mask_sliding: sliding,
                mask_full: full,
            });
        }
        let mut mask_sliding =
            AttentionMask::sliding(cfg.sliding_window).with_blocks(blocks.clone()).with_key_padding(keep.clone());
        let mut mask_full = AttentionMask::causal().with_blocks(blocks).with_key_padding(keep);
        if let Some(p) = &batch.position_ids {
            let segments = Tensor::from_f32(device, &segments_from_positions(p, b, t), &[b, t], DType::F32)?;
            mask_sliding = mask_sliding.with_segments(segments.clone());
            mask_full = mask_full.with_segments(segments);
        }
        Ok(DecoderContext {
            rope_local: table(cfg.rope_local)?,
            rope_global: table(cfg.rope_global)?,
            mask_sliding,
            mask_full,
        })
    }
}

/// Next-token labels of `batch` (label of position `c + 1` at position `c`); -100 at each row's
/// last position, where the next position is padding, and where the next position starts
/// another sequence of a packed row. `None` without labels.
fn next_token_labels(batch: &Batch) -> Option<Vec<i64>> {
    let (b, t) = (batch.batch, batch.seq);
    let labels = batch.labels.as_ref()?;
    Some(
        (0..b * t)
            .map(|i| {
                let (r, c) = (i / t, i % t);
                if c + 1 < t && batch.attention_mask[r * t + c + 1] != 0 && !batch.starts_sequence(r, c + 1) {
                    labels[r * t + c + 1]
                } else {
                    -100
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::{Batch, is_vision_side};

    #[test]
    fn vision_side_names_in_every_spelling() {
        for name in [
            "vision_tower.encoder.layers.0.mlp.fc1.weight",
            "vision_tower.vision_model.post_layernorm.bias",
            "multi_modal_projector.mm_input_projection_weight",
            "model.multi_modal_projector.mm_soft_emb_norm.weight",
            "base_model.model.model.vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.lora_A.weight",
        ] {
            assert!(is_vision_side(name), "{name}");
        }
        for name in [
            "language_model.layers.0.self_attn.q_proj.weight",
            "model.language_model.embed_tokens.weight",
            "base_model.model.model.language_model.layers.3.mlp.down_proj.lora_B.weight",
            "not_a_vision_tower_really.weight",
        ] {
            assert!(!is_vision_side(name), "{name}");
        }
    }

    fn batch(ids: Vec<i64>, labels: Option<Vec<i64>>) -> Batch {
        let n = ids.len();
        Batch {
            batch: 2,
            seq: n / 2,
            input_ids: ids,
            attention_mask: vec![1; n],
            token_type_ids: vec![0; n],
            labels,
            pixel_values: None,
            position_ids: None,
        }
    }

    #[test]
    fn ids_and_labels_outside_the_vocabulary_are_errors_naming_the_position() {
        assert!(batch(vec![1, 2, 3, 200], None).validate(100, 200).is_ok());
        let e = batch(vec![1, 2, 3, 100], None).validate(100, 200).unwrap_err().to_string();
        assert!(e.contains("input_ids at row 1, position 1 is 100"), "{e}");
        let e = batch(vec![1, -1, 3, 4], None).validate(100, 200).unwrap_err().to_string();
        assert!(e.contains("input_ids at row 0, position 1 is -1"), "{e}");
        let e = batch(vec![1, 2, 3, 4], Some(vec![-100, 5, 100, -100])).validate(100, 200).unwrap_err().to_string();
        assert!(e.contains("labels at row 1, position 0 is 100"), "{e}");
        let mut b = batch(vec![1, 2, 3, 4], None);
        b.attention_mask[2] = 2;
        assert!(b.validate(100, 200).unwrap_err().to_string().contains("attention_mask at row 1, position 0 is 2"));
        let empty = Batch { batch: 0, seq: 4, ..batch(vec![], None) };
        assert!(empty.validate(100, 200).unwrap_err().to_string().contains("0 row(s)"));
        let short = Batch { seq: 3, ..batch(vec![1, 2, 3, 4], None) };
        assert!(short.validate(100, 200).unwrap_err().to_string().contains("input_ids has 4 values, expected 2 x 3"));
    }
}
