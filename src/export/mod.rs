//! `lapidary export-gguf`: a model (HF directory or `.gguf`), with a LoRA adapter folded in when
//! given, written as the GGUF files llama.cpp, Ollama and LM Studio load: the text model (tensor
//! names, metadata and tokenizer as llama.cpp's `convert_hf_to_gguf.py` writes them) and, for a
//! vision model, the `mmproj` file (vision tower and projector with the `clip.*` metadata
//! llama.cpp's multimodal library reads). The family says where each tensor goes and its
//! architecture's metadata (`lapidary_model::GgufExport`); storage types, `general.*` and the
//! tokenizer are written here, as the converter does. Files are written through temporary files
//! and renamed; existing ones are replaced only with `overwrite`. Not quantization to K-quants.

mod hf_bpe;
mod tokenizer;

use crate::core::{Device, Error, Result};
use crate::merge::MergedParam;
use crate::model::{Family, GgufExport, GgufTensor, GgufTokenizer};
use crate::nn::gguf::dequant::GgmlType;
use crate::nn::gguf::write::{GgufWriter, Meta};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// What `export-gguf` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutType {
    /// Everything in f32.
    F32,
    /// Matrices in f16 (llama.cpp's `--outtype f16`).
    F16,
    /// Matrices in bf16.
    Bf16,
    /// Matrices in Q8_0.
    #[value(name = "q8_0")]
    Q8_0,
}

impl OutType {
    fn matrix_type(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::Bf16 => GgmlType::Bf16,
            OutType::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (LlamaFileType).
    fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q8_0 => 7,
            OutType::Bf16 => 32,
        }
    }

    fn label(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::Bf16 => "bf16",
            OutType::Q8_0 => "q8_0",
        }
    }
}

/// The files written.
#[derive(Debug)]
pub struct Exported {
    /// The text model.
    pub text: PathBuf,
    /// The vision projector file, for a vision model.
    pub mmproj: Option<PathBuf>,
    /// Linears the adapter was folded into.
    pub merged: usize,
}

/// Exports `model` (HF directory or `.gguf`) with `adapter` folded in to `out_dir`:
/// `<name>-<type>.gguf` and, for a vision model, `mmproj-<name>-<type>.gguf`.
pub fn run(
    model: &Path,
    adapter: Option<&Path>,
    out_dir: &Path,
    out_type: OutType,
    overwrite: bool,
    device: &Device,
) -> Result<Exported> {
    let stem = file_stem(model);
    let text_path = out_dir.join(format!("{stem}-{}.gguf", out_type.label()));
    let mmproj_path = out_dir.join(format!("mmproj-{stem}-{}.gguf", out_type.label()));
    for p in [&text_path, &mmproj_path] {
        if p.exists() && !overwrite {
            return Err(Error::invalid(format!("{} exists; pass --overwrite to replace it", p.display())));
        }
    }
    let family = crate::registry::family_of(model)?;
    let layout = family.gguf_export(model)?;
    let crate::merge::Merged { params, adapted: merged } = crate::merge::merged_params(model, adapter, device)?;
    let source = Source::open(model, family, layout.as_ref())?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let text = text_file(layout.as_ref(), &params, &source, out_type)?;
    text.write(&text_path)?;
    match mmproj_file(layout.as_ref(), &params, &source, out_type)? {
        Some(f) => {
            f.write(&mmproj_path)?;
        }
        None => {
            if mmproj_path.exists() {
                std::fs::remove_file(&mmproj_path).map_err(|e| Error::io(&mmproj_path, e))?;
            }
        }
    }
    let mmproj = source.mean_std.is_some().then_some(mmproj_path);
    Ok(Exported { text: text_path, mmproj, merged })
}

/// What the export reads from the model besides its weights.
pub struct Source {
    /// `general.name`.
    pub name: String,
    /// The text model's context length.
    pub context_length: u64,
    /// Tokenizer metadata (`tokenizer.*`), in the converter's order.
    pub tokenizer: Vec<(String, Meta)>,
    /// Image mean and std, for a vision model.
    pub mean_std: Option<([f32; 3], [f32; 3])>,
}

impl Source {
    /// Reads the name, context length, tokenizer and image normalization of `model`, a model of
    /// `family` written in `layout`.
    pub fn open(model: &Path, family: &dyn Family, layout: &dyn GgufExport) -> Result<Self> {
        let architecture = layout.architecture();
        if crate::nn::gguf::is_gguf_path(model) {
            let f = crate::nn::gguf::GgufFile::open(model)?;
            let name = f.get("general.name").and_then(|v| v.as_str()).map(str::to_string);
            let context_length = f.require(&format!("{architecture}.context_length"))?.as_u64().unwrap_or(131_072);
            return Ok(Source {
                name: name.unwrap_or_else(|| title_case(&file_stem(model))),
                context_length,
                tokenizer: tokenizer::from_gguf(&f)?,
                mean_std: None,
            });
        }
        let config = family.hf_config(model)?;
        let text_cfg = config.get("text_config").unwrap_or(&config);
        let context_length = text_cfg["max_position_embeddings"].as_u64().unwrap_or(131_072);
        let vocab_size = text_cfg["vocab_size"]
            .as_u64()
            .ok_or_else(|| Error::invalid(format!("{}: config.json has no vocab_size", model.display())))?
            as usize;
        let mean_std = match config.get("vision_config") {
            Some(_) => match family.processor(model)?.images {
                lapidary_data::ImageProcessing::Fixed { config, .. } => Some((config.mean, config.std)),
                lapidary_data::ImageProcessing::Patches(p) => Some((p.mean, p.std)),
                lapidary_data::ImageProcessing::None => None,
            },
            None => None,
        };
        Ok(Source {
            name: title_case(&file_stem(model)),
            context_length,
            tokenizer: match layout.tokenizer() {
                GgufTokenizer::SentencePiece => tokenizer::from_hf_dir(model, vocab_size)?,
                GgufTokenizer::HfBpe { model: name, visible } => hf_bpe::from_hf_bpe(model, name, visible)?,
            },
            mean_std,
        })
    }
}

/// The model's name on disk: a directory's name (also for `.`), a file's stem.
fn file_stem(p: &Path) -> String {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

/// `gemma-3-4b-it` -> `Gemma 3 4b It` (the converter's fallback name from a directory).
fn title_case(s: &str) -> String {
    s.split(['-', '_', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parameter count as gguf's `size_label` writes it (`229K`, `4.3B`, ...).
fn size_label(n: usize) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let int_digits = format!("{}", scaled.round() as u64).trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(int_digits);
    format!("{scaled:.fix$}{suffix}")
}

/// `[out, p·p·3]` patch-projection rows (pixels in (row, column, channel) order) as a
/// `[out, 3, p, p]` convolution kernel.
fn patches_as_conv(values: &[f32], shape: &[usize], p: usize) -> Result<(Vec<f32>, Vec<usize>)> {
    let (out, width) = match shape {
        [o, w] => (*o, *w),
        _ => return Err(Error::invalid(format!("patch projection of shape {shape:?}: expected [out, p·p·3]"))),
    };
    if width != 3 * p * p {
        return Err(Error::invalid(format!("patch projection of width {width}: expected 3·{p}·{p}")));
    }
    let mut conv = vec![0f32; values.len()];
    for o in 0..out {
        for y in 0..p {
            for x in 0..p {
                for c in 0..3 {
                    conv[((o * 3 + c) * p + y) * p + x] = values[o * width + (y * p + x) * 3 + c];
                }
            }
        }
    }
    Ok((conv, vec![out, 3, p, p]))
}

/// Adds one tensor as `t` says: shifted by one, laid out as a convolution, stored in the type the
/// layout picks; returns the number of values added.
fn add_tensor(
    w: &mut GgufWriter,
    t: &GgufTensor,
    values: &[f32],
    shape: &[usize],
    layout: &dyn GgufExport,
    out: OutType,
) -> Result<usize> {
    let mut values: Cow<'_, [f32]> = Cow::Borrowed(values);
    let mut shape: Cow<'_, [usize]> = Cow::Borrowed(shape);
    if t.plus_one {
        values = Cow::Owned(values.iter().map(|v| v + 1.0).collect());
    }
    if let Some(p) = t.patches_as_conv {
        let (v, s) = patches_as_conv(&values, &shape, p).map_err(|e| Error::invalid(format!("{}: {e}", t.name)))?;
        (values, shape) = (Cow::Owned(v), Cow::Owned(s));
    }
    w.add_tensor(&t.name, &shape, &values, layout.storage_type(&t.name, &shape, out.matrix_type()))?;
    Ok(values.len())
}

/// Adds the tensors of `params` and the layout's extra tensors that go to the vision file
/// (`vision`) or to the text file; returns the number of values added. A parameter the layout has
/// no place for is an error.
fn add_tensors(
    w: &mut GgufWriter,
    params: &[MergedParam],
    layout: &dyn GgufExport,
    vision: bool,
    out: OutType,
) -> Result<usize> {
    let mut count = 0;
    for p in params {
        let Some(t) = layout.tensor(&p.name) else {
            return Err(Error::invalid(format!("{}: no GGUF name for this tensor", p.name)));
        };
        if t.vision == vision {
            count += add_tensor(w, &t, &p.values, &p.shape, layout, out)?;
        }
    }
    for x in layout.extra_tensors() {
        if x.tensor.vision == vision {
            count += add_tensor(w, &x.tensor, &x.values, &x.shape, layout, out)?;
        }
    }
    Ok(count)
}

fn general(w: &mut GgufWriter, arch: &str, kind: &str, name: &str, params: usize, out: OutType) -> Result<()> {
    w.set("general.architecture", Meta::str(arch))?;
    w.set("general.type", Meta::str(kind))?;
    w.set("general.name", Meta::str(name))?;
    w.set("general.size_label", Meta::str(size_label(params)))?;
    w.set("general.file_type", Meta::U32(out.file_type()))?;
    w.set("general.quantization_version", Meta::U32(2))
}

/// The text model's GGUF (the layout's architecture, with the tokenizer).
pub fn text_file(layout: &dyn GgufExport, params: &[MergedParam], source: &Source, out: OutType) -> Result<GgufWriter> {
    let mut tensors = GgufWriter::new();
    let n = add_tensors(&mut tensors, params, layout, false, out)?;
    let mut w = GgufWriter::new();
    general(&mut w, layout.architecture(), "model", &source.name, n, out)?;
    for (k, v) in layout.text_metadata(source.context_length) {
        w.set(&k, v)?;
    }
    for (k, v) in &source.tokenizer {
        w.set(k, v.clone())?;
    }
    w.take_tensors(tensors)?;
    Ok(w)
}

/// The vision projector's GGUF (architecture `clip`); `None` for a text-only model.
pub fn mmproj_file(
    layout: &dyn GgufExport,
    params: &[MergedParam],
    source: &Source,
    out: OutType,
) -> Result<Option<GgufWriter>> {
    let Some((mean, std)) = source.mean_std else { return Ok(None) };
    let meta =
        layout.mmproj_metadata(mean, std).ok_or_else(|| Error::invalid("mmproj: the model has no vision tower"))?;
    let mut tensors = GgufWriter::new();
    let n = add_tensors(&mut tensors, params, layout, true, out)?;
    let mut w = GgufWriter::new();
    general(&mut w, "clip", "mmproj", &source.name, n, out)?;
    for (k, v) in meta {
        w.set(&k, v)?;
    }
    w.take_tensors(tensors)?;
    Ok(Some(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_as_gguf_writes_them() {
        assert_eq!(size_label(229_952), "230K");
        assert_eq!(size_label(78_000), "78K");
        assert_eq!(size_label(268_098_176), "268M");
        assert_eq!(size_label(4_300_079_472), "4.3B");
        assert_eq!(title_case("gemma-3-4b-it"), "Gemma 3 4b It");
    }

    #[test]
    fn out_types_parse_and_refuse() {
        use clap::ValueEnum;
        assert_eq!(OutType::from_str("q8_0", false).unwrap(), OutType::Q8_0);
        assert_eq!(OutType::from_str("bf16", false).unwrap(), OutType::Bf16);
        assert!(OutType::from_str("q4_k", false).is_err());
    }
}
