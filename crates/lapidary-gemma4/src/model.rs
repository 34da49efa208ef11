//! Gemma4ForConditionalGeneration as HF computes it: image placeholders looked up as the pad
//! token and replaced by the vision tower's soft tokens (in order, image by image); on the
//! E-series the per-layer inputs take the pad token's identity at those positions and project
//! the soft tokens; the decoder runs with
//! each run of vision tokens (`mm_token_type_ids` 1 or 2) one bidirectional block on the sliding
//! layers, bounded by the window, and causal full layers; the tied, soft-capped head; HF's
//! shifted mean cross-entropy. Generation runs the prompt once, then each new token after a KV
//! cache. Not the image processor: batches come with `pixel_values` as Gemma4ImageProcessor lays them out.

use crate::config::{Bidirectional, Gemma4Config};
use crate::decoder::DecoderContext;
use crate::text::Gemma4TextModel;
use crate::vision::Gemma4VisionModel;
use lapidary_autograd::{Tape, Var, ops};
use lapidary_core::{DType, Device, Error, Result, Tensor};
use lapidary_data::Collated;
use lapidary_model::generate::decode;
use lapidary_model::{Batch, ForwardOptions, GenerateOptions, KvCache, LayerParams, Model, OpenOptions, Output, Parts};
use lapidary_nn::{AdapterHost, Checkpointing, Layer, Linear, Naming, Part, Scope, Weights};
use std::collections::BTreeMap;

/// Checkpoint prefixes of the parts not supported here (audio), left out when loading.
const UNSUPPORTED: [&str; 3] = ["lm_head.", "model.audio_tower.", "model.embed_audio."];

/// The part of Gemma 4 parameter `name` (a checkpoint key, a tape leaf or an adapter tensor, with
/// or without PEFT's `base_model.model.` prefix): the vision tower, the vision embedder (the
/// projection between the towers), or the language model.
pub fn part_of(name: &str) -> Part {
    for segment in name.split('.') {
        match segment {
            "vision_tower" => return Part::Vision,
            "embed_vision" => return Part::Projector,
            _ => {}
        }
    }
    Part::Language
}

/// The vision-language model (or, from a `gemma4_text` checkpoint, the text-only one).
pub struct Gemma4ForConditionalGeneration {
    cfg: Gemma4Config,
    tape: Tape,
    stored_names: BTreeMap<String, String>,
    stored_shapes: BTreeMap<String, Vec<usize>>,
    vision: Option<Gemma4VisionModel>,
    text: Gemma4TextModel,
}

/// The inputs of the decoder for one batch.
struct DecoderInputs {
    /// `[B, T, H]`.
    embeds: Var,
    /// `[layers, B * T * P]` on the E-series.
    per_layer: Option<Var>,
}

impl Gemma4ForConditionalGeneration {
    /// Loads every parameter from `w` (HF 5.x names: `model.language_model.`,
    /// `model.vision_tower.`, `model.embed_vision.`) onto `tape`, each part trainable or frozen
    /// on its own.
    pub fn load(cfg: &Gemma4Config, w: &Weights, tape: &Tape, parts: Parts) -> Result<Self> {
        let root = Scope::new(w, tape, parts.text).at("model");
        let vision = match &cfg.vision {
            None => None,
            Some(vc) => Some(Gemma4VisionModel::load(
                vc,
                &root.at("vision_tower").with_trainable(parts.vision),
                &root.at("embed_vision").with_trainable(parts.projector),
                cfg.text.hidden_size,
            )?),
        };
        let text = Gemma4TextModel::load(&cfg.text, &root.at("language_model"))?;
        Ok(Gemma4ForConditionalGeneration {
            cfg: cfg.clone(),
            tape: tape.clone(),
            stored_names: w.stored_names(),
            stored_shapes: w.stored_shapes(),
            vision,
            text,
        })
    }

    /// Opens an HF model directory (`config.json` and its safetensors; a Gemma4ForCausalLM
    /// checkpoint, `model.layers...`, gives a text-only model), its parameters on a tape of its
    /// own. An audio tower's weights are left out (audio is not supported).
    pub fn open(path: impl AsRef<std::path::Path>, device: &Device, opts: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let cfg = Gemma4Config::from_file(path.join("config.json"))?;
        let w = Weights::open(path, device, opts.dtype)?
            .with_alias("model.language_model.", "model.")
            .with_packing(opts.packing);
        let model = Self::load(&cfg, &w, &Tape::new(), opts.parts)?;
        w.finish(&UNSUPPORTED)?;
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &Gemma4Config {
        &self.cfg
    }

    /// The text model.
    pub fn text(&self) -> &Gemma4TextModel {
        &self.text
    }

    /// The vision tower with its embedder (`None` in a text-only model).
    pub fn vision(&self) -> Option<&Gemma4VisionModel> {
        self.vision.as_ref()
    }

    /// The module path PEFT gives a linear at checkpoint path `path`:
    /// `base_model.model.` before it (`model.vision_tower.encoder.layers.0.self_attn.q_proj.linear`
    /// for a clipped linear's inner linear, which is what PEFT can target).
    pub fn peft_path(path: &str) -> String {
        format!("base_model.model.{path}")
    }

    /// PEFT's module path for a linear at `path` in a text-only model (Gemma4ForCausalLM:
    /// `base_model.model.model.layers.N...`).
    pub fn peft_path_causal_lm(path: &str) -> String {
        format!("base_model.model.{}", path.replacen("model.language_model.", "model.", 1))
    }

    /// The images of a pass: the given variable, else the batch's pixels as an input.
    fn pixels(&self, batch: &Batch, opts: &ForwardOptions<'_>) -> Option<Var> {
        match opts.pixels {
            Some(p) => Some(p.clone()),
            None => batch.pixel_values.as_ref().map(|p| self.tape.input(p.clone())),
        }
    }

    /// Checks what only Gemma 4 refuses: video and audio soft tokens (not supported).
    fn check_tokens(&self, batch: &Batch) -> Result<()> {
        for (id, what) in [(self.cfg.video_token_id, "video"), (self.cfg.audio_token_id, "audio")] {
            if let Some(i) = batch.input_ids.iter().position(|&x| x == id as i64) {
                return Err(Error::invalid(format!(
                    "batch: input_ids at row {}, position {} is the {what} soft token ({id}): {what} inputs are not supported",
                    i / batch.seq,
                    i % batch.seq
                )));
            }
        }
        batch.validate(self.cfg.text.vocab_size, self.cfg.image_token_id)
    }

    /// The decoder's input embeddings (image soft tokens in place of the placeholders) and the
    /// E-series' per-layer inputs.
    fn decoder_inputs(
        &self,
        batch: &Batch,
        pixels: Option<&Var>,
        checkpointing: Checkpointing,
    ) -> Result<DecoderInputs> {
        self.check_tokens(batch)?;
        let (b, t, h) = (batch.batch, batch.seq, self.cfg.text.hidden_size);
        let image_token = self.cfg.image_token_id as i64;
        let pad = self.cfg.text.pad_token_id as u32;
        let image_rows: Vec<u32> =
            (0..b * t).filter(|&i| batch.input_ids[i] == image_token).map(|i| i as u32).collect();
        // HF looks the placeholders up as the pad token (then replaces them).
        let ids: Vec<u32> = batch.input_ids.iter().map(|&i| if i == image_token { pad } else { i as u32 }).collect();
        let mut x = self.text.embed(&ids)?;
        match pixels {
            None if !image_rows.is_empty() => {
                return Err(Error::invalid(format!(
                    "batch: {} image token(s) but no pixel_values: image features and image tokens do not match",
                    image_rows.len()
                )));
            }
            None => {}
            Some(pixels) => {
                let vision = self
                    .vision
                    .as_ref()
                    .ok_or_else(|| Error::invalid("batch: images given to a text-only model (no vision tower)"))?;
                let positions = batch.image_position_ids.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "batch: pixel_values without image_position_ids ([images, patches, 2], Gemma 4's patches)",
                    )
                })?;
                let (features, per_image) = vision.forward(pixels, positions, checkpointing)?;
                if let Some(want) = &batch.soft_tokens_per_image
                    && let Some(i) = (0..per_image.len()).find(|&i| want.get(i) != Some(&(per_image[i] as i64)))
                {
                    return Err(Error::invalid(format!(
                        "batch: image {i} pools to {} soft tokens but num_soft_tokens_per_image says {:?}",
                        per_image[i],
                        want.get(i)
                    )));
                }
                if features.shape()[0] != image_rows.len() {
                    return Err(Error::invalid(format!(
                        "batch: {} image token(s) but the images give {} soft tokens ({per_image:?} per image): image \
                         features and image tokens do not match",
                        image_rows.len(),
                        features.shape()[0]
                    )));
                }
                x = ops::scatter_rows(&x, &features, &image_rows)?;
            }
        }
        // The per-layer inputs: the placeholders' identity is the pad token's, their projection
        // reads the image features.
        let per_layer = self.text.per_layer_inputs(&ids, &x)?;
        Ok(DecoderInputs { embeds: ops::reshape(&x, &[b, t, h])?, per_layer })
    }

    /// RoPE tables and masks of `batch`: causal (and padded, and packed) on both kinds; where the
    /// model attends vision bidirectionally, each run of vision tokens is a block on the sliding
    /// layers, inside the window.
    fn context(&self, batch: &Batch) -> Result<DecoderContext> {
        let (b, t) = (batch.batch, batch.seq);
        let device = self.text.embed_tokens().value().device();
        let mut ctx = self.text.context(device, b, t, batch.position_ids.as_deref(), &batch.attention_mask)?;
        if self.cfg.text.bidirectional == Bidirectional::Vision && batch.token_type_ids.contains(&1) {
            let blocks = Tensor::from_f32(device, &batch.image_blocks(), &[b, t], DType::F32)?;
            ctx.mask_sliding = ctx.mask_sliding.with_blocks(blocks).with_blocks_in_window();
        }
        Ok(ctx)
    }

    /// HF's `hidden_states` of `batch`, each `[B, T, H]`.
    fn hidden_states(&self, batch: &Batch, opts: &ForwardOptions<'_>) -> Result<Vec<Var>> {
        let pixels = self.pixels(batch, opts);
        let inputs = self.decoder_inputs(batch, pixels.as_ref(), opts.checkpointing)?;
        self.text.forward(&inputs.embeds, inputs.per_layer.as_ref(), &self.context(batch)?, opts.checkpointing)
    }

    /// The final normalized output as `[B * T, H]` rows.
    fn final_rows(&self, batch: &Batch, hidden_states: &[Var]) -> Result<Var> {
        let last = hidden_states.last().expect("at least the final norm");
        ops::reshape(last, &[batch.batch * batch.seq, self.cfg.text.hidden_size])
    }

    /// Starts generation: runs the prompt (one row, with its images) and fills `cache` (empty,
    /// [`KvCache::new`] with the decoder's layer count). Returns the logits of the last position.
    pub fn prefill(&self, batch: &Batch, cache: &mut KvCache) -> Result<Vec<f32>> {
        if batch.batch != 1 || !cache.is_empty() {
            return Err(Error::invalid("prefill: one row and an empty cache"));
        }
        self.extend(batch, cache)
    }

    /// One generation step: the next token after the cached ones; returns its logits.
    pub fn decode_step(&self, token: u32, cache: &mut KvCache) -> Result<Vec<f32>> {
        if cache.is_empty() {
            return Err(Error::invalid("decode_step: the cache is empty (prefill the prompt first)"));
        }
        self.extend(&Batch::prompt(&[token], self.cfg.image_token_id, None), cache)
    }

    /// Runs `batch` (one row) after the cached tokens, without recording gradients, extends
    /// `cache`, and returns the logits of its last position.
    fn extend(&self, batch: &Batch, cache: &mut KvCache) -> Result<Vec<f32>> {
        let _guard = self.tape.no_grad();
        let pixels = self.pixels(batch, &ForwardOptions::default());
        let inputs = self.decoder_inputs(batch, pixels.as_ref(), Checkpointing::Off)?;
        let ctx = if cache.is_empty() {
            self.context(batch)?
        } else {
            self.text.context_after(self.tape_device(), batch.seq, cache.len())?
        };
        let h = self.text.forward_cached(&inputs.embeds, inputs.per_layer.as_ref(), &ctx, cache)?;
        let rows = ops::reshape(&h, &[batch.seq, self.cfg.text.hidden_size])?;
        let last = ops::gather_rows(&rows, &[batch.seq as u32 - 1])?;
        self.text.logits(&last)?.value().to_f32_vec()
    }

    /// The device the weights are on.
    fn tape_device(&self) -> &Device {
        self.text.embed_tokens().value().device()
    }
}

impl AdapterHost for Gemma4ForConditionalGeneration {
    fn tape(&self) -> &Tape {
        &self.tape
    }

    /// [`part_of`]; PEFT paths by [`Self::peft_path`], or [`Self::peft_path_causal_lm`] for a
    /// text-only model.
    fn naming(&self) -> Naming {
        let peft_path = if self.vision.is_some() { Self::peft_path } else { Self::peft_path_causal_lm };
        Naming { part_of, peft_path }
    }

    /// Every linear PEFT's `all-linear` adapts: the vision tower's (its patch projection, the
    /// clipped linears' inner linear, the embedder's projection), the E-series' per-layer-input
    /// projection and every decoder linear; not the tied head.
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = Vec::new();
        if let Some(vision) = &mut self.vision {
            v.extend(vision.linears_mut());
        }
        v.extend(self.text.linears_mut());
        v
    }
}

impl Model for Gemma4ForConditionalGeneration {
    fn family(&self) -> &'static str {
        "gemma4"
    }

    fn vocab_size(&self) -> usize {
        self.cfg.text.vocab_size
    }

    fn has_vision(&self) -> bool {
        self.vision.is_some()
    }

    fn layer_params(&self) -> Vec<LayerParams> {
        let mut out = Vec::new();
        if let Some(vision) = &self.vision {
            for (i, l) in vision.layers().iter().enumerate() {
                out.push(LayerParams { path: format!("model.vision_tower.encoder.layers.{i}"), params: l.params() });
            }
        }
        for (i, l) in self.text.layers().iter().enumerate() {
            out.push(LayerParams { path: format!("model.language_model.layers.{i}"), params: l.params() });
        }
        out
    }

    fn stored_name(&self, name: &str) -> String {
        self.stored_names.get(name).map_or(name, String::as_str).to_string()
    }

    fn stored_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.stored_shapes.get(name).cloned()
    }

    fn hf_checkpoint_key(&self, name: &str) -> String {
        self.stored_name(name)
    }

    /// `[images, patches, 3·p·p]` as Gemma4ImageProcessor lays them out (the positions and
    /// soft-token counts travel in the batch's other fields).
    fn pixel_values(&self, rows: &Collated, device: &Device) -> Result<Option<Tensor>> {
        if rows.images == 0 {
            return Ok(None);
        }
        let mut shape = vec![rows.images];
        shape.extend(&rows.image_shape);
        if shape.len() != 3 || rows.image_position_ids.is_none() {
            return Err(Error::invalid(format!(
                "Gemma 4: collated images of shape {:?} without patch positions; expected Gemma 4 patches \
                 ([patches, 3·p·p] per image, from Gemma 4's processor)",
                rows.image_shape
            )));
        }
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

    /// The tied head, its soft-capping and the cross-entropy fused over chunks of rows (the
    /// `[tokens, vocab]` logits never exist).
    fn loss(&self, batch: &Batch, opts: &ForwardOptions<'_>) -> Result<Var> {
        let shifted = batch.next_token_labels().ok_or_else(|| Error::invalid("loss: the batch has no labels"))?;
        let hidden_states = self.hidden_states(batch, opts)?;
        self.text.head_loss(&self.final_rows(batch, &hidden_states)?, &shifted, opts.normalizer)
    }

    /// The prompt once, then one token at a time after the KV cache.
    fn generate(&self, prompt: &Collated, opts: &GenerateOptions) -> Result<Vec<u32>> {
        let mut batch = self.batch(prompt, self.tape_device())?;
        batch.labels = None;
        let mut cache = KvCache::new(self.text.layers().len());
        let first = self.prefill(&batch, &mut cache)?;
        decode(first, |token| self.decode_step(token, &mut cache), opts)
    }
}

#[cfg(test)]
mod tests {
    use super::part_of;
    use lapidary_nn::Part;

    #[test]
    fn parts_by_name_in_every_spelling() {
        assert_eq!(part_of("model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight"), Part::Vision);
        assert_eq!(part_of("model.embed_vision.embedding_projection.weight"), Part::Projector);
        assert_eq!(
            part_of("base_model.model.model.vision_tower.encoder.layers.1.mlp.up_proj.linear.lora_B.weight"),
            Part::Vision
        );
        assert_eq!(part_of("model.language_model.embed_tokens_per_layer.weight"), Part::Language);
        assert_eq!(part_of("model.layers.3.self_attn.q_proj.weight"), Part::Language);
    }
}
