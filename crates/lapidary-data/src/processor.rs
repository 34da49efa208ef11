//! The processor: a conversation (with image files) to token ids, labels, token_type_ids and
//! pixel values, as Gemma3Processor's or Gemma4Processor's `apply_chat_template` gives them,
//! with HF's settings read from a model directory. Not batching (see `collate.rs`) nor file
//! reading of whole datasets.

use crate::collate::Collated;
use crate::image::{self, ImageConfig};
use crate::image_source::ImageSource;
use crate::patches::PatchConfig;
use crate::template::{self, ChatFormat, Conversation};
use crate::tokenizer::TextTokenizer;
use lapidary_io::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Tokenizer, chat format and image preprocessing of one model.
#[derive(Debug)]
pub struct Processor {
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// How conversations are written.
    pub format: ChatFormat,
    /// How images become pixel values.
    pub images: ImageProcessing,
    /// Pixels of images decoded while rows were encoded, so a training step does not decode
    /// them again (bounded: past [`PIXEL_CACHE_BYTES`] images are decoded when used).
    pixel_cache: PixelCache,
}

/// How a model's images become pixel values.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageProcessing {
    /// A text-only model: rows with images are refused.
    None,
    /// Gemma 3: every image resized to one size, `tokens` soft tokens each.
    Fixed {
        /// Resize, rescale, normalize.
        config: ImageConfig,
        /// Soft tokens per image (`mm_tokens_per_image`).
        tokens: usize,
    },
    /// Gemma 4: aspect ratio kept, patches with positions, a soft-token count per image.
    Patches(PatchConfig),
}

impl ImageProcessing {
    /// The shape of one image's pixel values: `[3, H, W]` or `[patches, 3·p·p]` (empty for
    /// a text-only model).
    pub fn image_shape(&self) -> Vec<usize> {
        match self {
            ImageProcessing::None => Vec::new(),
            ImageProcessing::Fixed { config, .. } => vec![3, config.height, config.width],
            ImageProcessing::Patches(p) => vec![p.max_patches(), p.patch_len()],
        }
    }
}

/// One image preprocessed: what a batch holds of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePixels {
    /// Pixel values in [`ImageProcessing::image_shape`].
    pub values: Vec<f32>,
    /// `[patches, 2]` (x, y) patch positions, -1 on padding (Gemma 4); `None` for fixed-size
    /// images.
    pub positions: Option<Vec<i64>>,
    /// Soft tokens the image becomes.
    pub soft_tokens: usize,
}

/// Bytes of preprocessed pixels a [`Processor`] keeps.
pub const PIXEL_CACHE_BYTES: usize = 1 << 30;

/// Preprocessed pixels by image source, up to a byte budget (first come, kept; no eviction).
#[derive(Debug, Default)]
struct PixelCache {
    entries: Mutex<(HashMap<ImageSource, Arc<ImagePixels>>, usize)>,
}

impl PixelCache {
    fn get(&self, source: &ImageSource) -> Option<Arc<ImagePixels>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).0.get(source).cloned()
    }

    fn offer(&self, source: &ImageSource, pixels: &Arc<ImagePixels>) {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = pixels.values.len() * 4 + pixels.positions.as_ref().map_or(0, |p| p.len() * 8);
        if guard.1 + bytes <= PIXEL_CACHE_BYTES && !guard.0.contains_key(source) {
            guard.1 += bytes;
            guard.0.insert(source.clone(), pixels.clone());
        }
    }
}

/// A row's image as a dataset reader found it: where it is, its bytes when already read, and
/// how errors name it within the row.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// Where the image is (read again from there when its pixels are not kept).
    pub source: ImageSource,
    /// The encoded bytes, when the reader holds them (`None`: read from `source`).
    pub bytes: Option<Vec<u8>>,
    /// The image in an error about its row: a path, or a parquet column (`images[1]`).
    pub label: String,
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
    /// The row's images, in order.
    pub images: Vec<ImageSource>,
    /// The row's length in tokens before it was cut to `max_len` (`None`: not cut).
    pub cut_from: Option<usize>,
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

/// The image processor's settings in `processor_config.json` or `preprocessor_config.json`
/// (the first present): its fields, each read with its type checked (a string where a number
/// belongs is an error, never a silent default), errors naming the file.
struct ProcessorConfig {
    path: PathBuf,
    file: Value,
}

impl ProcessorConfig {
    fn find(dir: &Path) -> Result<Option<Self>> {
        for name in ["processor_config.json", "preprocessor_config.json"] {
            let path = dir.join(name);
            if path.exists() {
                return Ok(Some(ProcessorConfig { file: read_json(&path)?, path }));
            }
        }
        Ok(None)
    }

    fn bad(&self, what: String) -> Error {
        Error::invalid(format!("{}: {what}", self.path.display()))
    }

    /// The image processor's own settings (nested under `image_processor` or at the top).
    fn ip(&self, key: &str) -> &Value {
        let ip = if self.file.get("image_processor").is_some() { &self.file["image_processor"] } else { &self.file };
        &ip[key]
    }

    fn int_at(&self, x: &Value, key: &str) -> Result<Option<usize>> {
        match x {
            Value::Null => Ok(None),
            x => x
                .as_u64()
                .filter(|&n| (1..=1 << 16).contains(&n))
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.bad(format!("{key} is {x}; expected an integer from 1 to 65536"))),
        }
    }

    fn int(&self, key: &str) -> Result<Option<usize>> {
        self.int_at(self.ip(key), key)
    }

    fn num(&self, x: &Value, key: &str) -> Result<Option<f32>> {
        match x {
            Value::Null => Ok(None),
            x => x
                .as_f64()
                .filter(|f| f.is_finite())
                .map(|f| Some(f as f32))
                .ok_or_else(|| self.bad(format!("{key} is {x}; expected a finite number"))),
        }
    }

    fn flag(&self, key: &str) -> Result<Option<bool>> {
        match self.ip(key) {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            x => Err(self.bad(format!("{key} is {x}; expected true, false or null"))),
        }
    }

    /// `rescale_factor`, `image_mean`, `image_std`, `do_rescale`, `do_normalize` applied to
    /// the defaults given.
    fn pixel_scaling(&self, rescale: &mut f32, mean: &mut [f32; 3], std: &mut [f32; 3]) -> Result<()> {
        if let Some(f) = self.num(self.ip("rescale_factor"), "rescale_factor")? {
            if f <= 0.0 {
                return Err(self.bad(format!("rescale_factor is {f}; expected a number above 0")));
            }
            *rescale = f;
        }
        for (key, dst) in [("image_mean", &mut *mean), ("image_std", &mut *std)] {
            match self.ip(key) {
                Value::Null => {}
                Value::Array(a) if a.len() == 3 => {
                    for (d, x) in dst.iter_mut().zip(a) {
                        *d = self.num(x, key)?.expect("not null");
                    }
                }
                other => return Err(self.bad(format!("{key} is {other}; expected 3 numbers"))),
            }
        }
        if self.flag("do_rescale")? == Some(false) {
            *rescale = 1.0;
        }
        match self.flag("do_normalize")? {
            Some(false) => (*mean, *std) = ([0.0; 3], [1.0; 3]),
            // Gemma 4 normalizes only when told to; Gemma 3's default is set by the caller.
            Some(true) | None => {}
        }
        if let Some(i) = std.iter().position(|&s| s <= 0.0) {
            return Err(self.bad(format!("image_std[{i}] is {}; expected a number above 0", std[i])));
        }
        Ok(())
    }

    /// `resample` must be `want` (PIL's filter number) or absent.
    fn resample(&self, want: u64, name: &str) -> Result<()> {
        match self.ip("resample") {
            Value::Null => Ok(()),
            x if x.as_u64() == Some(want) => Ok(()),
            x => Err(self.bad(format!("resample is {x}; only {want} (PIL's {name} filter) is supported"))),
        }
    }
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
                format: ChatFormat::Gemma3,
                images: ImageProcessing::None,
                pixel_cache: PixelCache::default(),
            });
        }
        Self::from_model_dir(path)
    }

    /// Gemma 3's processor. Reads `tokenizer.json`, `config.json` (`mm_tokens_per_image`, the
    /// vision `image_size`, the text `vocab_size` every token id must fall within)
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
        if let Some(pc) = ProcessorConfig::find(dir)? {
            if let Some(h) = pc.int_at(&pc.ip("size")["height"], "size.height")? {
                image.height = h;
            }
            if let Some(w) = pc.int_at(&pc.ip("size")["width"], "size.width")? {
                image.width = w;
            }
            pc.pixel_scaling(&mut image.rescale_factor, &mut image.mean, &mut image.std)?;
            // What Gemma3ImageProcessor can be told to do that this one does not: refused, never
            // ignored (the model would see other pixels than HF's processor gives it).
            if pc.flag("do_pan_and_scan")? == Some(true) {
                return Err(pc.bad("do_pan_and_scan is true; pan-and-scan crops are not supported".into()));
            }
            if pc.flag("do_resize")? == Some(false) {
                return Err(pc.bad("do_resize is false; images are always resized to the vision tower's size".into()));
            }
            pc.resample(2, "bilinear")?;
            if let Some(n) = pc.int_at(&pc.file["image_seq_length"], "image_seq_length")? {
                image_tokens = n;
            }
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
        let images = ImageProcessing::Fixed { config: image, tokens: image_tokens };
        Ok(Processor { tokenizer, format: ChatFormat::Gemma3, images, pixel_cache: PixelCache::default() })
    }

    /// Gemma 4's processor (Gemma4Processor with Gemma4ImageProcessor). Reads `tokenizer.json`
    /// (Gemma 4's turn and image tokens), `config.json` (the vision tower's `patch_size` and
    /// `pooling_kernel_size`; no `vision_config`: a text-only model) and, when present,
    /// `processor_config.json` or `preprocessor_config.json` (patch_size, pooling_kernel_size,
    /// max_soft_tokens, rescale factor, do_rescale, do_normalize, mean, std; no resizing or a
    /// filter other than bicubic are refused, and so is a patch geometry other than the tower's).
    pub fn gemma4_from_model_dir(dir: &Path) -> Result<Self> {
        let tokenizer = TextTokenizer::from_file_as(&dir.join("tokenizer.json"), ChatFormat::Gemma4)?;
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        check_vocabulary(&tokenizer, &config, &config_path)?;
        let vision = &config["vision_config"];
        let images = if vision.is_object() {
            let tower = |key: &str, default: u64| vision[key].as_u64().unwrap_or(default) as usize;
            let (patch, pool) = (tower("patch_size", 16), tower("pooling_kernel_size", 3));
            let mut cfg = PatchConfig::gemma4(patch, pool, 280).expect("280 is a budget");
            if let Some(pc) = ProcessorConfig::find(dir)? {
                for (key, want) in [("patch_size", patch), ("pooling_kernel_size", pool)] {
                    if let Some(got) = pc.int(key)?.filter(|&got| got != want) {
                        return Err(pc.bad(format!(
                            "{key} is {got} but the vision tower's (config.json vision_config.{key}) is {want}"
                        )));
                    }
                }
                if let Some(budget) = pc.int("max_soft_tokens")? {
                    cfg = PatchConfig::gemma4(patch, pool, budget).map_err(|e| pc.bad(e))?;
                }
                if pc.flag("do_resize")? == Some(false) {
                    return Err(pc.bad("do_resize is false; images are always resized to the soft-token budget".into()));
                }
                pc.resample(3, "bicubic")?;
                // Gemma 4 feeds [0, 1] pixels unless told to normalize (by mean 0, std 1 unless
                // given).
                let (mut mean, mut std) = ([0.0; 3], [1.0; 3]);
                pc.pixel_scaling(&mut cfg.rescale_factor, &mut mean, &mut std)?;
                if pc.flag("do_normalize")? == Some(true) {
                    (cfg.mean, cfg.std) = (mean, std);
                }
            }
            ImageProcessing::Patches(cfg)
        } else {
            ImageProcessing::None
        };
        Ok(Processor { tokenizer, format: ChatFormat::Gemma4, images, pixel_cache: PixelCache::default() })
    }

    /// The shape of one image's pixel values (see [`ImageProcessing::image_shape`]).
    pub fn image_shape(&self) -> Vec<usize> {
        self.images.image_shape()
    }

    /// Encodes one conversation; image paths are resolved against `base_dir` and checked to
    /// decode. The error (a plain message) says what is wrong with the row.
    pub fn encode(
        &self,
        conv: &Conversation,
        base_dir: &Path,
        opts: &EncodeOptions,
    ) -> std::result::Result<Example, String> {
        self.encode_with(conv, opts, &mut |p| resolve_file(base_dir, p))
    }

    /// Encodes one conversation whose images `resolve` finds: called with each image part's
    /// path (empty for a `{"type": "image"}` placeholder), in order. Each image is decoded here
    /// (an undecodable one stops the row) and its pixels kept for the steps while the budget
    /// lasts. The error (a plain message) says what is wrong with the row.
    pub fn encode_with(
        &self,
        conv: &Conversation,
        opts: &EncodeOptions,
        resolve: &mut dyn FnMut(&str) -> std::result::Result<ResolvedImage, String>,
    ) -> std::result::Result<Example, String> {
        let mut images = Vec::new();
        let mut soft_tokens = 0;
        let mut load = |p: &str| -> std::result::Result<usize, String> {
            if self.images == ImageProcessing::None {
                return Err("the model is text-only (no vision tower): rows with images are not supported".into());
            }
            let found = resolve(p)?;
            let bytes = match found.bytes {
                Some(b) => b,
                None => found.source.bytes().map_err(|e| e.to_string())?,
            };
            let pixels = Arc::new(self.preprocess(&bytes).map_err(|e| format!("{}: {e}", found.label))?);
            self.pixel_cache.offer(&found.source, &pixels);
            images.push(found.source);
            soft_tokens += pixels.soft_tokens;
            Ok(pixels.soft_tokens)
        };
        let rendered = template::render_as(self.format, conv, &mut load, false)?;
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
        if image_count != soft_tokens {
            return Err(format!(
                "the text holds {image_count} {} tokens, expected {soft_tokens} for {} image(s): \
                 image tokens must come only from image parts",
                self.format.tokens().image,
                images.len()
            ));
        }
        let cut_from = (input_ids.len() > opts.max_len).then_some(input_ids.len());
        if cut_from.is_some() {
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
        Ok(Example { input_ids, labels, token_type_ids, images, cut_from })
    }

    /// Encodes a prompt for generation (the format's generation prompt appended): ids and
    /// image files.
    pub fn encode_prompt(&self, conv: &Conversation, base_dir: &Path) -> Result<(Vec<u32>, Vec<PathBuf>)> {
        let mut count = |p: &str| -> std::result::Result<usize, String> {
            match &self.images {
                ImageProcessing::None => {
                    Err("the model is text-only (no vision tower): prompts with images are not supported".into())
                }
                ImageProcessing::Fixed { tokens, .. } => Ok(*tokens),
                ImageProcessing::Patches(_) => {
                    Ok(self.image(&base_dir.join(p)).map_err(|e| e.to_string())?.soft_tokens)
                }
            }
        };
        let rendered = template::render_as(self.format, conv, &mut count, true).map_err(Error::invalid)?;
        let ids = self.tokenizer.encode(&rendered.text, false)?.ids;
        Ok((ids, rendered.images.iter().map(|p| base_dir.join(p)).collect()))
    }

    /// A prompt for generation as one collated row: `conv` encoded with the generation prompt
    /// appended, its images (paths relative to `base_dir`) loaded.
    pub fn prompt(&self, conv: &Conversation, base_dir: &Path) -> Result<Collated> {
        let (ids, files) = self.encode_prompt(conv, base_dir)?;
        let mut row = Collated::prompt(&ids, self.tokenizer.image_id, self.image_shape());
        for f in &files {
            row.push_image(&*self.image(f)?);
        }
        Ok(row)
    }

    /// One image file preprocessed (decoded again unless kept from encoding).
    pub fn image(&self, path: &Path) -> Result<Arc<ImagePixels>> {
        self.image_from(&ImageSource::File(path.to_path_buf()))
    }

    /// One image preprocessed, from a file or a parquet row (read and decoded again unless kept
    /// from encoding). Errors name the file, or the parquet file, row and column.
    pub fn image_from(&self, source: &ImageSource) -> Result<Arc<ImagePixels>> {
        if let Some(p) = self.pixel_cache.get(source) {
            return Ok(p);
        }
        let bytes = source.bytes()?;
        Ok(Arc::new(self.preprocess(&bytes).map_err(|e| Error::invalid(format!("{source}: {e}")))?))
    }

    /// Pixel values of one image file (see [`Self::image`]).
    pub fn pixels(&self, path: &Path) -> Result<Vec<f32>> {
        Ok(self.image(path)?.values.clone())
    }

    /// One image's encoded bytes decoded and preprocessed; the error (a plain message) is to
    /// be prefixed with what names the image.
    fn preprocess(&self, bytes: &[u8]) -> std::result::Result<ImagePixels, String> {
        let rgb = image::decode_rgb(bytes).map_err(|e| format!("cannot decode the image: {e}"))?;
        match &self.images {
            ImageProcessing::None => Err("the model is text-only (no vision tower)".into()),
            ImageProcessing::Fixed { config, tokens } => {
                Ok(ImagePixels { values: image::preprocess(&rgb, config), positions: None, soft_tokens: *tokens })
            }
            ImageProcessing::Patches(cfg) => {
                let p = cfg.preprocess(&rgb)?;
                Ok(ImagePixels { values: p.values, positions: Some(p.positions), soft_tokens: p.soft_tokens })
            }
        }
    }
}

/// An image part's file, relative to `base_dir` (a JSONL dataset's folder): remote URLs and
/// placeholders without a path are refused, and so is a path that is not a file.
fn resolve_file(base_dir: &Path, p: &str) -> std::result::Result<ResolvedImage, String> {
    if p.is_empty() {
        return Err("an image part without a path (give it as \"path\", \"image\" or \"url\")".into());
    }
    if ["http://", "https://"].iter().any(|scheme| p.to_ascii_lowercase().starts_with(scheme)) {
        return Err(format!("image {p}: remote images are not downloaded; save the file and give its path"));
    }
    let path = base_dir.join(p);
    if !path.is_file() {
        return Err(format!("image {} not found", path.display()));
    }
    Ok(ResolvedImage { label: path.display().to_string(), source: ImageSource::File(path), bytes: None })
}

/// Every id the tokenizer can produce must be a row of the model's embedding (or the image soft
/// token, which the model replaces): a larger vocabulary would read past the embedding.
fn check_vocabulary(tokenizer: &TextTokenizer, config: &serde_json::Value, config_path: &Path) -> Result<()> {
    let text = if config.get("text_config").is_some() { &config["text_config"] } else { config };
    let Some(vocab) = text["vocab_size"].as_u64() else { return Ok(()) };
    let image_token = config["image_token_index"].as_u64().or(config["image_token_id"].as_u64());
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
