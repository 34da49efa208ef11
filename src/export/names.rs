//! lapidary's parameter names -> llama.cpp's GGUF tensor names for Gemma 3: the text model as
//! the GGUF reader maps it (`blk.N.attn_q.weight`, ...), the SigLIP tower and projector as the
//! converter's `mmproj` names them (`v.blk.N.attn_q.weight`, `v.patch_embd.weight`,
//! `mm.input_projection.weight`, ...). Which tensors llama.cpp stores as `1 + w` (Gemma's RMS
//! norms). Not the values.

/// The GGUF name of the parameter `name`, `None` for one llama.cpp has no place for.
pub fn gguf_name(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("language_model.model.") {
        return text_name(rest);
    }
    if let Some(rest) = name.strip_prefix("vision_tower.") {
        return vision_name(rest.strip_prefix("vision_model.").unwrap_or(rest));
    }
    match name {
        "multi_modal_projector.mm_input_projection_weight" => Some("mm.input_projection.weight".into()),
        "multi_modal_projector.mm_soft_emb_norm.weight" => Some("mm.soft_emb_norm.weight".into()),
        _ => None,
    }
}

/// Whether llama.cpp stores the parameter `name` as `1 + w` (every Gemma RMS norm, the
/// projector's included; SigLIP's layer norms are stored as they are).
pub fn is_norm_shifted(name: &str) -> bool {
    (name.starts_with("language_model.model.") && name.ends_with("norm.weight"))
        || name == "multi_modal_projector.mm_soft_emb_norm.weight"
}

fn text_name(rest: &str) -> Option<String> {
    match rest {
        "embed_tokens.weight" => return Some("token_embd.weight".into()),
        "norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = rest.strip_prefix("layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = module.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "post_attention_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
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
        let cases = [
            ("language_model.model.embed_tokens.weight", "token_embd.weight"),
            ("language_model.model.layers.11.self_attn.k_norm.weight", "blk.11.attn_k_norm.weight"),
            ("language_model.model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
            ("vision_tower.encoder.layers.3.self_attn.out_proj.bias", "v.blk.3.attn_out.bias"),
            ("vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight", "v.blk.3.ffn_up.weight"),
            ("vision_tower.embeddings.patch_embedding.weight", "v.patch_embd.weight"),
            ("multi_modal_projector.mm_input_projection_weight", "mm.input_projection.weight"),
        ];
        for (ours, theirs) in cases {
            assert_eq!(gguf_name(ours).as_deref(), Some(theirs), "{ours}");
        }
        assert_eq!(gguf_name("language_model.model.layers.0.self_attn.rotary.weight"), None);
        assert!(is_norm_shifted("language_model.model.layers.2.input_layernorm.weight"));
        assert!(is_norm_shifted("multi_modal_projector.mm_soft_emb_norm.weight"));
        assert!(!is_norm_shifted("vision_tower.post_layernorm.weight"));
        assert!(!is_norm_shifted("language_model.model.layers.2.self_attn.q_proj.weight"));
    }
}
