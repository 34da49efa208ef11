//! The processor: a conversation (with image files) to token ids, labels, token_type_ids and
//! pixel values, as Gemma3Processor's `apply_chat_template` gives them, with HF's settings read
//! from a model directory. Not batching (see `collate.rs`) nor file reading of whole datasets.

use crate::collate::Collated;
use crate::image::{self, ImageConfig};
use crate::template::{self, Conversation};
use crate::tokenizer::TextTokenizer;
use lapidary_io::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Tokenizer, image settings and image token count of one model.
#[derive(Debug)]
pub struct Processor {
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// Image preprocessing.
    pub image: ImageConfig,
    /// Soft tokens per image (`mm_tokens_per_image`).
    pub image_tokens: usize,
    /// Pixels of images decoded while rows were encoded, so a training step does not decode
    /// them again (bounded: past [`PIXEL_CACHE_BYTES`] images are decoded when used).
    pixel_cache: PixelCache,
}

/// Bytes of preprocessed pixels a [`Processor`] keeps.
pub const PIXEL_CACHE_BYTES: usize = 1 << 30;

/// Preprocessed pixels by image path, up to a byte budget (first come, kept; no eviction).
#[derive(Debug, Default)]
struct PixelCache {
    entries: Mutex<(HashMap<PathBuf, Arc<Vec<f32>>>, usize)>,
}

impl PixelCache {
    fn get(&self, path: &Path) -> Option<Arc<Vec<f32>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).0.get(path).cloned()
    }

    fn offer(&self, path: &Path, pixels: &Arc<Vec<f32>>) {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = pixels.len() * 4;
        if guard.1 + bytes <= PIXEL_CACHE_BYTES && !guard.0.contains_key(path) {
            guard.1 += bytes;
            guard.0.insert(path.to_path_buf(), pixels.clone());
        }
    }
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

/// A JSON file, or an error naming it.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::invalid(format!("{}: invalid JSON: {e}", path.display())))
}

impl Processor {
    /// [`Self::from_model_dir`] for a directory; for a `.gguf` file (a text-only model), the
    /// tokenizer it carries and no image support.
    pub fn from_model(path: &Path) -> Result<Self> {
        if lapidary_io::gguf::is_gguf_path(path) {
            let f = lapidary_io::gguf::GgufFile::open(path)?;
            let tok = crate::gguf_tokenizer::from_gguf(&f)?;
            let tokenizer = TextTokenizer::from_tokenizer(tok, &path.display().to_string())?;
            return Ok(Processor {
                tokenizer,
                image: ImageConfig::gemma3(0),
                image_tokens: 0,
                pixel_cache: PixelCache::default(),
            });
        }
        Self::from_model_dir(path)
    }

    /// Reads `tokenizer.json`, `config.json` (`mm_tokens_per_image`, the vision `image_size`,
    /// the text `vocab_size` every token id must fall within)
    /// and, when present, `processor_config.json` or `preprocessor_config.json` (size,
    /// rescale factor, mean, std, image_seq_length, do_rescale, do_normalize; pan-and-scan, no
    /// resizing or another resampling filter are refused) from an HF model directory.
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
            let bad = |what: String| Error::invalid(format!("{}: {what}", path.display()));
            // Present fields must have their type: a string where a number belongs is an error,
            // never a silent default.
            let int = |x: &serde_json::Value, key: &str| -> Result<Option<usize>> {
                match x {
                    serde_json::Value::Null => Ok(None),
                    x => x
                        .as_u64()
                        .filter(|&n| (1..=1 << 16).contains(&n))
                        .map(|n| Some(n as usize))
                        .ok_or_else(|| bad(format!("{key} is {x}; expected an integer from 1 to 65536"))),
                }
            };
            let num = |x: &serde_json::Value, key: &str| -> Result<Option<f32>> {
                match x {
                    serde_json::Value::Null => Ok(None),
                    x => x
                        .as_f64()
                        .filter(|f| f.is_finite())
                        .map(|f| Some(f as f32))
                        .ok_or_else(|| bad(format!("{key} is {x}; expected a finite number"))),
                }
            };
            if let Some(h) = int(&ip["size"]["height"], "size.height")? {
                image.height = h;
            }
            if let Some(w) = int(&ip["size"]["width"], "size.width")? {
                image.width = w;
            }
            if let Some(f) = num(&ip["rescale_factor"], "rescale_factor")? {
                if f <= 0.0 {
                    return Err(bad(format!("rescale_factor is {f}; expected a number above 0")));
                }
                image.rescale_factor = f;
            }
            for (key, dst) in [("image_mean", &mut image.mean), ("image_std", &mut image.std)] {
                match &ip[key] {
                    serde_json::Value::Null => {}
                    serde_json::Value::Array(a) if a.len() == 3 => {
                        for (d, x) in dst.iter_mut().zip(a) {
                            *d = num(x, key)?.expect("not null");
                        }
                    }
                    other => return Err(bad(format!("{key} is {other}; expected 3 numbers"))),
                }
            }
            let flag = |key: &str| -> Result<Option<bool>> {
                match &ip[key] {
                    serde_json::Value::Null => Ok(None),
                    serde_json::Value::Bool(b) => Ok(Some(*b)),
                    x => Err(bad(format!("{key} is {x}; expected true, false or null"))),
                }
            };
            // What Gemma3ImageProcessor can be told to do that this one does not: refused, never
            // ignored (the model would see other pixels than HF's processor gives it).
            if flag("do_pan_and_scan")? == Some(true) {
                return Err(bad("do_pan_and_scan is true; pan-and-scan crops are not supported".into()));
            }
            if flag("do_resize")? == Some(false) {
                return Err(bad("do_resize is false; images are always resized to the vision tower's size".into()));
            }
            match &ip["resample"] {
                serde_json::Value::Null => {}
                x if x.as_u64() == Some(2) => {}
                x => {
                    return Err(bad(format!(
                        "resample is {x}; only 2 (PIL's bilinear filter, Gemma 3's) is supported"
                    )));
                }
            }
            if flag("do_rescale")? == Some(false) {
                image.rescale_factor = 1.0;
            }
            if flag("do_normalize")? == Some(false) {
                image.mean = [0.0; 3];
                image.std = [1.0; 3];
            }
            if let Some(i) = image.std.iter().position(|&s| s <= 0.0) {
                return Err(bad(format!("image_std[{i}] is {}; expected a number above 0", image.std[i])));
            }
            if let Some(n) = int(&v["image_seq_length"], "image_seq_length")? {
                image_tokens = n;
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
        check_vocabulary(&tokenizer, &config, &config_path)?;
        Ok(Processor { tokenizer, image, image_tokens, pixel_cache: PixelCache::default() })
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
            if ["http://", "https://"].iter().any(|scheme| p.to_ascii_lowercase().starts_with(scheme)) {
                return Err(format!("image {p}: remote images are not downloaded; save the file and give its path"));
            }
            let path = base_dir.join(p);
            if !path.is_file() {
                return Err(format!("image {} not found", path.display()));
            }
            // Decoded once here (an undecodable image stops the row); kept for the steps.
            let pixels = Arc::new(image::preprocess(&image::load_rgb(&path).map_err(|e| e.to_string())?, &self.image));
            self.pixel_cache.offer(&path, &pixels);
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

    /// A prompt for generation as one collated row: `conv` encoded with
    /// `<start_of_turn>model\n` appended, its images (paths relative to `base_dir`) loaded.
    pub fn prompt(&self, conv: &Conversation, base_dir: &Path) -> Result<Collated> {
        let (ids, files) = self.encode_prompt(conv, base_dir)?;
        let mut pixels = Vec::new();
        for f in &files {
            pixels.extend(self.pixels(f)?);
        }
        let shape = vec![3, self.image.height, self.image.width];
        Ok(Collated::prompt(&ids, self.tokenizer.image_id, pixels, files.len(), shape))
    }

    /// Pixel values `[3, H, W]` of one image file (decoded again unless kept from encoding).
    pub fn pixels(&self, path: &Path) -> Result<Vec<f32>> {
        if let Some(p) = self.pixel_cache.get(path) {
            return Ok(p.as_ref().clone());
        }
        Ok(image::preprocess(&image::load_rgb(path)?, &self.image))
    }
}

/// Every id the tokenizer can produce must be a row of the model's embedding (or the image soft
/// token, which the model replaces): a larger vocabulary would read past the embedding.
fn check_vocabulary(tokenizer: &TextTokenizer, config: &serde_json::Value, config_path: &Path) -> Result<()> {
    let text = if config.get("text_config").is_some() { &config["text_config"] } else { config };
    let Some(vocab) = text["vocab_size"].as_u64() else { return Ok(()) };
    let image_token = config["image_token_index"].as_u64();
    let ids = tokenizer.vocab_size() as u64;
    let beyond = (vocab..ids).find(|&id| Some(id) != image_token);
    if let Some(id) = beyond {
        return Err(Error::invalid(format!(
            "{}: the tokenizer has {ids} tokens but the model's vocab_size is {vocab} (token id {id} has no embedding row)",
            config_path.display()
        )));
    }
    Ok(())
}
