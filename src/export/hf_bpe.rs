//! The `tokenizer.*` metadata of an exported GGUF whose tokenizer is an HF byte-fallback BPE
//! `tokenizer.json` (Gemma 4), built as llama.cpp's converter builds it (`LlamaHfVocab` and
//! `SpecialVocab`): the pieces in id order, then the special tokens the tokenizer adds beyond its
//! vocabulary (a Gemma tokenizer's `<mask>` where the vocabulary lacks it); every score -1000;
//! types BYTE for `<0xNN>` pieces, CONTROL for the tokenizer's special tokens (those
//! `tokenizer_config.json` names, `*_token`, and its extra special tokens) but USER_DEFINED for
//! the ones llama.cpp must render, NORMAL otherwise; the merges (spaces inside a merge's parts
//! written as `Ġ`); bos/eos/unk/sep/pad/cls/mask ids; BOS added; the chat template. Not
//! tokenization, not SentencePiece models (`tokenizer.rs`).

use crate::core::{Error, Result};
use crate::data::processor::read_json;
use crate::nn::gguf::write::Meta;
use std::collections::BTreeSet;
use std::path::Path;

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The special tokens a Gemma tokenizer class has by default (`bos`, `eos`, `unk`, `pad`, `mask`).
const GEMMA_DEFAULTS: [(&str, &str); 5] = [
    ("bos_token", "<bos>"),
    ("eos_token", "<eos>"),
    ("unk_token", "<unk>"),
    ("pad_token", "<pad>"),
    ("mask_token", "<mask>"),
];

/// The special-token kinds llama.cpp records ids of, with their GGUF key.
const ID_KEYS: [(&str, &str); 7] = [
    ("bos_token", "bos_token_id"),
    ("eos_token", "eos_token_id"),
    ("unk_token", "unknown_token_id"),
    ("sep_token", "seperator_token_id"),
    ("pad_token", "padding_token_id"),
    ("cls_token", "cls_token_id"),
    ("mask_token", "mask_token_id"),
];

/// A token's text in `tokenizer_config.json` (a string, or an object with `content`).
fn token_text(v: &serde_json::Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))
}

/// Tokenizer metadata of the HF directory `dir`, written with `tokenizer.ggml.model` = `model`;
/// `visible` special tokens are USER_DEFINED.
pub fn from_hf_bpe(dir: &Path, model: &str, visible: &[&str]) -> Result<Vec<(String, Meta)>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(Error::invalid(format!("{}: no tokenizer.json (a BPE tokenizer is expected)", dir.display())));
    }
    let t = read_json(&path)?;
    let bad = |what: String| Error::invalid(format!("{}: {what}", path.display()));
    if t["model"]["type"].as_str() != Some("BPE") {
        return Err(bad(format!("model.type is {}, expected \"BPE\"", t["model"]["type"])));
    }
    let vocab = t["model"]["vocab"].as_object().ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab.len()];
    for (piece, id) in vocab {
        let slot = id.as_u64().and_then(|i| tokens.get_mut(i as usize)).ok_or_else(|| {
            bad(format!("the id {id} of {piece:?} is not an integer below the vocabulary's size {}", vocab.len()))
        })?;
        if slot.replace(piece.clone()).is_some() {
            return Err(bad(format!("id {id} appears twice")));
        }
    }
    let mut tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.ok_or_else(|| bad(format!("no piece has id {i}"))))
        .collect::<Result<_>>()?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() { read_json(&cfg_path)? } else { serde_json::json!({}) };
    // The tokenizer's special tokens: the ones its configuration names, its extra ones, and a
    // Gemma tokenizer's defaults for those not named.
    let mut named: Vec<(String, String)> = Vec::new();
    for (key, v) in cfg.as_object().into_iter().flatten() {
        if let (true, Some(text)) = (key.ends_with("_token"), token_text(v)) {
            named.push((key.clone(), text.to_string()));
        }
    }
    if cfg["tokenizer_class"].as_str().is_some_and(|c| c.starts_with("Gemma")) {
        for (key, text) in GEMMA_DEFAULTS {
            if !named.iter().any(|(k, _)| k == key) {
                named.push((key.to_string(), text.to_string()));
            }
        }
    }
    let mut specials: BTreeSet<String> = named.iter().map(|(_, t)| t.clone()).collect();
    for key in ["extra_special_tokens", "additional_special_tokens"] {
        match &cfg[key] {
            serde_json::Value::Array(a) => specials.extend(a.iter().filter_map(token_text).map(str::to_string)),
            serde_json::Value::Object(o) => specials.extend(o.values().filter_map(token_text).map(str::to_string)),
            _ => {}
        }
    }
    // Special tokens outside the vocabulary are added after it, in tokenizer.json's order (by id)
    // then the configuration's.
    let mut beyond: Vec<(u64, String)> = t["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["id"].as_u64()?, a["content"].as_str()?.to_string())))
        .filter(|(id, _)| *id as usize >= tokens.len())
        .collect();
    beyond.sort();
    for (id, text) in beyond {
        if id as usize != tokens.len() {
            return Err(bad(format!("added token {text:?} has id {id}, expected {}", tokens.len())));
        }
        tokens.push(text);
    }
    for s in &specials {
        if !tokens.contains(s) {
            tokens.push(s.clone());
        }
    }
    let types: Vec<i32> = tokens
        .iter()
        .map(|p| {
            if visible.contains(&p.as_str()) && specials.contains(p) {
                USER_DEFINED
            } else if specials.contains(p) {
                CONTROL
            } else if super::tokenizer::is_byte_piece(p) {
                BYTE
            } else {
                NORMAL
            }
        })
        .collect();
    let mut meta = vec![
        ("tokenizer.ggml.model".to_string(), Meta::str(model)),
        ("tokenizer.ggml.tokens".into(), Meta::strs(&tokens)),
        ("tokenizer.ggml.scores".into(), Meta::f32s(&vec![-1000.0; tokens.len()])),
        ("tokenizer.ggml.token_type".into(), Meta::i32s(&types)),
    ];
    let merges = merges(&t["model"]["merges"]).map_err(bad)?;
    if !merges.is_empty() {
        meta.push(("tokenizer.ggml.merges".into(), Meta::strs(&merges)));
    }
    for (kind, key) in ID_KEYS {
        let Some((_, text)) = named.iter().find(|(k, _)| k == kind) else { continue };
        if cfg.get(kind).is_none() {
            continue; // a class default, not the configuration's
        }
        if let Some(id) = tokens.iter().position(|p| p == text) {
            meta.push((format!("tokenizer.ggml.{key}"), Meta::U32(id as u32)));
        }
    }
    if let Some(add_eos) = cfg["add_eos_token"].as_bool() {
        meta.push(("tokenizer.ggml.add_eos_token".into(), Meta::Bool(add_eos)));
    }
    let jinja = dir.join("chat_template.jinja");
    let template = match cfg["chat_template"].as_str() {
        Some(t) => Some(t.to_string()),
        None if jinja.is_file() => Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?),
        None => None,
    };
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), Meta::Str(t)));
    }
    meta.push(("tokenizer.ggml.add_space_prefix".into(), Meta::Bool(false)));
    meta.push(("tokenizer.ggml.add_bos_token".into(), Meta::Bool(true)));
    Ok(meta)
}

/// The merges of `tokenizer.json`'s `model.merges`: strings as they are, pairs joined by a space
/// with the spaces inside them written as `Ġ`.
fn merges(m: &serde_json::Value) -> std::result::Result<Vec<String>, String> {
    let Some(list) = m.as_array() else { return Ok(Vec::new()) };
    list.iter()
        .map(|x| match x {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(pair) if pair.len() == 2 => {
                let part = |v: &serde_json::Value| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                match (part(&pair[0]), part(&pair[1])) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(format!("merge {x} is not a pair of strings")),
                }
            }
            _ => Err(format!("merge {x} is neither a string nor a pair")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_in_both_forms() {
        let m = serde_json::json!([["t", "h"], [" ", "t"], ["\n", "\n"]]);
        assert_eq!(merges(&m).unwrap(), vec!["t h", "\u{120} t", "\n \n"]);
        assert_eq!(merges(&serde_json::json!(["a b"])).unwrap(), vec!["a b"]);
        assert!(merges(&serde_json::json!([[1, 2]])).unwrap_err().contains("not a pair of strings"));
    }
}
