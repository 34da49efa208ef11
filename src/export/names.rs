//! lapidary's parameter names -> llama.cpp's GGUF tensor names for Gemma 3: the text model
//! through the table the GGUF reader loads with ([`crate::gemma3::gguf::tensor_names`], so
//! reading and writing cannot disagree), the SigLIP tower and projector as the converter's
//! `mmproj` names them (`v.blk.N.attn_q.weight`, `v.patch_embd.weight`,
//! `mm.input_projection.weight`, ...); and which tensors llama.cpp stores as `1 + w` (Gemma's RMS
//! norms, the projector's included; SigLIP's layer norms are stored as they are). Not the values.

use crate::gemma3::Gemma3TextConfig;
use std::collections::{BTreeMap, BTreeSet};

const PROJECTOR_NORM: &str = "multi_modal_projector.mm_soft_emb_norm.weight";

/// The GGUF names of one model's parameters.
pub struct GgufNames {
    text: BTreeMap<String, String>,
    shifted: BTreeSet<String>,
}

impl GgufNames {
    /// The names of a Gemma 3 model whose text model is `text`.
    pub fn new(text: &Gemma3TextConfig) -> Self {
        let (text, mut shifted) = crate::gemma3::gguf::tensor_names(text);
        shifted.insert(PROJECTOR_NORM.to_string());
        GgufNames { text, shifted }
    }

    /// The GGUF name of the parameter `name`, `None` for one llama.cpp has no place for.
    pub fn get(&self, name: &str) -> Option<String> {
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
    pub fn is_norm_shifted(&self, name: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_llama_cpp_has_them() {
        let cfg = crate::gemma3::Gemma3Config::from_file(crate::demo::bundled_model().join("config.json")).unwrap();
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
    }
}
