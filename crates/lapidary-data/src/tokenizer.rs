//! The text tokenizer: a `tokenizer.json` (HF `tokenizers` format) and the ids of a chat
//! format's special tokens (Gemma 3's or Gemma 4's). Not the chat template (see `template.rs`)
//! nor image expansion.

use crate::template::ChatFormat;
use lapidary_io::{Error, Result};
use std::path::Path;

/// A tokenizer with its chat format's special tokens resolved to ids.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// `<pad>`.
    pub pad_id: u32,
    /// `<bos>`.
    pub bos_id: u32,
    /// `<eos>`.
    pub eos_id: u32,
    /// Starts a turn (`<start_of_turn>`, Gemma 4's `<|turn>`).
    pub start_of_turn_id: u32,
    /// Ends a turn (`<end_of_turn>`, Gemma 4's `<turn|>`).
    pub end_of_turn_id: u32,
    /// Starts an image (`<start_of_image>`, Gemma 4's `<|image>`).
    pub boi_id: u32,
    /// Ends an image (`<end_of_image>`, Gemma 4's `<image|>`).
    pub eoi_id: u32,
    /// The placeholder each image feature replaces (`<image_soft_token>`, Gemma 4's `<|image|>`).
    pub image_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextTokenizer(vocab {})", self.vocab_size())
    }
}

/// A tokenized text: ids and, for each id, the byte span of the text it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `[start, end)` byte offsets into the text, one per id.
    pub offsets: Vec<(usize, usize)>,
}

impl TextTokenizer {
    /// Reads `tokenizer.json`; every Gemma 3 special token must be in its vocabulary.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_as(path, ChatFormat::Gemma3)
    }

    /// Reads `tokenizer.json`; every special token of `format` must be in its vocabulary.
    pub fn from_file_as(path: &Path, format: ChatFormat) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::invalid(format!("{}: not a readable tokenizer.json: {e}", path.display())))?;
        Self::from_tokenizer_as(inner, &path.display().to_string(), format)
    }

    /// [`Self::from_tokenizer_as`] with Gemma 3's special tokens.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer, origin: &str) -> Result<Self> {
        Self::from_tokenizer_as(inner, origin, ChatFormat::Gemma3)
    }

    /// Wraps a `tokenizers::Tokenizer` with `format`'s special tokens; `origin` names it in
    /// errors. The image tokens may be missing (a text-only model's vocabulary): their ids are
    /// then `u32::MAX`, matching nothing.
    pub fn from_tokenizer_as(inner: tokenizers::Tokenizer, origin: &str, format: ChatFormat) -> Result<Self> {
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                Error::invalid(format!(
                    "{origin}: the tokenizer has no {token} token (needed by {format:?}'s chat format)"
                ))
            })
        };
        let image_token = |token: &str| inner.token_to_id(token).unwrap_or(u32::MAX);
        let t = format.tokens();
        Ok(TextTokenizer {
            pad_id: id("<pad>")?,
            bos_id: id("<bos>")?,
            eos_id: id("<eos>")?,
            start_of_turn_id: id(t.start_of_turn)?,
            end_of_turn_id: id(t.end_of_turn)?,
            boi_id: image_token(t.boi),
            eoi_id: image_token(t.eoi),
            image_id: image_token(t.image),
            inner,
        })
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenizes `text`; with `add_special_tokens` the tokenizer's post-processor adds what it
    /// adds by default (BOS for Gemma), as transformers does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoded> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| Error::invalid(format!("tokenizer: {e}")))?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
    }

    /// Text of `ids`; special tokens are skipped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::invalid(format!("tokenizer: {e}")))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The `tokenizers` tokenizer underneath.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
