//! The processor: a conversation (with image files) to token ids, labels, token_type_ids and
//! pixel values, as Gemma3Processor's `apply_chat_template` gives them, with HF's settings read
//! from a model directory. Not batching (see `collate.rs`) nor file reading of whole datasets.

use crate::image::{self, ImageConfig};
use crate::template::{self, Conversation};
use crate::tokenizer::TextTokenizer;
use lapidary_core::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Tokenizer, image settings and image token count of one model.
#[derive(Debug)]
pub struct Processor {
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// Image preprocessing.
    pub image: ImageConfig,
    /// Soft tokens per image (`mm_tokens_per_image`).
    pub image_tokens: usize,
}

/// One encoded row.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Per token: its id where trained on, else -100 (not yet shifted: the model shifts).
    pub labels: Vec<i64>,
    /// 1 on image soft tokens.
    pub token_type_ids: Vec<u8>,
    /// The row's image files, in order.
    pub images: Vec<PathBuf>,
}

/// How rows are encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeOptions {
    /// Longest row in tokens; longer rows are cut at the end, unless that would cut an image
    /// block (then the row is an error).
    pub max_len: usize,
    /// Labels only on the assistant turns (through their `<end_of_turn>\n`); otherwise on every
    /// token but padding and image tokens.
    pub responses_only: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions { max_len: 1024, responses_only: true }
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::invalid(format!("{}: invalid JSON: {e}", path.display())))
}

impl Processor {
    /// [`Self::from_model_dir`] for a directory; for a `.gguf` file (a text-only model), the
    /// tokenizer it carries and no image support.
    pub fn from_model(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "gguf") {
            let f = lapidary_nn::gguf::GgufFile::open(path)?;
            let tok = crate::gguf_tokenizer::from_gguf(&f)?;
            let tokenizer = TextTokenizer::from_tokenizer(tok, &path.display().to_string())?;
            return Ok(Processor { tokenizer, image: ImageConfig::gemma3(0), image_tokens: 0 });
        }
        Self::from_model_dir(path)
    }

    /// Reads `tokenizer.json`, `config.json` (`mm_tokens_per_image`, the vision `image_size`)
    /// and, when present, `processor_config.json` or `preprocessor_config.json` (size,
    /// rescale factor, mean, std, image_seq_length) from an HF model directory.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let mm = config["mm_tokens_per_image"].as_u64().unwrap_or(256) as usize;
        let size = config["vision_config"]["image_size"].as_u64().unwrap_or(896) as usize;
        let mut image = ImageConfig::gemma3(size);
        let mut image_tokens = mm;
        for name in ["processor_config.json", "preprocessor_config.json"] {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let v = read_json(&path)?;
            let ip = if v.get("image_processor").is_some() { &v["image_processor"] } else { &v };
            if let Some(h) = ip["size"]["height"].as_u64() {
                image.height = h as usize;
            }
            if let Some(w) = ip["size"]["width"].as_u64() {
                image.width = w as usize;
            }
            if let Some(f) = ip["rescale_factor"].as_f64() {
                image.rescale_factor = f as f32;
            }
            for (key, dst) in [("image_mean", &mut image.mean), ("image_std", &mut image.std)] {
                if let Some(a) = ip[key].as_array() {
                    if a.len() != 3 {
                        return Err(Error::invalid(format!("{}: {key} must have 3 values", path.display())));
                    }
                    for (d, x) in dst.iter_mut().zip(a) {
                        *d = x.as_f64().unwrap_or(0.0) as f32;
                    }
                }
            }
            if let Some(n) = v["image_seq_length"].as_u64() {
                image_tokens = n as usize;
            }
            break;
        }
        if image_tokens != mm {
            return Err(Error::invalid(format!(
                "{}: image_seq_length {image_tokens} differs from config.json's mm_tokens_per_image {mm}",
                dir.display()
            )));
        }
        if image.height != size || image.width != size {
            return Err(Error::invalid(format!(
                "{}: the image processor's size {}x{} differs from the vision tower's image_size {size}",
                dir.display(),
                image.height,
                image.width
            )));
        }
        Ok(Processor { tokenizer, image, image_tokens })
    }

    /// Encodes one conversation; image paths are resolved against `base_dir` and checked to
    /// decode. The error (a plain message) says what is wrong with the row.
    pub fn encode(
        &self,
        conv: &Conversation,
        base_dir: &Path,
        opts: &EncodeOptions,
    ) -> std::result::Result<Example, String> {
        let rendered = template::render(conv, self.image_tokens, false)?;
        if self.image_tokens == 0 && !rendered.images.is_empty() {
            return Err("the model is text-only (no vision tower): rows with images are not supported".into());
        }
        let mut images = Vec::new();
        for p in &rendered.images {
            let path = base_dir.join(p);
            if !path.is_file() {
                return Err(format!("image {} not found", path.display()));
            }
            image::load_rgb(&path).map_err(|e| e.to_string())?;
            images.push(path);
        }
        let enc = self.tokenizer.encode(&rendered.text, false).map_err(|e| e.to_string())?;
        let t = &self.tokenizer;
        let mut labels: Vec<i64> = enc
            .ids
            .iter()
            .zip(&enc.offsets)
            .map(|(&id, &(a, b))| {
                let trained = if opts.responses_only {
                    rendered.response_spans.iter().any(|&(s, e)| s <= a && b <= e)
                } else {
                    ![t.image_id, t.boi_id, t.eoi_id, t.pad_id].contains(&id)
                };
                if trained { id as i64 } else { -100 }
            })
            .collect();
        let mut input_ids = enc.ids;
        let image_count = input_ids.iter().filter(|&&i| i == t.image_id).count();
        if image_count != images.len() * self.image_tokens {
            return Err(format!(
                "the text holds {image_count} <image_soft_token> tokens, expected {} for {} image(s): \
                 image tokens must come only from image parts",
                images.len() * self.image_tokens,
                images.len()
            ));
        }
        if input_ids.len() > opts.max_len {
            let cut = &input_ids[opts.max_len..];
            if cut.iter().any(|&i| i == t.image_id || i == t.boi_id || i == t.eoi_id) {
                return Err(format!(
                    "{} tokens, longer than max_len {}: truncating would cut an image block (raise max_len)",
                    input_ids.len(),
                    opts.max_len
                ));
            }
            input_ids.truncate(opts.max_len);
            labels.truncate(opts.max_len);
        }
        if labels.iter().skip(1).all(|&l| l == -100) {
            return Err("no token to train on (no assistant turn, or it was cut off by max_len)".into());
        }
        let token_type_ids = input_ids.iter().map(|&i| u8::from(i == t.image_id)).collect();
        Ok(Example { input_ids, labels, token_type_ids, images })
    }

    /// Encodes a prompt for generation (`<start_of_turn>model\n` appended): ids and image files.
    pub fn encode_prompt(&self, conv: &Conversation, base_dir: &Path) -> Result<(Vec<u32>, Vec<PathBuf>)> {
        let rendered = template::render(conv, self.image_tokens, true).map_err(Error::invalid)?;
        let ids = self.tokenizer.encode(&rendered.text, false)?.ids;
        Ok((ids, rendered.images.iter().map(|p| base_dir.join(p)).collect()))
    }

    /// Pixel values `[3, H, W]` of one image file.
    pub fn pixels(&self, path: &Path) -> Result<Vec<f32>> {
        Ok(image::preprocess(&image::load_rgb(path)?, &self.image))
    }
}
