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

/// A number field, `default` when absent or null; an error when it is there but not a number.
fn f64_or(v: &Value, key: &str, default: f64) -> Result<f64> {
    match v.get(key).filter(|x| !x.is_null()) {
        None => Ok(default),
        Some(x) => x.as_f64().ok_or_else(|| Error::invalid(format!("{key} must be a number, got {x}"))),
    }
}

/// An integer field, `default` when absent or null; an error when it is there but not one.
fn usize_or(v: &Value, key: &str, default: usize) -> Result<usize> {
    match v.get(key).filter(|x| !x.is_null()) {
        None => Ok(default),
        Some(x) => x
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| Error::invalid(format!("{key} must be a non-negative integer, got {x}"))),
    }
}

fn rope_of(v: Option<&Value>, default_theta: f64) -> Result<Rope> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Rope { theta: default_theta, linear_factor: 1.0 }) };
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    let linear_factor = match kind {
        "default" => 1.0,
        "linear" => f64_or(v, "factor", 1.0)?,
        other => return Err(Error::invalid(format!("rope_type {other} is not supported (default and linear are)"))),
    };
    Ok(Rope { theta: f64_or(v, "rope_theta", default_theta)?, linear_factor })
}

impl Gemma3TextConfig {
    /// From a `text_config` object in either schema.
    pub fn from_json(v: &Value) -> Result<Self> {
        let layers = usize_of(v, "num_hidden_layers")?;
        Error::check_range("text_config: num_hidden_layers", layers, 1, 512)?;
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
                let pattern = usize_or(v, "sliding_window_pattern", 6)?;
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
                let local = Rope { theta: f64_or(v, "rope_local_base_freq", 10_000.0)?, linear_factor: 1.0 };
                let theta = f64_or(v, "rope_theta", 1_000_000.0)?;
                let mut global = rope_of(v.get("rope_scaling"), theta)?;
                global.theta = theta;
                (local, global)
            }
        };
        let act = v.get("hidden_activation").and_then(Value::as_str).unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            let what = format!("text_config: hidden_activation {act} is not supported (gelu_pytorch_tanh is)");
            return Err(Error::invalid(what));
        }
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(Error::invalid(format!("text_config: {key} is not supported")));
            }
        }
        let head_dim = usize_of(v, "head_dim")?;
        let cfg = Gemma3TextConfig {
            vocab_size: usize_of(v, "vocab_size")?,
            hidden_size: usize_of(v, "hidden_size")?,
            intermediate_size: usize_of(v, "intermediate_size")?,
            num_attention_heads: usize_of(v, "num_attention_heads")?,
            num_key_value_heads: usize_of(v, "num_key_value_heads")?,
            head_dim,
            rms_norm_eps: f64_or(v, "rms_norm_eps", 1e-6)?,
            query_pre_attn_scalar: f64_or(v, "query_pre_attn_scalar", head_dim as f64)?,
            sliding_window: usize_of(v, "sliding_window")?,
            layer_types,
            rope_local,
            rope_global,
            pad_token_id: usize_or(v, "pad_token_id", 0)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every size within what a Gemma 3 model can have, and every scale finite and positive:
    /// a value outside would allocate without bound or compute NaN, so it is refused here.
    pub fn validate(&self) -> Result<()> {
        let r = |k: &str, v: usize, lo: usize, hi: usize| Error::check_range(&format!("text_config: {k}"), v, lo, hi);
        r("vocab_size", self.vocab_size, 1, 1 << 24)?;
        r("hidden_size", self.hidden_size, 1, 1 << 16)?;
        r("intermediate_size", self.intermediate_size, 1, 1 << 18)?;
        r("num_attention_heads", self.num_attention_heads, 1, 256)?;
        r("num_key_value_heads", self.num_key_value_heads, 1, self.num_attention_heads)?;
        let (heads, kv_heads, head_dim) = (self.num_attention_heads, self.num_key_value_heads, self.head_dim);
        let refused = |what: String| Err(Error::invalid(format!("text_config: {what}")));
        if !heads.is_multiple_of(kv_heads) {
            return refused(format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"));
        }
        r("head_dim", head_dim, 2, 1024)?;
        if !head_dim.is_multiple_of(2) {
            return refused(format!("head_dim {head_dim} must be even (RoPE rotates halves)"));
        }
        r("sliding_window", self.sliding_window, 1, 1 << 24)?;
        r("pad_token_id", self.pad_token_id, 0, self.vocab_size - 1)?;
        Error::check_positive("text_config: rms_norm_eps", self.rms_norm_eps)?;
        Error::check_positive("text_config: query_pre_attn_scalar", self.query_pre_attn_scalar)?;
        for (name, rope) in [("sliding", self.rope_local), ("full", self.rope_global)] {
            let what = |k: &str| format!("text_config: rope {k} of {name} attention");
            Error::check_positive(&what("theta"), rope.theta)?;
            Error::check_positive(&what("scaling factor"), rope.linear_factor)?;
        }
        Ok(())
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
        let get = |k: &str, d: usize| usize_or(&v, k, d).map_err(ctx);
        if v.get("model_type").and_then(Value::as_str) == Some("gemma3_text") {
            // Gemma3ForCausalLM: the file is the text config itself.
            return Ok(Gemma3Config::text_only(Gemma3TextConfig::from_json(&v).map_err(ctx)?));
        }
        let section = |k: &str| v.get(k).ok_or_else(|| ctx(Error::invalid(format!("no {k}"))));
        let cfg = Gemma3Config {
            text: Gemma3TextConfig::from_json(section("text_config")?).map_err(ctx)?,
            vision: Some(SiglipVisionConfig::from_json(section("vision_config")?).map_err(ctx)?),
            mm_tokens_per_image: get("mm_tokens_per_image", 256)?,
            image_token_index: get("image_token_index", 262_144)?,
            boi_token_index: get("boi_token_index", 255_999)?,
            eoi_token_index: get("eoi_token_index", 256_000)?,
        };
        cfg.validate_multimodal().map_err(ctx)?;
        Ok(cfg)
    }

    /// The projector's pooling must tile the patch grid: `mm_tokens_per_image` a perfect square
    /// whose side divides the grid side (what HF's projector needs too).
    pub fn validate_multimodal(&self) -> Result<()> {
        let Some(vision) = &self.vision else { return Ok(()) };
        let grid = vision.grid();
        Error::check_range("mm_tokens_per_image", self.mm_tokens_per_image, 1, vision.num_patches())?;
        let side = (1..=grid).find(|s| s * s >= self.mm_tokens_per_image).unwrap_or(grid);
        if side * side != self.mm_tokens_per_image || !grid.is_multiple_of(side) {
            return Err(Error::invalid(format!(
                "mm_tokens_per_image {} must be a perfect square whose side divides the {grid}x{grid} patch grid",
                self.mm_tokens_per_image
            )));
        }
        for (k, id) in [
            ("image_token_index", self.image_token_index),
            ("boi_token_index", self.boi_token_index),
            ("eoi_token_index", self.eoi_token_index),
        ] {
            Error::check_range(k, id, 0, 1 << 24)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Config values that would allocate without bound or compute NaN are refused, naming the
    //! field; the bundled tiny model's config is accepted.
    use super::*;

    fn tiny() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-gemma3/model/config.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn error_with(edit: impl Fn(&mut Value)) -> String {
        let mut v = tiny();
        edit(&mut v);
        let dir = std::env::temp_dir().join(format!("lapidary-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "config-{:x}.json",
            v.to_string().len() * 7919 + v.to_string().bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&path, v.to_string()).unwrap();
        let got = Gemma3Config::from_file(&path);
        let _ = std::fs::remove_file(&path);
        match got {
            Ok(_) => panic!("accepted {v}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_tiny_config_is_accepted() {
        let v = tiny();
        let text = Gemma3TextConfig::from_json(&v["text_config"]).unwrap();
        assert!(text.vocab_size > 0 && !text.layer_types.is_empty());
    }

    #[test]
    fn nonsense_values_are_refused_naming_the_field() {
        let t = |key: &'static str, val: Value| move |v: &mut Value| v["text_config"][key] = val.clone();
        let cases: Vec<(Box<dyn Fn(&mut Value)>, &str)> = vec![
            (Box::new(t("rms_norm_eps", 0.0.into())), "rms_norm_eps"),
            (Box::new(t("rms_norm_eps", (-1e-6).into())), "rms_norm_eps"),
            (Box::new(t("rms_norm_eps", "1e-6".into())), "rms_norm_eps must be a number"),
            (Box::new(t("query_pre_attn_scalar", 0.into())), "query_pre_attn_scalar"),
            (
                Box::new(|v: &mut Value| {
                    v["text_config"]["rope_parameters"]["full_attention"]["rope_theta"] = 0.into()
                }),
                "rope theta",
            ),
            (
                Box::new(|v: &mut Value| {
                    v["text_config"]["rope_parameters"]["full_attention"]["factor"] = (-8.0).into()
                }),
                "scaling factor",
            ),
            (Box::new(t("sliding_window", 0.into())), "sliding_window"),
            (Box::new(t("num_hidden_layers", 10_000_000.into())), "num_hidden_layers"),
            (Box::new(t("num_key_value_heads", 3.into())), "num_key_value_heads"),
            (Box::new(t("head_dim", 7.into())), "head_dim"),
            (Box::new(t("vocab_size", 0.into())), "vocab_size"),
            (Box::new(|v: &mut Value| v["mm_tokens_per_image"] = 3.into()), "mm_tokens_per_image"),
            (Box::new(|v: &mut Value| v["mm_tokens_per_image"] = 0.into()), "mm_tokens_per_image"),
            (Box::new(|v: &mut Value| v["mm_tokens_per_image"] = (1u64 << 40).into()), "mm_tokens_per_image"),
            (Box::new(|v: &mut Value| v["mm_tokens_per_image"] = "4".into()), "mm_tokens_per_image"),
            (Box::new(|v: &mut Value| v["vision_config"]["layer_norm_eps"] = 0.into()), "layer_norm_eps"),
            (Box::new(|v: &mut Value| v["vision_config"]["num_hidden_layers"] = 100_000.into()), "num_hidden_layers"),
            (Box::new(|v: &mut Value| v["vision_config"]["image_size"] = 1_000_000.into()), "image_size"),
        ];
        for (edit, want) in cases {
            let e = error_with(edit);
            assert!(e.contains(want) && e.contains("config-"), "expected {want:?} in: {e}");
        }
    }
}
