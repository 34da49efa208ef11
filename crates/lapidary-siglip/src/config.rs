//! `SiglipVisionConfig` with HF's field names and defaults, read from a `config.json` (the model's
//! own, or the `vision_config` of a Gemma 3 one). Not validation of weights against it (loading
//! does that).

use lapidary_core::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// The SigLIP vision tower's configuration (HF `SiglipVisionConfig` field names).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct SiglipVisionConfig {
    /// Width of the encoder.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Image channels.
    pub num_channels: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Activation (only `gelu_pytorch_tanh` is supported).
    pub hidden_act: String,
}

impl Default for SiglipVisionConfig {
    /// HF's defaults (SigLIP base, 224 px, patches of 16), used for fields a file leaves out.
    fn default() -> Self {
        SiglipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            layer_norm_eps: 1e-6,
            hidden_act: "gelu_pytorch_tanh".into(),
        }
    }
}

impl SiglipVisionConfig {
    /// Reads `config.json` (or a Gemma 3 `config.json`, whose `vision_config` is used).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: not valid JSON: {e}", path.display())))?;
        Self::from_json(json.get("vision_config").unwrap_or(&json))
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
    }

    /// From a JSON object with HF field names.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let cfg: Self = serde_json::from_value(v.clone()).map_err(|e| Error::invalid(format!("vision config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let r = |k: &str, v: usize, lo: usize, hi: usize| Error::check_range(&format!("vision config: {k}"), v, lo, hi);
        r("hidden_size", self.hidden_size, 1, 1 << 16)?;
        r("intermediate_size", self.intermediate_size, 1, 1 << 18)?;
        r("num_hidden_layers", self.num_hidden_layers, 1, 512)?;
        r("num_attention_heads", self.num_attention_heads, 1, 256)?;
        r("num_channels", self.num_channels, 1, 16)?;
        r("image_size", self.image_size, 1, 4096)?;
        r("patch_size", self.patch_size, 1, self.image_size)?;
        Error::check_positive("vision config: layer_norm_eps", self.layer_norm_eps)?;
        let (act, size, patch, width, heads) =
            (&self.hidden_act, self.image_size, self.patch_size, self.hidden_size, self.num_attention_heads);
        let refused = |what: String| Err(Error::invalid(format!("vision config: {what}")));
        if act != "gelu_pytorch_tanh" {
            return refused(format!("hidden_act {act} is not supported (gelu_pytorch_tanh is)"));
        }
        if !size.is_multiple_of(patch) {
            return refused(format!("image_size {size} is not a multiple of patch_size {patch}"));
        }
        if !width.is_multiple_of(heads) {
            return refused(format!("hidden_size {width} is not a multiple of num_attention_heads {heads}"));
        }
        Ok(())
    }

    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
