//! Gemma 4's GGUF layout for `export-gguf` ([`Gemma4Gguf`]), as llama.cpp's
//! `convert_hf_to_gguf.py` writes it (architecture `gemma4`, vision projector `gemma4v`):
//! lapidary's parameter names -> GGUF tensor names (`blk.N.attn_q.weight`, the E-series'
//! `per_layer_token_embd.weight` and `blk.N.inp_gate.weight`, the vision tower's
//! `v.blk.N.attn_q.weight`, the embedder's `mm.input_projection.weight`, ...), the patch
//! projection stored as a convolution kernel, the tensors that are no parameter (each layer's
//! scalar, the clipped linears' bounds, the vision standardization, and the full layers' RoPE
//! factors the converter generates), norms as they are (no `1 + w`), the storage types the
//! converter forces, the `gemma4.*` and `clip.*` metadata and the tokenizer's form. Not the values'
//! writing (the command's), not GGUF reading (Gemma 4 is opened from HF directories).

use crate::config::{Gemma4Config, LayerKind};
use lapidary_core::{Error, Result};
use lapidary_model::{ExtraTensor, GgufExport, GgufTensor, GgufTokenizer, converter_storage_type};
use lapidary_nn::gguf::dequant::GgmlType;
use lapidary_nn::gguf::write::{Meta, MetaItem};
use lapidary_nn::safetensors::SafetensorsFiles;
use std::path::Path;

/// Special tokens llama.cpp renders in Gemma 4's output (its chat parser reads them).
const VISIBLE: [&str; 7] =
    ["<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", "<|\"|>"];

/// The GGUF layout of one Gemma 4 model.
pub struct Gemma4Gguf {
    cfg: Gemma4Config,
    extras: Vec<ExtraTensor>,
}

/// The GGUF name of a text-model parameter below `model.language_model.`.
fn text_name(rest: &str) -> Option<String> {
    match rest {
        "embed_tokens.weight" => return Some("token_embd.weight".into()),
        "norm.weight" => return Some("output_norm.weight".into()),
        "embed_tokens_per_layer.weight" => return Some("per_layer_token_embd.weight".into()),
        "per_layer_model_projection.weight" => return Some("per_layer_model_proj.weight".into()),
        "per_layer_projection_norm.weight" => return Some("per_layer_proj_norm.weight".into()),
        _ => {}
    }
    let (layer, module) = rest.strip_prefix("layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let g = match module {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" => "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "per_layer_input_gate.weight" => "inp_gate.weight",
        "per_layer_projection.weight" => "proj.weight",
        "post_per_layer_input_norm.weight" => "post_norm.weight",
        "layer_scalar" => "layer_output_scale.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// The GGUF name of a vision-tower tensor below `model.vision_tower.` (parameters and buffers).
fn vision_name(rest: &str) -> Option<String> {
    match rest {
        "patch_embedder.input_proj.weight" => return Some("v.patch_embd.weight".into()),
        "patch_embedder.position_embedding_table" => return Some("v.position_embd.weight".into()),
        "std_bias" => return Some("v.std_bias".into()),
        "std_scale" => return Some("v.std_scale".into()),
        _ => {}
    }
    let (layer, module) = rest.strip_prefix("encoder.layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let norm = match module {
        "input_layernorm.weight" => Some("ln1"),
        "post_attention_layernorm.weight" => Some("attn_post_norm"),
        "pre_feedforward_layernorm.weight" => Some("ln2"),
        "post_feedforward_layernorm.weight" => Some("ffn_post_norm"),
        "self_attn.q_norm.weight" => Some("attn_q_norm"),
        "self_attn.k_norm.weight" => Some("attn_k_norm"),
        _ => None,
    };
    if let Some(n) = norm {
        return Some(format!("v.blk.{layer}.{n}.weight"));
    }
    // A clipped linear: its inner linear's weight, or one of its bounds.
    let (linear, tail) = module.rsplit_once('.')?;
    let linear = linear.strip_suffix(".linear").unwrap_or(linear);
    let g = match linear {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_out",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    match tail {
        "weight" | "input_min" | "input_max" | "output_min" | "output_max" => Some(format!("v.blk.{layer}.{g}.{tail}")),
        _ => None,
    }
}

/// The GGUF name and file of checkpoint key or lapidary name `name`.
fn gguf_name(name: &str) -> Option<GgufTensor> {
    if let Some(rest) = name.strip_prefix("model.vision_tower.") {
        return vision_name(rest).map(|g| GgufTensor::plain(g, true));
    }
    if name == "model.embed_vision.embedding_projection.weight" {
        return Some(GgufTensor::plain("mm.input_projection.weight", true));
    }
    let rest = name.strip_prefix("model.language_model.").or_else(|| name.strip_prefix("model."))?;
    text_name(rest).map(|g| GgufTensor::plain(g, false))
}

/// Whether checkpoint key `name` is a buffer (no parameter) llama.cpp stores.
fn is_buffer(name: &str) -> bool {
    ["layer_scalar", "input_min", "input_max", "output_min", "output_max", "std_bias", "std_scale"]
        .iter()
        .any(|b| name.ends_with(&format!(".{b}")))
}

impl Gemma4Gguf {
    /// The layout of the HF checkpoint at `path`, configured by `cfg`: its buffers are read from
    /// the checkpoint. A buffer llama.cpp has no place for (other than the audio tower's, which
    /// is not exported) is an error naming it.
    pub fn open(cfg: &Gemma4Config, path: &Path) -> Result<Self> {
        let files = SafetensorsFiles::open(path)?;
        let mut extras = Vec::new();
        for name in files.names().filter(|n| is_buffer(n)) {
            if name.contains("audio_tower.") || name.contains("embed_audio.") {
                continue;
            }
            let tensor = gguf_name(name).ok_or_else(|| {
                Error::invalid(format!("{}: buffer {name} has no place in llama.cpp's Gemma 4 layout", path.display()))
            })?;
            let (values, shape) = files.load_f32(name)?;
            let shape = if shape.is_empty() { vec![1] } else { shape };
            extras.push(ExtraTensor { tensor, shape, values });
        }
        extras.push(rope_freqs(cfg));
        Ok(Gemma4Gguf { cfg: cfg.clone(), extras })
    }

    /// The full layers' head width (the sliding layers' when there is no full layer).
    fn full_head_dim(&self) -> usize {
        let t = &self.cfg.text;
        (0..t.num_layers()).map(|i| t.layer(i)).find(|l| l.kind == LayerKind::Full).map_or(t.head_dim, |l| l.head_dim)
    }
}

/// `rope_freqs.weight`: the full layers' frequency factors, 1 for the rotated pairs and 1e30 for
/// the pairs proportional RoPE leaves unrotated (how llama.cpp's NeoX rotation skips them).
fn rope_freqs(cfg: &Gemma4Config) -> ExtraTensor {
    let t = &cfg.text;
    let full = (0..t.num_layers()).map(|i| t.layer(i)).find(|l| l.kind == LayerKind::Full);
    let (d, factor) = full.map_or((t.head_dim, 1.0), |l| (l.head_dim, l.rope.partial_rotary_factor));
    let rotated = (d as f64 * factor / 2.0) as usize;
    let values: Vec<f32> = (0..d / 2).map(|i| if i < rotated { 1.0 } else { 1e30 }).collect();
    ExtraTensor { tensor: GgufTensor::plain("rope_freqs.weight", false), shape: vec![d / 2], values }
}

impl GgufExport for Gemma4Gguf {
    fn architecture(&self) -> &'static str {
        "gemma4"
    }

    fn tensor(&self, name: &str) -> Option<GgufTensor> {
        let mut t = gguf_name(name)?;
        if t.name == "v.patch_embd.weight" {
            t.patches_as_conv = self.cfg.vision.as_ref().map(|v| v.patch_size);
        }
        Some(t)
    }

    fn extra_tensors(&self) -> Vec<ExtraTensor> {
        self.extras.clone()
    }

    fn text_metadata(&self, context_length: u64) -> Vec<(String, Meta)> {
        let t = &self.cfg.text;
        let n = t.num_layers();
        let layers: Vec<_> = (0..n).map(|i| t.layer(i)).collect();
        let u = |x: usize| Meta::U32(x as u32);
        let ints =
            |f: &dyn Fn(usize) -> usize| Meta::Array(MetaItem::I32, (0..n).map(|i| Meta::I32(f(i) as i32)).collect());
        let full_d = self.full_head_dim();
        let rope_sliding = t.rope_sliding;
        let mut m: Vec<(&str, Meta)> = vec![
            ("block_count", u(n)),
            ("context_length", Meta::U32(context_length as u32)),
            ("embedding_length", u(t.hidden_size)),
            (
                "feed_forward_length",
                if t.use_double_wide_mlp { ints(&|i| layers[i].intermediate_size) } else { u(t.intermediate_size) },
            ),
            ("attention.head_count", u(t.num_attention_heads)),
            (
                "attention.head_count_kv",
                if layers.iter().all(|l| l.num_key_value_heads == t.num_key_value_heads) {
                    u(t.num_key_value_heads)
                } else {
                    ints(&|i| layers[i].num_key_value_heads)
                },
            ),
            ("rope.freq_base", Meta::F32(t.rope_full.theta as f32)),
            ("rope.freq_base_swa", Meta::F32(rope_sliding.theta as f32)),
            ("attention.layer_norm_rms_epsilon", Meta::F32(t.rms_norm_eps as f32)),
            ("attention.key_length", u(full_d)),
            ("attention.value_length", u(full_d)),
            ("attention.sliding_window", u(t.sliding_window)),
            ("attention.shared_kv_layers", u(t.num_kv_shared_layers)),
            ("embedding_length_per_layer_input", u(t.hidden_size_per_layer_input)),
            (
                "attention.sliding_window_pattern",
                Meta::Array(
                    MetaItem::Bool,
                    t.layer_types.iter().map(|k| Meta::Bool(*k == LayerKind::Sliding)).collect(),
                ),
            ),
            ("attention.key_length_swa", u(t.head_dim)),
            ("attention.value_length_swa", u(t.head_dim)),
            ("rope.dimension_count", u(full_d)),
            ("rope.dimension_count_swa", u((t.head_dim as f64 * rope_sliding.partial_rotary_factor) as usize)),
        ];
        if let Some(cap) = t.final_logit_softcapping {
            m.push(("final_logit_softcapping", Meta::F32(cap as f32)));
        }
        m.into_iter().map(|(k, v)| (format!("gemma4.{k}"), v)).collect()
    }

    fn mmproj_metadata(&self, image_mean: [f32; 3], image_std: [f32; 3]) -> Option<Vec<(String, Meta)>> {
        let v = self.cfg.vision.as_ref()?;
        let u = |x: usize| Meta::U32(x as u32);
        let m: Vec<(&str, Meta)> = vec![
            ("clip.has_vision_encoder", Meta::Bool(true)),
            ("clip.vision.projection_dim", u(self.cfg.text.hidden_size)),
            // Unused by llama.cpp for Gemma 4 (images keep their aspect ratio); the converter
            // writes 224.
            ("clip.vision.image_size", u(224)),
            ("clip.vision.patch_size", u(v.patch_size)),
            ("clip.vision.embedding_length", u(v.hidden_size)),
            ("clip.vision.feed_forward_length", u(v.intermediate_size)),
            ("clip.vision.block_count", u(v.num_hidden_layers)),
            ("clip.vision.attention.head_count", u(v.num_attention_heads)),
            ("clip.vision.image_mean", Meta::f32s(&image_mean)),
            ("clip.vision.image_std", Meta::f32s(&image_std)),
            ("clip.vision.projector_type", Meta::str("gemma4v")),
            // The converter reads `layer_norm_eps`, which Gemma 4's vision config does not have.
            ("clip.vision.attention.layer_norm_epsilon", Meta::F32(1e-6)),
        ];
        Some(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn tokenizer(&self) -> GgufTokenizer {
        GgufTokenizer::HfBpe { model: "gemma4", visible: &VISIBLE }
    }

    /// The converter's Gemma 4 exceptions: the position table in f32, the patch kernel in f16
    /// only in an f16 file (else f32).
    fn storage_type(&self, gguf: &str, shape: &[usize], matrix: GgmlType) -> GgmlType {
        if gguf == "v.patch_embd.weight" {
            return if matrix == GgmlType::F16 { GgmlType::F16 } else { GgmlType::F32 };
        }
        converter_storage_type(gguf, shape, matrix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_llama_cpp_has_them() {
        let cases = [
            ("model.language_model.embed_tokens.weight", "token_embd.weight", false),
            ("model.language_model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight", false),
            ("model.language_model.layers.0.pre_feedforward_layernorm.weight", "blk.0.ffn_norm.weight", false),
            ("model.language_model.layers.2.per_layer_projection.weight", "blk.2.proj.weight", false),
            ("model.layers.1.layer_scalar", "blk.1.layer_output_scale.weight", false),
            ("model.vision_tower.encoder.layers.1.self_attn.o_proj.linear.weight", "v.blk.1.attn_out.weight", true),
            ("model.vision_tower.encoder.layers.0.mlp.up_proj.input_min", "v.blk.0.ffn_up.input_min", true),
            ("model.vision_tower.encoder.layers.0.pre_feedforward_layernorm.weight", "v.blk.0.ln2.weight", true),
            ("model.vision_tower.patch_embedder.position_embedding_table", "v.position_embd.weight", true),
            ("model.embed_vision.embedding_projection.weight", "mm.input_projection.weight", true),
        ];
        for (ours, theirs, vision) in cases {
            let t = gguf_name(ours).unwrap_or_else(|| panic!("{ours}"));
            assert_eq!((t.name.as_str(), t.vision), (theirs, vision), "{ours}");
        }
        assert!(gguf_name("model.language_model.layers.0.self_attn.rotary.weight").is_none());
        assert!(gguf_name("model.audio_tower.layers.0.weight").is_none());
    }
}
