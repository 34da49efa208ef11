//! Gemma 4 configuration with HF field names, from `config.json` in either form: as
//! `save_pretrained` writes it (`text_config.per_layer_config` overrides by layer index) or as
//! released checkpoints carry it (`global_head_dim`, `num_global_key_value_heads`). Both resolve
//! to the same per-layer settings ([`LayerConfig`]): attention kind, head width, key/value heads,
//! K = V, KV sharing, MLP width, RoPE. Audio and the mixture-of-experts block are refused or
//! ignored here with a clear word; not the model.

use lapidary_core::{Error, Result};
use lapidary_kernels::rope;
use lapidary_model::config_json::Section;
use serde_json::Value;
use std::path::Path;

/// Attention kind of one decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Within `sliding_window`, the sliding layers' RoPE.
    Sliding,
    /// Over everything, the full layers' RoPE, head width and key/value heads.
    Full,
}

/// Where a layer's keys and values come from (HF's `kv_sharing_modes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvSharing {
    /// Its own K/V projections, used by itself only.
    Own,
    /// Its own K/V projections, also reused by later layers of its kind.
    Store,
    /// No K/V projections: the K/V of the last `Store` layer of its kind.
    Reuse,
}

/// RoPE of one layer kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Base (theta).
    pub theta: f64,
    /// Fraction of the head rotated (`proportional` RoPE); 1 for the default kind.
    pub partial_rotary_factor: f64,
    /// Divides the frequencies.
    pub factor: f64,
}

impl Rope {
    /// The inverse frequencies for a head of `head_dim` (`head_dim / 2` of them, a zero tail
    /// for the channels left unrotated).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        rope::proportional_inv_freq(head_dim, self.theta, self.partial_rotary_factor, self.factor)
    }
}

/// Which tokens see each other both ways (`use_bidirectional_attention`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bidirectional {
    /// Causal everywhere.
    None,
    /// The tokens of one image block see each other; text stays causal.
    Vision,
    /// No causal mask at all.
    All,
}

/// One decoder layer's settings, resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerConfig {
    /// Sliding or full.
    pub kind: LayerKind,
    /// Width of one head.
    pub head_dim: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// V is the raw K projection (no `v_proj`).
    pub k_eq_v: bool,
    /// Own, stored or reused K/V.
    pub kv_sharing: KvSharing,
    /// MLP width (doubled on KV-reusing layers of a double-wide model).
    pub intermediate_size: usize,
    /// Its RoPE.
    pub rope: Rope,
}

/// A per-layer override of `per_layer_config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct LayerOverride {
    head_dim: Option<usize>,
    num_key_value_heads: Option<usize>,
}

/// The text decoder's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma4TextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Query heads (every layer).
    pub num_attention_heads: usize,
    /// Key/value heads of layers without an override.
    pub num_key_value_heads: usize,
    /// Head width of layers without an override.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Window of sliding layers, as the file gives it.
    pub sliding_window: usize,
    /// Kind of every layer.
    pub layer_types: Vec<LayerKind>,
    /// RoPE of sliding layers.
    pub rope_sliding: Rope,
    /// RoPE of full layers.
    pub rope_full: Rope,
    /// `cap · tanh(logits / cap)` on the output, when set.
    pub final_logit_softcapping: Option<f64>,
    /// Bidirectional attention.
    pub bidirectional: Bidirectional,
    /// Vocabulary of the per-layer embeddings.
    pub vocab_size_per_layer_input: usize,
    /// Width of each layer's per-layer embedding (0: none, the dense models).
    pub hidden_size_per_layer_input: usize,
    /// Full layers take V from the K projection.
    pub attention_k_eq_v: bool,
    /// The last layers that reuse earlier layers' K/V.
    pub num_kv_shared_layers: usize,
    /// KV-reusing layers have an MLP twice as wide.
    pub use_double_wide_mlp: bool,
    /// Padding token id.
    pub pad_token_id: usize,
    /// The output head is the embedding.
    pub tie_word_embeddings: bool,
    overrides: Vec<LayerOverride>,
}

/// Gemma4ForConditionalGeneration's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma4Config {
    /// The decoder.
    pub text: Gemma4TextConfig,
    /// The vision tower; `None` for a text-only model.
    pub vision: Option<Gemma4VisionConfig>,
    /// The file has an audio tower (not trained here; its weights are left out).
    pub has_audio: bool,
    /// Id of the image soft token.
    pub image_token_id: usize,
    /// Id of the token before an image.
    pub boi_token_id: usize,
    /// Id of the token after an image.
    pub eoi_token_id: usize,
    /// Id of the video soft token (videos are not supported: a batch holding it is refused).
    pub video_token_id: usize,
    /// Id of the audio soft token (audio is not supported: a batch holding it is refused).
    pub audio_token_id: usize,
}

/// The vision tower's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma4VisionConfig {
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Side of a square patch, in pixels.
    pub patch_size: usize,
    /// Side of the square of patches pooled into one soft token.
    pub pooling_kernel_size: usize,
    /// Rows of each of the two learned position tables.
    pub position_embedding_size: usize,
    /// Linears clamp their input and output (bounds from the checkpoint).
    pub use_clipped_linears: bool,
    /// Soft tokens are standardized (`(x - std_bias) · std_scale`).
    pub standardize: bool,
    /// Base of the axial 2D RoPE.
    pub rope_theta: f64,
}

fn rope_of(s: Option<Section<'_>>, default_theta: f64) -> Result<Rope> {
    let Some(s) = s else { return Ok(Rope { theta: default_theta, partial_rotary_factor: 1.0, factor: 1.0 }) };
    let (theta, factor) = (s.f64_or("rope_theta", default_theta)?, s.f64_or("factor", 1.0)?);
    match s.str_opt("rope_type")?.unwrap_or("default") {
        "default" => Ok(Rope { theta, partial_rotary_factor: 1.0, factor: 1.0 }),
        "proportional" => Ok(Rope { theta, partial_rotary_factor: s.f64_or("partial_rotary_factor", 1.0)?, factor }),
        other => Err(s.error("rope_type", format!("{other} is not supported (default and proportional are)"))),
    }
}

fn layer_types(s: &Section<'_>, layers: usize) -> Result<Vec<LayerKind>> {
    let mut kinds = match s.get("layer_types") {
        Some(lt) => lt
            .as_array()
            .ok_or_else(|| s.error("layer_types", "must be a list"))?
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(LayerKind::Sliding),
                Some("full_attention") => Ok(LayerKind::Full),
                other => Err(s.error("layer_types", format!("holds an unknown layer type {other:?}"))),
            })
            .collect::<Result<Vec<_>>>()?,
        // HF's default: every sixth layer full.
        None => (0..layers).map(|i| if (i + 1) % 6 == 0 { LayerKind::Full } else { LayerKind::Sliding }).collect(),
    };
    if kinds.len() != layers {
        return Err(s.error("layer_types", format!("lists {} layers, num_hidden_layers is {layers}", kinds.len())));
    }
    // HF forces the last layer to full attention (with a warning).
    if let Some(last) = kinds.last_mut() {
        *last = LayerKind::Full;
    }
    Ok(kinds)
}

/// `per_layer_config` as `save_pretrained` writes it, or the overrides of the released form:
/// `global_head_dim` (512 when absent) on full layers, and `num_global_key_value_heads` there
/// when K = V (as HF applies it).
fn overrides(s: &Section<'_>, kinds: &[LayerKind], k_eq_v: bool) -> Result<Vec<LayerOverride>> {
    let mut out = vec![LayerOverride::default(); kinds.len()];
    if let Some(plc) = s.section("per_layer_config", "text_config.per_layer_config")? {
        for (key, v) in plc.value.as_object().into_iter().flatten() {
            let idx: usize = key.parse().map_err(|_| plc.error(key, "is not a layer index"))?;
            let slot = out.get_mut(idx).ok_or_else(|| plc.error(key, format!("is past the {} layers", kinds.len())))?;
            let name = format!("text_config.per_layer_config.{key}");
            let o = Section::new(&name, v);
            if let Some(bad) = v.as_object().into_iter().flatten().map(|(k, _)| k).find(|k| !is_override(k)) {
                return Err(o.error(bad, "is not a per-layer setting lapidary reads (head_dim, num_key_value_heads)"));
            }
            *slot = LayerOverride {
                head_dim: o.get("head_dim").map(|_| o.usize("head_dim")).transpose()?,
                num_key_value_heads: o
                    .get("num_key_value_heads")
                    .map(|_| o.usize("num_key_value_heads"))
                    .transpose()?,
            };
        }
        return Ok(out);
    }
    let global = LayerOverride {
        head_dim: Some(s.usize_or("global_head_dim", 512)?),
        num_key_value_heads: if k_eq_v {
            s.get("num_global_key_value_heads").map(|_| s.usize("num_global_key_value_heads")).transpose()?
        } else {
            None
        },
    };
    for (slot, kind) in out.iter_mut().zip(kinds) {
        if *kind == LayerKind::Full {
            *slot = global;
        }
    }
    Ok(out)
}

fn is_override(key: &str) -> bool {
    key == "head_dim" || key == "num_key_value_heads"
}

impl Gemma4TextConfig {
    /// From a `text_config` object in either form.
    pub fn from_json(v: &Value) -> Result<Self> {
        let s = Section::new("text_config", v);
        if s.bool_or("enable_moe_block", false)? {
            return Err(s.error(
                "enable_moe_block",
                "is true: the mixture-of-experts block (Gemma 4 26B-A4B) is not supported; dense and E-series models are",
            ));
        }
        let act = s.str_opt("hidden_activation")?.unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            return Err(s.error("hidden_activation", format!("{act} is not supported (gelu_pytorch_tanh is)")));
        }
        if s.bool_or("attention_bias", false)? {
            return Err(s.error("attention_bias", "is true: attention biases are not supported"));
        }
        let layers = s.usize("num_hidden_layers")?;
        Error::check_range("text_config: num_hidden_layers", layers, 1, 512)?;
        let kinds = layer_types(&s, layers)?;
        let rope = s.section("rope_parameters", "text_config.rope_parameters")?;
        let part = |k: &'static str| -> Result<Option<Section<'_>>> {
            match rope {
                Some(r) => r.section(k, k),
                None => Ok(None),
            }
        };
        let bidirectional = match s.str_opt("use_bidirectional_attention")? {
            None => Bidirectional::None,
            Some("vision") => Bidirectional::Vision,
            Some("all") => Bidirectional::All,
            Some(other) => {
                return Err(
                    s.error("use_bidirectional_attention", format!("{other:?} is not one of \"vision\", \"all\""))
                );
            }
        };
        let attention_k_eq_v = s.bool_or("attention_k_eq_v", false)?;
        let cfg = Gemma4TextConfig {
            vocab_size: s.usize("vocab_size")?,
            hidden_size: s.usize("hidden_size")?,
            intermediate_size: s.usize("intermediate_size")?,
            num_attention_heads: s.usize("num_attention_heads")?,
            num_key_value_heads: s.usize("num_key_value_heads")?,
            head_dim: s.usize("head_dim")?,
            rms_norm_eps: s.f64_or("rms_norm_eps", 1e-6)?,
            sliding_window: s.usize_or("sliding_window", 512)?,
            rope_sliding: rope_of(part("sliding_attention")?, 10_000.0)?,
            rope_full: rope_of(part("full_attention")?, 1_000_000.0)?,
            final_logit_softcapping: s.f64_opt("final_logit_softcapping")?,
            bidirectional,
            vocab_size_per_layer_input: s.usize_or("vocab_size_per_layer_input", 262_144)?,
            hidden_size_per_layer_input: s.usize_or("hidden_size_per_layer_input", 256)?,
            attention_k_eq_v,
            num_kv_shared_layers: s.usize_or("num_kv_shared_layers", 0)?,
            use_double_wide_mlp: s.bool_or("use_double_wide_mlp", false)?,
            pad_token_id: s.usize_or("pad_token_id", 0)?,
            tie_word_embeddings: s.bool_or("tie_word_embeddings", true)?,
            overrides: overrides(&s, &kinds, attention_k_eq_v)?,
            layer_types: kinds,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layer_types.len()
    }

    /// Where each layer's K/V come from, as HF's `kv_sharing_modes`: the last
    /// `num_kv_shared_layers` layers reuse, the last layer of each kind before them stores.
    pub fn kv_sharing(&self) -> Vec<KvSharing> {
        let n = self.num_layers();
        let first_shared = n - self.num_kv_shared_layers.min(n);
        let mut modes: Vec<KvSharing> =
            (0..n).map(|i| if i < first_shared { KvSharing::Own } else { KvSharing::Reuse }).collect();
        // As HF: the last layer of each kind before the shared ones stores its K/V, whether or
        // not a later layer reads them.
        for kind in [LayerKind::Sliding, LayerKind::Full] {
            if let Some(i) = (0..first_shared).rev().find(|&i| self.layer_types[i] == kind) {
                modes[i] = KvSharing::Store;
            }
        }
        modes
    }

    /// The settings of layer `i`.
    pub fn layer(&self, i: usize) -> LayerConfig {
        let kind = self.layer_types[i];
        let o = self.overrides[i];
        let kv_sharing = self.kv_sharing()[i];
        let wide = self.use_double_wide_mlp && kv_sharing == KvSharing::Reuse;
        LayerConfig {
            kind,
            head_dim: o.head_dim.unwrap_or(self.head_dim),
            num_key_value_heads: o.num_key_value_heads.unwrap_or(self.num_key_value_heads),
            k_eq_v: self.attention_k_eq_v && kind == LayerKind::Full,
            kv_sharing,
            intermediate_size: self.intermediate_size * if wide { 2 } else { 1 },
            rope: if kind == LayerKind::Full { self.rope_full } else { self.rope_sliding },
        }
    }

    /// The layer whose K/V layer `i` uses: itself, or the storing layer of its kind.
    pub fn kv_source(&self, i: usize) -> usize {
        if self.kv_sharing()[i] != KvSharing::Reuse {
            return i;
        }
        let kind = self.layer_types[i];
        (0..i).rev().find(|&j| self.layer_types[j] == kind && self.kv_sharing()[j] == KvSharing::Store).unwrap_or(i)
    }

    /// Every size within what a Gemma 4 model can have, every scale finite and positive, and KV
    /// sharing possible (each kind of a reusing layer stored before it).
    pub fn validate(&self) -> Result<()> {
        let r = |k: &str, v: usize, lo: usize, hi: usize| Error::check_range(&format!("text_config: {k}"), v, lo, hi);
        r("vocab_size", self.vocab_size, 1, 1 << 24)?;
        r("hidden_size", self.hidden_size, 1, 1 << 16)?;
        r("intermediate_size", self.intermediate_size, 1, 1 << 18)?;
        r("num_attention_heads", self.num_attention_heads, 1, 256)?;
        r("sliding_window", self.sliding_window, 1, 1 << 24)?;
        r("pad_token_id", self.pad_token_id, 0, self.vocab_size - 1)?;
        r("hidden_size_per_layer_input", self.hidden_size_per_layer_input, 0, 1 << 14)?;
        if self.hidden_size_per_layer_input > 0 {
            r("vocab_size_per_layer_input", self.vocab_size_per_layer_input, 1, 1 << 24)?;
        }
        r("num_kv_shared_layers", self.num_kv_shared_layers, 0, self.num_layers() - 1)?;
        Error::check_positive("text_config: rms_norm_eps", self.rms_norm_eps)?;
        if let Some(cap) = self.final_logit_softcapping {
            Error::check_positive("text_config: final_logit_softcapping", cap)?;
        }
        for (name, rope) in [("sliding_attention", self.rope_sliding), ("full_attention", self.rope_full)] {
            let what = |k: &str| format!("text_config: rope_parameters.{name}.{k}");
            Error::check_positive(&what("rope_theta"), rope.theta)?;
            Error::check_positive(&what("factor"), rope.factor)?;
            if !(0.0..=1.0).contains(&rope.partial_rotary_factor) {
                return Err(Error::invalid(format!(
                    "{} must lie in [0, 1], got {}",
                    what("partial_rotary_factor"),
                    rope.partial_rotary_factor
                )));
            }
        }
        let heads = self.num_attention_heads;
        for i in 0..self.num_layers() {
            let l = self.layer(i);
            let at = |k: &str| format!("text_config: layer {i}'s {k}");
            Error::check_range(&at("num_key_value_heads"), l.num_key_value_heads, 1, heads)?;
            Error::check_range(&at("head_dim"), l.head_dim, 2, 1024)?;
            if !heads.is_multiple_of(l.num_key_value_heads) {
                return Err(Error::invalid(format!(
                    "{} {} does not divide num_attention_heads {heads}",
                    at("num_key_value_heads"),
                    l.num_key_value_heads
                )));
            }
            if !l.head_dim.is_multiple_of(2) {
                return Err(Error::invalid(format!(
                    "{} {} must be even (RoPE rotates halves)",
                    at("head_dim"),
                    l.head_dim
                )));
            }
            let source = self.kv_source(i);
            if l.kv_sharing == KvSharing::Reuse && source == i {
                return Err(Error::invalid(format!(
                    "text_config: layer {i} ({:?}) reuses K/V (num_kv_shared_layers {}) but no earlier layer of its kind has any",
                    l.kind, self.num_kv_shared_layers
                )));
            }
            let s = self.layer(source);
            if (s.head_dim, s.num_key_value_heads) != (l.head_dim, l.num_key_value_heads) {
                return Err(Error::invalid(format!(
                    "text_config: layer {i} reuses layer {source}'s K/V of another shape ({} heads of {} vs {} of {})",
                    s.num_key_value_heads, s.head_dim, l.num_key_value_heads, l.head_dim
                )));
            }
        }
        Ok(())
    }
}

impl Gemma4VisionConfig {
    /// From a `vision_config` object.
    pub fn from_json(v: &Value) -> Result<Self> {
        let s = Section::new("vision_config", v);
        let act = s.str_opt("hidden_activation")?.unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            return Err(s.error("hidden_activation", format!("{act} is not supported (gelu_pytorch_tanh is)")));
        }
        if s.bool_or("attention_bias", false)? {
            return Err(s.error("attention_bias", "is true: attention biases are not supported"));
        }
        let rope = s.section("rope_parameters", "vision_config.rope_parameters")?;
        if let Some(kind) = rope.map(|r| r.str_opt("rope_type")).transpose()?.flatten()
            && kind != "axial"
        {
            return Err(Error::invalid(format!("vision_config: rope_type {kind} is not supported (axial is)")));
        }
        let heads = s.usize_or("num_attention_heads", 12)?;
        let cfg = Gemma4VisionConfig {
            hidden_size: s.usize("hidden_size")?,
            intermediate_size: s.usize("intermediate_size")?,
            num_hidden_layers: s.usize("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: s.usize_or("num_key_value_heads", heads)?,
            head_dim: s.usize_or("head_dim", 64)?,
            rms_norm_eps: s.f64_or("rms_norm_eps", 1e-6)?,
            patch_size: s.usize_or("patch_size", 16)?,
            pooling_kernel_size: s.usize_or("pooling_kernel_size", 3)?,
            position_embedding_size: s.usize_or("position_embedding_size", 10_240)?,
            use_clipped_linears: s.bool_or("use_clipped_linears", false)?,
            standardize: s.bool_or("standardize", false)?,
            rope_theta: rope.map(|r| r.f64_or("rope_theta", 100.0)).transpose()?.unwrap_or(100.0),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sizes in range; heads grouping evenly; a head divisible into the two axes' halves.
    pub fn validate(&self) -> Result<()> {
        let r = |k: &str, v: usize, lo: usize, hi: usize| Error::check_range(&format!("vision_config: {k}"), v, lo, hi);
        r("hidden_size", self.hidden_size, 1, 1 << 16)?;
        r("intermediate_size", self.intermediate_size, 1, 1 << 18)?;
        r("num_hidden_layers", self.num_hidden_layers, 1, 256)?;
        r("num_attention_heads", self.num_attention_heads, 1, 256)?;
        r("num_key_value_heads", self.num_key_value_heads, 1, self.num_attention_heads)?;
        r("head_dim", self.head_dim, 4, 1024)?;
        r("patch_size", self.patch_size, 1, 1024)?;
        r("pooling_kernel_size", self.pooling_kernel_size, 1, 64)?;
        r("position_embedding_size", self.position_embedding_size, 1, 1 << 20)?;
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::invalid("vision_config: num_key_value_heads does not divide num_attention_heads"));
        }
        if !self.head_dim.is_multiple_of(4) {
            return Err(Error::invalid(format!(
                "vision_config: head_dim {} must be a multiple of 4 (2D RoPE rotates two halves, each by halves)",
                self.head_dim
            )));
        }
        Error::check_positive("vision_config: rms_norm_eps", self.rms_norm_eps)?;
        Error::check_positive("vision_config: rope_theta", self.rope_theta)
    }
}

impl Gemma4Config {
    /// Reads a Gemma 4 `config.json` (either form; a `gemma4_text` file is a text-only model).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: not valid JSON: {e}", path.display())))?;
        Self::from_json(&v).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
    }

    /// From the parsed file.
    pub fn from_json(v: &Value) -> Result<Self> {
        let top = Section::new("config", v);
        if top.str_opt("model_type")? == Some("gemma4_text") {
            let none = usize::MAX;
            let text = Gemma4TextConfig::from_json(v)?;
            return Ok(Gemma4Config {
                text,
                vision: None,
                has_audio: false,
                image_token_id: none,
                boi_token_id: none,
                eoi_token_id: none,
                video_token_id: none,
                audio_token_id: none,
            });
        }
        let text = top.get("text_config").ok_or_else(|| Error::invalid("config: no text_config"))?;
        let cfg = Gemma4Config {
            text: Gemma4TextConfig::from_json(text)?,
            vision: top.get("vision_config").map(Gemma4VisionConfig::from_json).transpose()?,
            has_audio: top.get("audio_config").is_some(),
            image_token_id: top.usize_or("image_token_id", 258_880)?,
            boi_token_id: top.usize_or("boi_token_id", 255_999)?,
            eoi_token_id: top.usize_or("eoi_token_id", 258_882)?,
            video_token_id: top.usize_or("video_token_id", 258_884)?,
            audio_token_id: top.usize_or("audio_token_id", 258_881)?,
        };
        if cfg.vision.is_some() {
            // Placeholders are replaced by the pad token before the lookup, so the image token
            // may lie past the vocabulary; the ids must still differ.
            let ids = [cfg.image_token_id, cfg.boi_token_id, cfg.eoi_token_id];
            if ids[0] == ids[1] || ids[0] == ids[2] || ids[1] == ids[2] {
                return Err(Error::invalid(format!("config: image, boi and eoi token ids must differ, got {ids:?}")));
            }
        }
        Ok(cfg)
    }
}
