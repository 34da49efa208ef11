//! Gemma 3 configuration with HF field names, from `config.json` in either schema: the new one
//! (`rope_parameters` per layer type, `layer_types`) or the old one (`rope_theta`,
//! `rope_local_base_freq`, `rope_scaling`, `sliding_window_pattern`). Both resolve to the same
//! per-layer [`LayerKind`] and RoPE settings.

use lapidary_core::{Error, Result};
use lapidary_siglip::SiglipVisionConfig;
use serde_json::Value;
use std::path::Path;

/// Attention kind of one decoder layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerKind {
    /// Causal within `sliding_window`, local RoPE.
    Sliding,
    /// Causal over everything, global RoPE.
    Full,
}

/// RoPE settings of one layer kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Base (theta).
    pub theta: f64,
    /// Linear scaling factor (1 = none).
    pub linear_factor: f64,
}

/// The text decoder's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma3TextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Attention scale is `query_pre_attn_scalar ** -0.5`.
    pub query_pre_attn_scalar: f64,
    /// Window of sliding layers.
    pub sliding_window: usize,
    /// Kind of every layer.
    pub layer_types: Vec<LayerKind>,
    /// RoPE of sliding layers.
    pub rope_local: Rope,
    /// RoPE of full-attention layers.
    pub rope_global: Rope,
    /// Padding token id.
    pub pad_token_id: usize,
}

/// Gemma3ForConditionalGeneration's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma3Config {
    /// The decoder.
    pub text: Gemma3TextConfig,
    /// The vision tower; `None` for a text-only model (Gemma3ForCausalLM).
    pub vision: Option<SiglipVisionConfig>,
    /// Image tokens per image after the projector.
    pub mm_tokens_per_image: usize,
    /// Id of the image soft token.
    pub image_token_index: usize,
    /// Id of `<start_of_image>`.
    pub boi_token_index: usize,
    /// Id of `<end_of_image>`.
    pub eoi_token_index: usize,
}

impl Gemma3Config {
    /// A text-only model (no vision tower, no projector); image token ids are out of range.
    pub fn text_only(text: Gemma3TextConfig) -> Self {
        let none = text.vocab_size;
        Gemma3Config {
            text,
            vision: None,
            mm_tokens_per_image: 0,
            image_token_index: none,
            boi_token_index: none,
            eoi_token_index: none,
        }
    }
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value> {
    v.get(key).ok_or_else(|| Error::invalid(format!("text_config: missing field {key}")))
}

fn usize_of(v: &Value, key: &str) -> Result<usize> {
    field(v, key)?
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| Error::invalid(format!("text_config: {key} must be an integer")))
}

fn f64_or(v: &Value, key: &str, default: f64) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(default)
}

fn rope_of(v: Option<&Value>, default_theta: f64) -> Result<Rope> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Rope { theta: default_theta, linear_factor: 1.0 }) };
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    let linear_factor = match kind {
        "default" => 1.0,
        "linear" => f64_or(v, "factor", 1.0),
        other => return Err(Error::invalid(format!("rope_type {other} is not supported (default and linear are)"))),
    };
    Ok(Rope { theta: f64_or(v, "rope_theta", default_theta), linear_factor })
}

impl Gemma3TextConfig {
    /// From a `text_config` object in either schema.
    pub fn from_json(v: &Value) -> Result<Self> {
        let layers = usize_of(v, "num_hidden_layers")?;
        let layer_types = match v.get("layer_types").filter(|x| !x.is_null()) {
            Some(lt) => lt
                .as_array()
                .ok_or_else(|| Error::invalid("text_config: layer_types must be a list"))?
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(LayerKind::Sliding),
                    Some("full_attention") => Ok(LayerKind::Full),
                    other => Err(Error::invalid(format!("text_config: unknown layer type {other:?}"))),
                })
                .collect::<Result<Vec<_>>>()?,
            None => {
                let pattern = v.get("sliding_window_pattern").and_then(Value::as_u64).unwrap_or(6) as usize;
                (0..layers)
                    .map(|i| if (i + 1) % pattern.max(1) == 0 { LayerKind::Full } else { LayerKind::Sliding })
                    .collect()
            }
        };
        if layer_types.len() != layers {
            return Err(Error::invalid(format!("text_config: {} layer_types for {layers} layers", layer_types.len())));
        }
        let (rope_local, rope_global) = match v.get("rope_parameters").filter(|x| x.get("full_attention").is_some()) {
            Some(rp) => {
                (rope_of(rp.get("sliding_attention"), 10_000.0)?, rope_of(rp.get("full_attention"), 1_000_000.0)?)
            }
            None => {
                let local = Rope { theta: f64_or(v, "rope_local_base_freq", 10_000.0), linear_factor: 1.0 };
                let mut global = rope_of(v.get("rope_scaling"), f64_or(v, "rope_theta", 1_000_000.0))?;
                global.theta = f64_or(v, "rope_theta", 1_000_000.0);
                (local, global)
            }
        };
        let act = v.get("hidden_activation").and_then(Value::as_str).unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            return Err(Error::invalid(format!(
                "text_config: hidden_activation {act} is not supported (gelu_pytorch_tanh is)"
            )));
        }
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(Error::invalid(format!("text_config: {key} is not supported")));
            }
        }
        let head_dim = usize_of(v, "head_dim")?;
        Ok(Gemma3TextConfig {
            vocab_size: usize_of(v, "vocab_size")?,
            hidden_size: usize_of(v, "hidden_size")?,
            intermediate_size: usize_of(v, "intermediate_size")?,
            num_attention_heads: usize_of(v, "num_attention_heads")?,
            num_key_value_heads: usize_of(v, "num_key_value_heads")?,
            head_dim,
            rms_norm_eps: f64_or(v, "rms_norm_eps", 1e-6),
            query_pre_attn_scalar: f64_or(v, "query_pre_attn_scalar", head_dim as f64),
            sliding_window: usize_of(v, "sliding_window")?,
            layer_types,
            rope_local,
            rope_global,
            pad_token_id: v.get("pad_token_id").and_then(Value::as_u64).unwrap_or(0) as usize,
        })
    }

    /// RoPE of a layer kind.
    pub fn rope(&self, kind: LayerKind) -> Rope {
        match kind {
            LayerKind::Sliding => self.rope_local,
            LayerKind::Full => self.rope_global,
        }
    }
}

impl Gemma3Config {
    /// Reads a Gemma 3 `config.json` (either schema).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: not valid JSON: {e}", path.display())))?;
        let ctx = |e: Error| Error::invalid(format!("{}: {e}", path.display()));
        let get = |k: &str, d: usize| v.get(k).and_then(Value::as_u64).map_or(d, |x| x as usize);
        if v.get("model_type").and_then(Value::as_str) == Some("gemma3_text") {
            // Gemma3ForCausalLM: the file is the text config itself.
            return Ok(Gemma3Config::text_only(Gemma3TextConfig::from_json(&v).map_err(ctx)?));
        }
        Ok(Gemma3Config {
            text: Gemma3TextConfig::from_json(
                v.get("text_config").ok_or_else(|| ctx(Error::invalid("no text_config")))?,
            )
            .map_err(ctx)?,
            vision: Some(
                SiglipVisionConfig::from_json(
                    v.get("vision_config").ok_or_else(|| ctx(Error::invalid("no vision_config")))?,
                )
                .map_err(ctx)?,
            ),
            mm_tokens_per_image: get("mm_tokens_per_image", 256),
            image_token_index: get("image_token_index", 262_144),
            boi_token_index: get("boi_token_index", 255_999),
            eoi_token_index: get("eoi_token_index", 256_000),
        })
    }
}
