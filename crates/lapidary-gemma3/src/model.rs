//! Gemma3ForConditionalGeneration: the SigLIP tower and projector turn each image into
//! `mm_tokens_per_image` embeddings, which replace the image soft tokens of the (scaled) token
//! embeddings; the decoder runs with image blocks bidirectional; logits come from the tied head;
//! the loss is HF's: mean cross-entropy of next-token labels != -100 where the next position is
//! not padding.

use crate::config::Gemma3Config;
use crate::decoder::{DecoderContext, Gemma3TextModel};
use crate::projector::MultiModalProjector;
use lapidary_autograd::{Tape, Var, ops};
use lapidary_core::{DType, Device, Error, Result, Tensor};
use lapidary_data::Collated;
use lapidary_kernels::attention::{AttentionMask, segments_from_positions};
use lapidary_kernels::rope;
use lapidary_model::KvCache;
use lapidary_model::generate::decode;
use lapidary_model::{Batch, ForwardOptions, GenerateOptions, LayerParams, Model, OpenOptions, Output, Parts};
use lapidary_nn::{AdapterHost, Checkpointing, Layer, Linear, Naming, Part, Scope, Weights};
use lapidary_siglip::SiglipVisionModel;

/// The part of Gemma 3 parameter `name` (a checkpoint key, a tape leaf or an adapter tensor,
/// with or without a `model.` or PEFT `base_model.model.` prefix): the SigLIP tower, the
/// multimodal projector, or the language model.
pub fn part_of(name: &str) -> Part {
    for segment in name.split('.') {
        match segment {
            "vision_tower" => return Part::Vision,
            "multi_modal_projector" => return Part::Projector,
            _ => {}
        }
    }
    Part::Language
}

/// The vision-language model.
pub struct Gemma3ForConditionalGeneration {
    cfg: Gemma3Config,
    tape: Tape,
    stored_names: std::collections::BTreeMap<String, String>,
    stored_shapes: std::collections::BTreeMap<String, Vec<usize>>,
    /// The vision tower and projector; `None` in a text-only model.
    vision: Option<(SiglipVisionModel, MultiModalProjector)>,
    text: Gemma3TextModel,
    /// Opened from a GGUF file (a text-only model whose HF class is Gemma3ForCausalLM).
    from_gguf: bool,
}

impl Gemma3ForConditionalGeneration {
    /// Loads every parameter from `w` (HF names; the 5.x and the hub layouts both load) onto
    /// `tape`, each part trainable or frozen on its own (e.g. a trained projector between frozen
    /// towers, PEFT's `modules_to_save`).
    pub fn load(cfg: &Gemma3Config, w: &Weights, tape: &Tape, parts: Parts) -> Result<Self> {
        let root = Scope::new(w, tape, parts.text);
        let vision = match &cfg.vision {
            None => None,
            Some(vc) => Some((
                SiglipVisionModel::load(vc, &root.at("vision_tower").with_trainable(parts.vision))?,
                MultiModalProjector::load(cfg, &root.at("multi_modal_projector").with_trainable(parts.projector))?,
            )),
        };
        let text = Gemma3TextModel::load(&cfg.text, &root.at("language_model").at("model"))?;
        Ok(Gemma3ForConditionalGeneration {
            cfg: cfg.clone(),
            tape: tape.clone(),
            stored_names: w.stored_names(),
            stored_shapes: w.stored_shapes(),
            vision,
            text,
            from_gguf: false,
        })
    }

    /// Opens an HF model directory (`config.json` and its safetensors, either layout; a
    /// Gemma3ForCausalLM directory gives a text-only model) or a `.gguf` file (text-only), its
    /// parameters on a tape of its own ([`Self::tape`]).
    pub fn open(path: impl AsRef<std::path::Path>, device: &Device, opts: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let tape = Tape::new();
        if lapidary_nn::gguf::is_gguf_path(path) {
            let f = std::rc::Rc::new(lapidary_nn::gguf::GgufFile::open(path)?);
            let cfg = crate::gguf::config(&f)?;
            let (names, norms) = crate::gguf::tensor_names(&cfg.text);
            let w = Weights::from_gguf(f, names, norms, device, opts.dtype).with_packing(opts.packing);
            let mut model = Self::load(&cfg, &w, &tape, opts.parts)?;
            w.finish(&[])?;
            model.from_gguf = true;
            return Ok(model);
        }
        let cfg = Gemma3Config::from_file(path.join("config.json"))?;
        let w = Weights::open(path, device, opts.dtype)?
            .with_alias("vision_tower.", "vision_tower.vision_model.")
            .with_alias("language_model.model.", "model.language_model.")
            .with_alias("language_model.model.", "model.")
            .with_packing(opts.packing);
        let model = Self::load(&cfg, &w, &tape, opts.parts)?;
        w.finish(&["lm_head."])?;
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &Gemma3Config {
        &self.cfg
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

    /// The images of a pass: the given variable, else the batch's pixels as an input.
    fn pixels(&self, batch: &Batch, opts: &ForwardOptions<'_>) -> Option<Var> {
        match opts.pixels {
            Some(p) => Some(p.clone()),
            None => batch.pixel_values.as_ref().map(|p| self.tape.input(p.clone())),
        }
    }

    /// HF's `hidden_states` of `batch` (decoder input, every layer's output but the last, the
    /// final normalized output), each `[B, T, H]`.
    fn hidden_states(&self, batch: &Batch, opts: &ForwardOptions<'_>) -> Result<Vec<Var>> {
        let h = self.inputs_embeds(batch, self.pixels(batch, opts).as_ref(), opts.checkpointing)?;
        self.text.forward(&h, &self.context(batch, 0)?, opts.checkpointing)
    }

    /// The final normalized output as `[B * T, H]` rows, what the head reads.
    fn final_rows(&self, batch: &Batch, hidden_states: &[Var]) -> Result<Var> {
        let last = hidden_states.last().expect("at least the final norm");
        ops::reshape(last, &[batch.batch * batch.seq, self.cfg.text.hidden_size])
    }

    /// Decoder input `[B, T, H]`: scaled token embeddings with the image features in place of
    /// the image soft tokens.
    fn inputs_embeds(&self, batch: &Batch, pixels: Option<&Var>, checkpointing: Checkpointing) -> Result<Var> {
        let (b, t) = (batch.batch, batch.seq);
        batch.validate(self.cfg.text.vocab_size, self.cfg.image_token_index)?;
        // The image soft token may lie past the vocabulary (`embed` looks it up as 0, as HF does,
        // before it is replaced).
        let ids: Vec<u32> = batch.input_ids.iter().map(|&i| i as u32).collect();
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
    pub fn prefill(&self, batch: &Batch, cache: &mut KvCache) -> Result<Vec<f32>> {
        if batch.batch != 1 || !cache.is_empty() {
            return Err(Error::invalid("prefill: one row and an empty cache"));
        }
        self.extend(batch, cache)
    }

    /// One generation step: the next token after the cached ones; returns its logits.
    pub fn decode_step(&self, token: u32, cache: &mut KvCache) -> Result<Vec<f32>> {
        self.extend(&Batch::prompt(&[token], self.cfg.image_token_index, None), cache)
    }

    /// Runs `batch` (one row) after the cached tokens, extends `cache`, and returns the logits
    /// of its last position.
    fn extend(&self, batch: &Batch, cache: &mut KvCache) -> Result<Vec<f32>> {
        let _guard = self.tape.no_grad();
        let h =
            self.inputs_embeds(batch, self.pixels(batch, &ForwardOptions::default()).as_ref(), Checkpointing::Off)?;
        let h = self.text.forward_cached(&h, &self.context(batch, cache.len())?, cache)?;
        // The last position's row, picked on the device: one read per step, of the logits.
        let t = h.shape()[1];
        let last = ops::gather_rows(&ops::reshape(&h, &[t, self.cfg.text.hidden_size])?, &[t as u32 - 1])?;
        self.text.logits(&last)?.value().to_f32_vec()
    }

    /// Rope tables and masks for `batch` at positions `offset..offset + seq` (offset > 0:
    /// decoding after `offset` cached tokens; no padding, image blocks or segments then).
    fn context(&self, batch: &Batch, offset: usize) -> Result<DecoderContext> {
        let (b, t) = (batch.batch, batch.seq);
        let cfg = &self.cfg.text;
        let device = self.text.embed_tokens().value().device();
        // Positions per row when the batch gives them (packed rows), else the same for every row.
        let (positions, rows): (Vec<usize>, usize) = match &batch.position_ids {
            Some(p) if offset == 0 => (p.iter().map(|&x| x as usize).collect(), b),
            _ => ((offset..offset + t).collect(), 1),
        };
        let table = |r: crate::config::Rope| -> Result<(Tensor, Tensor)> {
            let (c, s) = rope::tables(&positions, cfg.head_dim, r.theta, r.linear_factor);
            let upload = |v: &[f32]| Tensor::from_f32(device, v, &[rows, t, cfg.head_dim], DType::F32);
            Ok((upload(&c)?, upload(&s)?))
        };
        // Full-attention layers' mask; sliding layers' is the same within the window.
        let mut mask_full = AttentionMask { q_offset: offset, ..AttentionMask::causal() };
        if offset == 0 {
            let per_token = |v: &[f32]| Tensor::from_f32(device, v, &[b, t], DType::F32).map(Some);
            let keep: Vec<f32> = batch.attention_mask.iter().map(|&m| f32::from(m != 0)).collect();
            mask_full.blocks = per_token(&batch.image_blocks())?;
            mask_full.key_padding = per_token(&keep)?;
            if let Some(p) = &batch.position_ids {
                mask_full.segments = per_token(&segments_from_positions(p, b, t))?;
            }
        }
        Ok(DecoderContext {
            rope_local: table(cfg.rope_local)?,
            rope_global: table(cfg.rope_global)?,
            mask_sliding: AttentionMask { window: Some(cfg.sliding_window), ..mask_full.clone() },
            mask_full,
        })
    }
}

impl AdapterHost for Gemma3ForConditionalGeneration {
    fn tape(&self) -> &Tape {
        &self.tape
    }

    /// [`part_of`]; PEFT paths by [`Self::peft_path`] for the vision-language model,
    /// [`Self::peft_path_causal_lm`] for a text-only one.
    fn naming(&self) -> Naming {
        let peft_path = if self.vision.is_some() { Self::peft_path } else { Self::peft_path_causal_lm };
        Naming { part_of, peft_path }
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
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
}

impl Model for Gemma3ForConditionalGeneration {
    fn family(&self) -> &'static str {
        "gemma3"
    }

    fn vocab_size(&self) -> usize {
        self.cfg.text.vocab_size
    }

    fn has_vision(&self) -> bool {
        self.vision.is_some()
    }

    fn layer_params(&self) -> Vec<LayerParams> {
        let mut out = Vec::new();
        if let Some((vision, _)) = &self.vision {
            for (i, l) in vision.layers().iter().enumerate() {
                out.push(LayerParams { path: format!("vision_tower.encoder.layers.{i}"), params: l.params() });
            }
        }
        for (i, l) in self.text.layers().iter().enumerate() {
            out.push(LayerParams { path: format!("language_model.model.layers.{i}"), params: l.params() });
        }
        out
    }

    /// Parameters are named with the transformers 5.x keys; a hub-layout checkpoint stores some
    /// under `vision_tower.vision_model.` or `model.`, a GGUF file under its own names.
    fn stored_name(&self, name: &str) -> String {
        self.stored_names.get(name).map_or(name, String::as_str).to_string()
    }

    fn stored_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.stored_shapes.get(name).cloned()
    }

    /// The checkpoint's own key; for a model opened from GGUF, Gemma3ForCausalLM's
    /// (`model.layers.N...`).
    fn hf_checkpoint_key(&self, name: &str) -> String {
        if self.from_gguf { name.replacen("language_model.model.", "model.", 1) } else { self.stored_name(name) }
    }

    /// `[images, 3, H, W]`, images in row order.
    fn pixel_values(&self, rows: &Collated, device: &Device) -> Result<Option<Tensor>> {
        if rows.images == 0 {
            return Ok(None);
        }
        let mut shape = vec![rows.images];
        shape.extend(&rows.image_shape);
        Ok(Some(Tensor::from_f32(device, &rows.pixel_values, &shape, DType::F32)?))
    }

    fn forward(&self, batch: &Batch, opts: &ForwardOptions<'_>) -> Result<Output> {
        let hidden_states = self.hidden_states(batch, opts)?;
        let logits = self.text.logits(&self.final_rows(batch, &hidden_states)?)?;
        let loss = match batch.next_token_labels() {
            None => None,
            Some(shifted) => Some(ops::cross_entropy(&logits, &shifted, opts.normalizer)?),
        };
        Ok(Output { logits, loss, hidden_states })
    }

    /// The output head and the cross-entropy run fused over the labelled positions in chunks, so
    /// the `[tokens, vocab]` logits (2.1 GB in f32 for 2,048 tokens of Gemma 3's vocabulary, and
    /// as much again for their gradient) never exist.
    fn loss(&self, batch: &Batch, opts: &ForwardOptions<'_>) -> Result<Var> {
        let shifted = batch.next_token_labels().ok_or_else(|| Error::invalid("loss: the batch has no labels"))?;
        let hidden_states = self.hidden_states(batch, opts)?;
        self.text.head_loss(&self.final_rows(batch, &hidden_states)?, &shifted, opts.normalizer)
    }

    /// With a KV cache kept on the device: the prompt runs once, then one token at a time.
    fn generate(&self, prompt: &Collated, opts: &GenerateOptions) -> Result<Vec<u32>> {
        let device = self.text.embed_tokens().value().device().clone();
        let mut batch = self.batch(prompt, &device)?;
        batch.labels = None;
        let mut cache = KvCache::new(self.cfg.text.layer_types.len());
        let first = self.prefill(&batch, &mut cache)?;
        decode(first, |token| self.decode_step(token, &mut cache), opts)
    }
}

#[cfg(test)]
mod tests {
    use super::part_of;
    use lapidary_nn::Part;

    #[test]
    fn vision_side_names_in_every_spelling() {
        let is_vision_side = |n: &str| part_of(n).is_vision_side();
        assert_eq!(part_of("model.multi_modal_projector.mm_soft_emb_norm.weight"), Part::Projector);
        assert_eq!(part_of("vision_tower.vision_model.post_layernorm.bias"), Part::Vision);
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
}
