//! The tokenizer a Gemma GGUF file carries (`tokenizer.ggml.*`: SentencePiece pieces, token types,
//! special ids), rebuilt as transformers does for Gemma: a byte-fallback BPE whose merges are
//! derived from the vocabulary in file order (the file lists none), pieces of spaces respelled
//! with U+2581, spaces normalized to U+2581, control tokens special, user-defined tokens whole,
//! BOS added by default when the file says so. Not other tokenizer families.

use lapidary_io::gguf::{GgufFile, Value};
use lapidary_io::{Error, Result};
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

const SPACE: char = '\u{2581}';
/// Longest vocabulary piece accepted, in bytes.
const MAX_PIECE_BYTES: usize = 4096;
/// Most work (sum of squared piece lengths) spent deriving merges.
const MAX_MERGE_WORK: u64 = 2_000_000_000;

/// Builds the tokenizer of a Gemma GGUF file.
pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer> {
    let bad = |what: String| Error::invalid(format!("{}: {what}", f.path().display()));
    let model = f.require("tokenizer.ggml.model")?.as_str().unwrap_or("");
    let arch = f.require("general.architecture")?.as_str().unwrap_or("");
    if model != "llama" || !arch.starts_with("gemma") {
        return Err(bad(format!(
            "tokenizer {model:?} of architecture {arch:?} is not supported (Gemma's SentencePiece is)"
        )));
    }
    let tokens: Vec<String> = f
        .require("tokenizer.ggml.tokens")?
        .as_array()
        .ok_or_else(|| bad("tokenizer.ggml.tokens is not an array".into()))?
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad("a token is not a string".into())))
        .collect::<Result<_>>()?;
    let types: Vec<u64> = match f.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    // Pieces made only of whitespace with a space in them are stored with real spaces.
    let tokens: Vec<String> = tokens
        .into_iter()
        .map(|t| if t.contains(' ') && t.trim().is_empty() { SPACE.to_string().repeat(t.chars().count()) } else { t })
        .collect();
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.clone(), i as u32).is_none() {
            order.push(t);
        }
    }
    // Deriving merges looks at every split of every piece: refuse vocabularies that would take
    // unbounded time (a real Gemma vocabulary costs ~2e7 here).
    if let Some((i, t)) = tokens.iter().enumerate().find(|(_, t)| t.len() > MAX_PIECE_BYTES) {
        return Err(bad(format!(
            "tokenizer.ggml.tokens[{i}] is {} bytes long; pieces of at most {MAX_PIECE_BYTES} bytes are accepted",
            t.len()
        )));
    }
    let cost: u64 = order.iter().map(|p| (p.len() as u64).pow(2)).sum();
    if cost > MAX_MERGE_WORK {
        return Err(bad(format!(
            "tokenizer.ggml.tokens: the pieces are too long in total to derive merges from ({cost} > {MAX_MERGE_WORK})"
        )));
    }
    let merges = derive_merges(&order, &vocab);
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab.iter().map(|(k, v)| (k.clone(), *v)).collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .unk_token("<unk>".into())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| bad(format!("cannot build the BPE model: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(Replace::new(" ", SPACE.to_string()).map_err(|e| bad(e.to_string()))?));
    tok.with_pre_tokenizer(Some(
        Split::new(SplitPattern::String(" ".into()), SplitDelimiterBehavior::MergedWithPrevious, false)
            .map_err(|e| bad(e.to_string()))?,
    ));
    tok.with_decoder(Some(DecoderSequence::new(vec![
        Replace::new(SPACE.to_string(), " ").map_err(|e| bad(e.to_string()))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| **ty == 3)
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tok.add_special_tokens(&control);
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| **ty == 4)
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    tok.add_tokens(&user);
    let add_bos = matches!(f.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)) | None);
    if add_bos {
        let bos_id = f.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64).unwrap_or(2) as usize;
        let bos = tokens.get(bos_id).ok_or_else(|| bad(format!("bos_token_id {bos_id} is not a token")))?;
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A $B")))
            .map_err(|e| bad(e.to_string()))?
            .special_tokens(vec![(bos.clone(), bos_id as u32)])
            .build()
            .map_err(|e| bad(e.to_string()))?;
        tok.with_post_processor(Some(post));
    }
    Ok(tok)
}

/// Merges implied by a vocabulary: every split of a piece into two pieces of the vocabulary,
/// pieces earlier in the file first, longer left then longer right parts first (transformers'
/// `generate_merges` with the file order as score).
fn derive_merges(order: &[&str], vocab: &HashMap<String, u32>) -> Vec<(String, String)> {
    let mut all: Vec<(i64, usize, usize, String, String)> = Vec::new();
    for piece in order {
        let score = -(vocab[*piece] as i64);
        let mut local: Vec<(u32, u32, String, String)> = Vec::new();
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&il), Some(&ir)) = (vocab.get(l), vocab.get(r)) {
                local.push((il, ir, l.to_string(), r.to_string()));
            }
        }
        local.sort_by_key(|m| (m.0, m.1));
        for (_, _, l, r) in local {
            all.push((score, l.chars().count(), r.chars().count(), l, r));
        }
    }
    // Python's stable sort with reverse=True: descending keys, equal keys keep their order.
    all.sort_by_key(|m| std::cmp::Reverse((m.0, m.1, m.2)));
    all.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}
