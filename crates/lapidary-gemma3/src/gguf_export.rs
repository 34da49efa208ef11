//! Gemma 3's GGUF layout for `export-gguf` ([`Gemma3Gguf`]), as llama.cpp's
//! `convert_hf_to_gguf.py` writes it: lapidary's parameter names -> GGUF tensor names (the text
//! model through the table the GGUF reader loads with, [`crate::gguf::tensor_names`], so reading
//! and writing cannot disagree; the SigLIP tower and projector as the converter's `mmproj` names
//! them: `v.blk.N.attn_q.weight`, `v.patch_embd.weight`, `mm.input_projection.weight`, ...), which
//! tensors llama.cpp stores as `1 + w` (Gemma's RMS norms, the projector's included; SigLIP's layer
//! norms are stored as they are), and the `gemma3.*` and `clip.*` metadata. Not the values nor the
//! writing (the command's).

use crate::config::{Gemma3Config, Gemma3TextConfig, LayerKind};
use lapidary_model::{GgufExport, GgufTensor, converter_storage_type};
use lapidary_nn::gguf::dequant::GgmlType;
use lapidary_nn::gguf::write::{Meta, MetaItem};
use std::collections::{BTreeMap, BTreeSet};

const PROJECTOR_NORM: &str = "multi_modal_projector.mm_soft_emb_norm.weight";

/// The GGUF names of one model's parameters.
struct GgufNames {
    text: BTreeMap<String, String>,
    shifted: BTreeSet<String>,
}

impl GgufNames {
    /// The names of a Gemma 3 model whose text model is `text`.
    fn new(text: &Gemma3TextConfig) -> Self {
        let (text, mut shifted) = crate::gguf::tensor_names(text);
        shifted.insert(PROJECTOR_NORM.to_string());
        GgufNames { text, shifted }
    }

    /// The GGUF name of the parameter `name`, `None` for one llama.cpp has no place for.
    fn get(&self, name: &str) -> Option<String> {
        if let Some(g) = self.text.get(name) {
            return Some(g.clone());
        }
        if let Some(rest) = name.strip_prefix("vision_tower.") {
            return vision_name(rest.strip_prefix("vision_model.").unwrap_or(rest));
        }
        match name {
            "multi_modal_projector.mm_input_projection_weight" => Some("mm.input_projection.weight".into()),
            PROJECTOR_NORM => Some("mm.soft_emb_norm.weight".into()),
            _ => None,
        }
    }

    /// Whether llama.cpp stores the parameter `name` as `1 + w`.
    fn is_norm_shifted(&self, name: &str) -> bool {
        self.shifted.contains(name)
    }
}

fn vision_name(rest: &str) -> Option<String> {
    let (module, suffix) = rest.rsplit_once('.')?;
    match module {
        "embeddings.patch_embedding" => return Some(format!("v.patch_embd.{suffix}")),
        "embeddings.position_embedding" => return Some(format!("v.position_embd.{suffix}")),
        "post_layernorm" => return Some(format!("v.post_ln.{suffix}")),
        _ => {}
    }
    let rest = module.strip_prefix("encoder.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.out_proj" => "attn_out",
        "layer_norm1" => "ln1",
        "layer_norm2" => "ln2",
        "mlp.fc1" => "ffn_up",
        "mlp.fc2" => "ffn_down",
        _ => return None,
    };
    Some(format!("v.blk.{layer}.{g}.{suffix}"))
}

/// The GGUF layout of one Gemma 3 model.
pub struct Gemma3Gguf {
    cfg: Gemma3Config,
    names: GgufNames,
}

impl Gemma3Gguf {
    /// The layout of a model configured by `cfg`.
    pub fn new(cfg: &Gemma3Config) -> Self {
        Gemma3Gguf { cfg: cfg.clone(), names: GgufNames::new(&cfg.text) }
    }
}

impl GgufExport for Gemma3Gguf {
    fn architecture(&self) -> &'static str {
        "gemma3"
    }

    fn tensor(&self, name: &str) -> Option<GgufTensor> {
        let gguf = self.names.get(name)?;
        let vision = gguf.starts_with("v.") || gguf.starts_with("mm.");
        Some(GgufTensor { plus_one: self.names.is_norm_shifted(name), ..GgufTensor::plain(gguf, vision) })
    }

    /// The converter's Gemma 3 exceptions: the projector's input projection in f16, the patch
    /// embedding in f32 (`Gemma3VisionModel.tensor_force_quant`).
    fn storage_type(&self, gguf: &str, shape: &[usize], matrix: GgmlType) -> GgmlType {
        if gguf == "mm.input_projection.weight" {
            return GgmlType::F16;
        }
        if gguf.starts_with("v.patch_embd.") {
            return GgmlType::F32;
        }
        converter_storage_type(gguf, shape, matrix)
    }

    fn text_metadata(&self, context_length: u64) -> Vec<(String, Meta)> {
        let t = &self.cfg.text;
        let u = |x: usize| Meta::U32(x as u32);
        let mut m: Vec<(&str, Meta)> = vec![
            ("block_count", u(t.layer_types.len())),
            ("context_length", Meta::U32(context_length as u32)),
            ("embedding_length", u(t.hidden_size)),
            ("feed_forward_length", u(t.intermediate_size)),
            ("attention.head_count", u(t.num_attention_heads)),
            ("attention.head_count_kv", u(t.num_key_value_heads)),
        ];
        if t.rope_global.linear_factor != 1.0 {
            m.push(("rope.scaling.type", Meta::str("linear")));
            m.push(("rope.scaling.factor", Meta::F32(t.rope_global.linear_factor as f32)));
        }
        m.extend([
            ("rope.freq_base", Meta::F32(t.rope_global.theta as f32)),
            ("rope.freq_base_swa", Meta::F32(t.rope_local.theta as f32)),
            ("attention.layer_norm_rms_epsilon", Meta::F32(t.rms_norm_eps as f32)),
            ("attention.key_length", u(t.head_dim)),
            ("attention.value_length", u(t.head_dim)),
            ("attention.sliding_window", u(t.sliding_window)),
        ]);
        // llama.cpp assumes one global layer in six (the 6th, 12th, ...); any other layout is
        // written out per layer (a key its Gemma 3 loader reads; the converter never needs it).
        let sliding: Vec<bool> = t.layer_types.iter().map(|k| *k == LayerKind::Sliding).collect();
        if sliding.iter().enumerate().any(|(i, &s)| s != ((i + 1) % 6 != 0)) {
            let flags = sliding.iter().map(|&s| Meta::Bool(s)).collect();
            m.push(("attention.sliding_window_pattern", Meta::Array(MetaItem::Bool, flags)));
        }
        m.into_iter().map(|(k, v)| (format!("gemma3.{k}"), v)).collect()
    }

    fn mmproj_metadata(&self, image_mean: [f32; 3], image_std: [f32; 3]) -> Option<Vec<(String, Meta)>> {
        let v = self.cfg.vision.as_ref()?;
        let u = |x: usize| Meta::U32(x as u32);
        let mut m: Vec<(&str, Meta)> = vec![
            ("clip.has_vision_encoder", Meta::Bool(true)),
            ("clip.vision.projection_dim", u(self.cfg.text.hidden_size)),
            ("clip.vision.image_size", u(v.image_size)),
            ("clip.vision.patch_size", u(v.patch_size)),
            ("clip.vision.embedding_length", u(v.hidden_size)),
            ("clip.vision.feed_forward_length", u(v.intermediate_size)),
            ("clip.vision.block_count", u(v.num_hidden_layers)),
            ("clip.vision.attention.head_count", u(v.num_attention_heads)),
            ("clip.vision.image_mean", Meta::f32s(&image_mean)),
            ("clip.vision.image_std", Meta::f32s(&image_std)),
            ("clip.projector_type", Meta::str("gemma3")),
            ("clip.vision.attention.layer_norm_epsilon", Meta::F32(v.layer_norm_eps as f32)),
            ("clip.use_gelu", Meta::Bool(true)),
        ];
        // Pooling of the patch grid to the image tokens: llama.cpp assumes 4 (896 px, 14 px
        // patches, 256 tokens) unless the file says otherwise.
        let per_side = (self.cfg.mm_tokens_per_image as f64).sqrt().round() as usize;
        let scale = (v.image_size / v.patch_size).checked_div(per_side).unwrap_or(0);
        if scale > 0 && scale != 4 {
            m.push(("clip.vision.projector.scale_factor", u(scale)));
        }
        Some(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_llama_cpp_has_them() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/tiny-vlm/config.json");
        let cfg = Gemma3Config::from_file(dir).unwrap();
        let names = GgufNames::new(&cfg.text);
        let cases = [
            ("language_model.model.embed_tokens.weight", "token_embd.weight"),
            ("language_model.model.layers.3.self_attn.k_norm.weight", "blk.3.attn_k_norm.weight"),
            ("language_model.model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
            ("vision_tower.encoder.layers.3.self_attn.out_proj.bias", "v.blk.3.attn_out.bias"),
            ("vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight", "v.blk.3.ffn_up.weight"),
            ("vision_tower.embeddings.patch_embedding.weight", "v.patch_embd.weight"),
            ("multi_modal_projector.mm_input_projection_weight", "mm.input_projection.weight"),
        ];
        for (ours, theirs) in cases {
            assert_eq!(names.get(ours).as_deref(), Some(theirs), "{ours}");
        }
        assert_eq!(names.get("language_model.model.layers.0.self_attn.rotary.weight"), None);
        assert!(names.is_norm_shifted("language_model.model.layers.2.input_layernorm.weight"));
        assert!(names.is_norm_shifted(PROJECTOR_NORM));
        assert!(!names.is_norm_shifted("vision_tower.post_layernorm.weight"));
        assert!(!names.is_norm_shifted("language_model.model.layers.2.self_attn.q_proj.weight"));
        let layout = Gemma3Gguf::new(&cfg);
        let norm = layout.tensor(PROJECTOR_NORM).unwrap();
        assert_eq!((norm.name.as_str(), norm.vision, norm.plus_one), ("mm.soft_emb_norm.weight", true, true));
        let meta = layout.text_metadata(4096);
        assert!(meta.iter().any(|(k, v)| k == "gemma3.context_length" && *v == Meta::U32(4096)), "{meta:?}");
        assert!(meta.iter().all(|(k, _)| k.starts_with("gemma3.")));
        assert!(layout.mmproj_metadata([0.5; 3], [0.5; 3]).unwrap().iter().any(|(k, _)| k == "clip.projector_type"));
    }
}
