//! Gemma 3 from a GGUF file (llama.cpp's layout, text-only: Gemma3ForCausalLM): the text config
//! from `gemma3.*` metadata (other fields at transformers' Gemma3TextConfig defaults, as
//! transformers' GGUF loader does; query scale, RoPE scaling and sliding pattern as llama.cpp reads
//! them), GGUF tensor names mapped to HF names (`blk.N.attn_q.weight`
//! -> `language_model.model.layers.N.self_attn.q_proj.weight`, ...), norms stored as `1 + w`
//! taken back to `w`. Not the tokenizer.

use crate::config::{Gemma3Config, Gemma3TextConfig};
use lapidary_core::{Error, Result};
use lapidary_nn::gguf::{GgufFile, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The text config a GGUF file describes (architecture `gemma3` only).
pub fn text_config(f: &GgufFile) -> Result<Gemma3TextConfig> {
    Gemma3TextConfig::from_json(&hf_config(f)?).map_err(|e| Error::invalid(format!("{}: {e}", f.path().display())))
}

/// The HF `config.json` of the Gemma3ForCausalLM a GGUF file holds (what `lapidary merge` writes).
pub fn hf_config(f: &GgufFile) -> Result<serde_json::Value> {
    let err = |what: String| Error::invalid(format!("{}: {what}", f.path().display()));
    let arch = f.require("general.architecture")?.as_str().unwrap_or("");
    if arch != "gemma3" {
        return Err(err(format!("architecture {arch:?} is not supported (gemma3 is)")));
    }
    let num = |key: &str| -> Result<serde_json::Value> {
        let v = f.require(&format!("gemma3.{key}"))?;
        v.as_u64()
            .map(serde_json::Value::from)
            .or_else(|| v.as_f64().map(serde_json::Value::from))
            .ok_or_else(|| err(format!("gemma3.{key} is not a number")))
    };
    let embed = f.tensors.get("token_embd.weight").ok_or_else(|| err("no token_embd.weight".into()))?;
    let id =
        |key: &str, default: u64| f.get(&format!("tokenizer.ggml.{key}")).and_then(|v| v.as_u64()).unwrap_or(default);
    let layers = num("block_count")?.as_u64().unwrap_or(0);
    let key_length = num("attention.key_length")?;
    // The query scale as llama.cpp sets it: 1/sqrt(head_dim), but 1/sqrt(hidden / heads) for the
    // 62-layer (27B) model.
    let query_pre_attn_scalar = if layers == 62 {
        let h = num("embedding_length")?.as_f64().unwrap_or(0.0);
        let n = num("attention.head_count")?.as_f64().unwrap_or(1.0);
        serde_json::Value::from(h / n)
    } else {
        key_length.clone()
    };
    let mut cfg = serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": true,
        "max_position_embeddings": num("context_length")?,
        "bos_token_id": id("bos_token_id", 2),
        "eos_token_id": id("eos_token_id", 1),
        "vocab_size": embed.shape[0],
        "hidden_size": num("embedding_length")?,
        "intermediate_size": num("feed_forward_length")?,
        "num_hidden_layers": num("block_count")?,
        "num_attention_heads": num("attention.head_count")?,
        "num_key_value_heads": num("attention.head_count_kv")?,
        "head_dim": key_length,
        "rms_norm_eps": num("attention.layer_norm_rms_epsilon")?,
        "sliding_window": num("attention.sliding_window")?,
        "rope_theta": num("rope.freq_base")?,
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "rope_local_base_freq": f.get("gemma3.rope.freq_base_swa").and_then(|v| v.as_f64()).unwrap_or(10000.0),
        "sliding_window_pattern": 6,
        "pad_token_id": id("padding_token_id", 0),
    });
    let scaling = f.get("gemma3.rope.scaling.type").and_then(|v| v.as_str());
    if scaling == Some("linear") {
        cfg["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": num("rope.scaling.factor")?});
    } else if let Some(other) = scaling.filter(|s| *s != "none") {
        return Err(err(format!("gemma3.rope.scaling.type {other:?} is not supported (linear is)")));
    }
    // Per-layer sliding flags (llama.cpp's array form of the pattern), else one in six global.
    if let Some(flags) = f.get("gemma3.attention.sliding_window_pattern").and_then(|v| v.as_array()) {
        let types: Vec<&str> = flags
            .iter()
            .map(|b| if *b == Value::Bool(true) { "sliding_attention" } else { "full_attention" })
            .collect();
        if types.len() as u64 != layers {
            let n = types.len();
            return Err(err(format!("gemma3.attention.sliding_window_pattern has {n} flags for {layers} layers")));
        }
        cfg["layer_types"] = serde_json::json!(types);
    } else if let Some(n) = f.get("gemma3.attention.sliding_window_pattern").and_then(|v| v.as_u64()) {
        cfg["sliding_window_pattern"] = serde_json::json!(n);
    }
    Ok(cfg)
}

/// HF names of the text model's parameters -> GGUF tensor names, and the HF names stored as
/// `1 + w` (the norms).
pub fn tensor_names(cfg: &Gemma3TextConfig) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut map = BTreeMap::new();
    let mut norms = BTreeSet::new();
    let p = "language_model.model.";
    map.insert(format!("{p}embed_tokens.weight"), "token_embd.weight".to_string());
    map.insert(format!("{p}norm.weight"), "output_norm.weight".to_string());
    norms.insert(format!("{p}norm.weight"));
    for i in 0..cfg.layer_types.len() {
        let hf = |s: &str| format!("{p}layers.{i}.{s}.weight");
        let gg = |s: &str| format!("blk.{i}.{s}.weight");
        for (h, g, norm) in [
            ("input_layernorm", "attn_norm", true),
            ("post_attention_layernorm", "post_attention_norm", true),
            ("pre_feedforward_layernorm", "ffn_norm", true),
            ("post_feedforward_layernorm", "post_ffw_norm", true),
            ("self_attn.q_norm", "attn_q_norm", true),
            ("self_attn.k_norm", "attn_k_norm", true),
            ("self_attn.q_proj", "attn_q", false),
            ("self_attn.k_proj", "attn_k", false),
            ("self_attn.v_proj", "attn_v", false),
            ("self_attn.o_proj", "attn_output", false),
            ("mlp.gate_proj", "ffn_gate", false),
            ("mlp.up_proj", "ffn_up", false),
            ("mlp.down_proj", "ffn_down", false),
        ] {
            map.insert(hf(h), gg(g));
            if norm {
                norms.insert(hf(h));
            }
        }
    }
    (map, norms)
}

/// The configuration of the text-only model in a GGUF file.
pub fn config(f: &GgufFile) -> Result<Gemma3Config> {
    Ok(Gemma3Config::text_only(text_config(f)?))
}
