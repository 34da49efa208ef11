//! The `tokenizer.*` metadata of an exported Gemma 3 GGUF: SentencePiece-style pieces, scores and
//! token types (llama.cpp's `llama` tokenizer), special ids and the chat template, built as
//! llama.cpp's converter builds them. From an HF directory: `tokenizer.model` when present (the
//! SentencePiece protobuf, read here), otherwise `tokenizer.json` (pieces in id order, score
//! `-id` for normal pieces, 0 for byte pieces, -1000 for special ones); then padded to the
//! model's vocabulary with `[PADn]`, and `added_tokens.json` / `tokenizer_config.json`'s
//! `added_tokens_decoder` applied. From a GGUF: its own `tokenizer.*` keys, retyped. Not
//! tokenization.

use crate::core::{Error, Result};
use crate::data::processor::read_json;
use crate::nn::gguf::write::{Meta, MetaItem};
use crate::nn::gguf::{GgufFile, Value};
use std::path::Path;

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

#[derive(Debug)]
struct Vocab {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
}

/// Tokenizer metadata from an HF model directory whose text model has `vocab_size` rows.
pub fn from_hf_dir(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Meta)>> {
    let spm = dir.join("tokenizer.model");
    let tok_json_path = dir.join("tokenizer.json");
    let tok_json = if tok_json_path.is_file() { Some(read_json(&tok_json_path)?) } else { None };
    let mut v = if spm.is_file() {
        let bytes = std::fs::read(&spm).map_err(|e| Error::io(&spm, e))?;
        sentencepiece_pieces(&bytes).map_err(|e| Error::invalid(format!("{}: {e}", spm.display())))?
    } else {
        let t = tok_json
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("{}: neither tokenizer.model nor tokenizer.json", dir.display())))?;
        pieces_of_tokenizer_json(t).map_err(|e| Error::invalid(format!("{}: {e}", tok_json_path.display())))?
    };
    v.tokens.truncate(vocab_size);
    v.scores.truncate(vocab_size);
    v.types.truncate(vocab_size);
    for i in v.tokens.len()..vocab_size {
        v.tokens.push(format!("[PAD{i}]"));
        v.scores.push(-10000.0);
        v.types.push(UNUSED);
    }
    let added = dir.join("added_tokens.json");
    let added = if added.is_file() { read_json(&added)? } else { serde_json::Value::Null };
    for (token, id) in added.as_object().into_iter().flatten() {
        if let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < vocab_size) {
            v.tokens[id] = token.clone();
            v.scores[id] = -1000.0;
            v.types[id] = USER_DEFINED;
        }
    }
    let cfg_path = dir.join("tokenizer_config.json");
    let tok_cfg = if cfg_path.is_file() { read_json(&cfg_path)? } else { serde_json::json!({}) };
    if let Some(dec) = tok_cfg.get("added_tokens_decoder").and_then(|d| d.as_object()) {
        for (id, data) in dec {
            let Some(id) = id.parse::<usize>().ok().filter(|&i| i < vocab_size) else { continue };
            let Some(content) = data["content"].as_str() else { continue };
            if data["special"].as_bool() == Some(true) || looks_special(content) {
                v.types[id] = CONTROL;
                v.tokens[id] = content.to_string();
            } else {
                v.types[id] = USER_DEFINED;
                v.tokens[id] = content.replace('\u{2581}', " ");
            }
            v.scores[id] = -1000.0;
        }
    }
    let id_of = |key: &str, default: &str| -> Option<u32> {
        let name = match &tok_cfg[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).unwrap_or(default).to_string(),
            _ => default.to_string(),
        };
        v.tokens.iter().position(|t| *t == name).map(|i| i as u32)
    };
    let mut meta = vec![
        ("tokenizer.ggml.model".to_string(), Meta::str("llama")),
        ("tokenizer.ggml.pre".to_string(), Meta::str("default")),
    ];
    let ids = [("bos", "<bos>"), ("eos", "<eos>"), ("unknown", "<unk>"), ("padding", "<pad>")].map(|(k, d)| {
        let cfg_key = match k {
            "unknown" => "unk_token".to_string(),
            "padding" => "pad_token".to_string(),
            k => format!("{k}_token"),
        };
        (k, id_of(&cfg_key, d))
    });
    let add_bos = match tok_cfg.get("add_bos_token").and_then(|b| b.as_bool()) {
        Some(b) => b,
        None => tok_json.as_ref().is_some_and(|t| t["post_processor"].to_string().contains("<bos>")),
    };
    meta.push(("tokenizer.ggml.tokens".into(), Meta::strs(&v.tokens)));
    meta.push(("tokenizer.ggml.scores".into(), Meta::f32s(&v.scores)));
    meta.push(("tokenizer.ggml.token_type".into(), Meta::i32s(&v.types)));
    for (k, id) in ids {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{k}_token_id"), Meta::U32(id)));
        }
    }
    meta.push(("tokenizer.ggml.add_bos_token".into(), Meta::Bool(add_bos)));
    let jinja = dir.join("chat_template.jinja");
    let template = if jinja.is_file() {
        Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
    } else {
        tok_cfg.get("chat_template").and_then(|t| t.as_str()).map(str::to_string)
    };
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), Meta::Str(t)));
    }
    meta.push(("tokenizer.ggml.add_space_prefix".into(), Meta::Bool(false)));
    Ok(meta)
}

/// Tokens llama.cpp's converter treats as control tokens though not marked special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Pieces of a `tokenizer.json` (BPE with byte fallback, as Gemma's) in id order.
fn pieces_of_tokenizer_json(t: &serde_json::Value) -> std::result::Result<Vocab, String> {
    let vocab = t["model"]["vocab"].as_object().ok_or("model.vocab is not an object")?;
    let mut by_id: Vec<Option<&str>> = vec![None; vocab.len()];
    for (piece, id) in vocab {
        let id = id.as_u64().ok_or_else(|| format!("the id of {piece:?} is not an integer"))? as usize;
        let slot = by_id.get_mut(id).ok_or_else(|| format!("id {id} of {piece:?} leaves a gap in the vocabulary"))?;
        if slot.replace(piece).is_some() {
            return Err(format!("id {id} appears twice"));
        }
    }
    let special: std::collections::HashSet<&str> = t["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter().filter(|x| x["special"].as_bool() == Some(true)).filter_map(|x| x["content"].as_str()).collect()
        })
        .unwrap_or_default();
    let unk = t["model"]["unk_token"].as_str().unwrap_or("<unk>");
    let mut v = Vocab { tokens: vec![], scores: vec![], types: vec![] };
    for (i, piece) in by_id.into_iter().enumerate() {
        let piece = piece.ok_or_else(|| format!("no piece has id {i}"))?;
        let (ty, score) = if piece == unk {
            (UNKNOWN, -1000.0)
        } else if special.contains(piece) {
            (CONTROL, -1000.0)
        } else if is_byte_piece(piece) {
            (BYTE, 0.0)
        } else {
            (NORMAL, -(i as f32))
        };
        v.tokens.push(piece.to_string());
        v.scores.push(score);
        v.types.push(ty);
    }
    Ok(v)
}

pub(super) fn is_byte_piece(p: &str) -> bool {
    p.len() == 6 && p.starts_with("<0x") && p.ends_with('>') && p[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// Pieces, scores and types of a SentencePiece `ModelProto` (field 1: repeated pieces, each with
/// 1: piece, 2: score, 3: type). User-defined pieces count as normal, as in llama.cpp's
/// converter.
fn sentencepiece_pieces(bytes: &[u8]) -> std::result::Result<Vocab, String> {
    let mut v = Vocab { tokens: vec![], scores: vec![], types: vec![] };
    for (field, value) in proto_fields(bytes)? {
        let (1, Field::Bytes(piece_msg)) = (field, value) else { continue };
        let (mut piece, mut score, mut ty) = (None, 0f32, NORMAL as u64);
        for (f, x) in proto_fields(piece_msg)? {
            match (f, x) {
                (1, Field::Bytes(b)) => {
                    piece = Some(String::from_utf8(b.to_vec()).map_err(|_| "a piece is not UTF-8".to_string())?)
                }
                (2, Field::Fixed32(b)) => score = f32::from_le_bytes(b),
                (3, Field::Varint(t)) => ty = t,
                _ => {}
            }
        }
        let piece = piece.ok_or_else(|| format!("piece {} has no text", v.tokens.len()))?;
        v.types.push(match ty {
            2 => UNKNOWN,
            3 => CONTROL,
            5 => UNUSED,
            6 => BYTE,
            _ => NORMAL,
        });
        v.tokens.push(piece);
        v.scores.push(score);
    }
    if v.tokens.is_empty() {
        return Err("no pieces (not a SentencePiece model?)".into());
    }
    Ok(v)
}

enum Field<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Fixed64,
    Bytes(&'a [u8]),
}

/// The top-level fields of a protobuf message.
fn proto_fields(mut b: &[u8]) -> std::result::Result<Vec<(u64, Field<'_>)>, String> {
    fn varint(b: &mut &[u8]) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().ok_or("truncated protobuf")?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("protobuf varint longer than 10 bytes".into())
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 => {
                b = b.get(8..).ok_or("truncated protobuf")?;
                Field::Fixed64
            }
            2 => {
                let n = usize::try_from(varint(&mut b)?).map_err(|_| "protobuf length too large")?;
                let (head, rest) = (b.get(..n).ok_or("truncated protobuf")?, &b[n..]);
                b = rest;
                Field::Bytes(head)
            }
            5 => {
                let head: [u8; 4] = b.get(..4).ok_or("truncated protobuf")?.try_into().expect("4 bytes");
                b = &b[4..];
                Field::Fixed32(head)
            }
            w => return Err(format!("protobuf wire type {w} is not supported")),
        };
        if !matches!(field, Field::Fixed64) {
            out.push((key >> 3, field));
        }
    }
    Ok(out)
}

/// The `tokenizer.*` keys of a GGUF, with the types llama.cpp expects.
pub fn from_gguf(f: &GgufFile) -> Result<Vec<(String, Meta)>> {
    let bad = |k: &str| Error::invalid(format!("{}: {k} has an unexpected type", f.path().display()));
    let mut out = Vec::new();
    for (k, v) in &f.metadata {
        if !k.starts_with("tokenizer.") {
            continue;
        }
        let m = match (k.as_str(), v) {
            ("tokenizer.ggml.scores", Value::Array(a)) => Meta::Array(
                MetaItem::F32,
                a.iter()
                    .map(|x| x.as_f64().map(|x| Meta::F32(x as f32)).ok_or_else(|| bad(k)))
                    .collect::<Result<_>>()?,
            ),
            ("tokenizer.ggml.token_type", Value::Array(a)) => Meta::Array(
                MetaItem::I32,
                a.iter()
                    .map(|x| match x {
                        Value::I64(i) => Ok(Meta::I32(*i as i32)),
                        Value::U64(i) => Ok(Meta::I32(*i as i32)),
                        _ => Err(bad(k)),
                    })
                    .collect::<Result<_>>()?,
            ),
            (_, Value::Array(a)) => Meta::Array(
                MetaItem::Str,
                a.iter().map(|x| x.as_str().map(Meta::str).ok_or_else(|| bad(k))).collect::<Result<_>>()?,
            ),
            (_, Value::Str(s)) => Meta::Str(s.clone()),
            (_, Value::Bool(b)) => Meta::Bool(*b),
            (_, Value::U64(x)) => Meta::U32(u32::try_from(*x).map_err(|_| bad(k))?),
            (_, Value::I64(x)) => Meta::U32(u32::try_from(*x).map_err(|_| bad(k))?),
            (_, Value::F64(x)) => Meta::F32(*x as f32),
        };
        out.push((k.clone(), m));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn piece_msg(piece: &str, score: f32, ty: u64) -> Vec<u8> {
        let mut m = vec![0x0a];
        varint(piece.len() as u64, &mut m);
        m.extend(piece.as_bytes());
        m.push(0x15);
        m.extend(score.to_le_bytes());
        m.push(0x18);
        varint(ty, &mut m);
        m
    }

    #[test]
    fn sentencepiece_protobuf_pieces() {
        let mut model = Vec::new();
        for (p, s, t) in
            [("<pad>", 0.0, 3), ("<unk>", 0.0, 2), ("<0x41>", 0.0, 6), ("\u{2581}the", -3.5, 1), ("x", -4.0, 4)]
        {
            let m = piece_msg(p, s, t);
            model.push(0x0a);
            varint(m.len() as u64, &mut model);
            model.extend(m);
        }
        // A trainer spec (field 2) is skipped.
        model.extend([0x12, 0x02, 0x08, 0x01]);
        let v = sentencepiece_pieces(&model).unwrap();
        assert_eq!(v.tokens, ["<pad>", "<unk>", "<0x41>", "\u{2581}the", "x"]);
        assert_eq!(v.scores, [0.0, 0.0, 0.0, -3.5, -4.0]);
        assert_eq!(v.types, [CONTROL, UNKNOWN, BYTE, NORMAL, NORMAL]);
        assert!(sentencepiece_pieces(&model[..model.len() - 7]).is_err());
        assert!(sentencepiece_pieces(b"").is_err());
    }

    #[test]
    fn tokenizer_json_pieces_in_id_order() {
        let t = serde_json::json!({
            "model": {"vocab": {"<pad>": 0, "<unk>": 1, "<0x0A>": 2, "a": 3, "\u{2581}b": 4}, "unk_token": "<unk>"},
            "added_tokens": [{"content": "<pad>", "special": true}],
        });
        let v = pieces_of_tokenizer_json(&t).unwrap();
        assert_eq!(v.tokens, ["<pad>", "<unk>", "<0x0A>", "a", "\u{2581}b"]);
        assert_eq!(v.types, [CONTROL, UNKNOWN, BYTE, NORMAL, NORMAL]);
        assert_eq!(v.scores, [-1000.0, -1000.0, 0.0, -3.0, -4.0]);
        let gap = serde_json::json!({"model": {"vocab": {"a": 0, "b": 2}}, "added_tokens": []});
        assert!(pieces_of_tokenizer_json(&gap).unwrap_err().contains("gap"));
    }
}
