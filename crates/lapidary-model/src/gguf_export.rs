//! [`GgufExport`]: what a family tells `export-gguf` so that llama.cpp loads the files — the GGUF
//! name of each parameter and the file it goes to, which values llama.cpp stores shifted
//! (`1 + w`) or laid out otherwise, the tensors that are no parameter (buffers, generated
//! tables), the storage type the converter picks for each, the tokenizer's form, and the
//! architecture's metadata for the text file and the vision projector (`mmproj`) file. The
//! writing itself (`general.*`, the tokenizer's reading, atomic files) is the command's, the same
//! for every family. Not reading GGUF (each family's loader).

use lapidary_nn::gguf::dequant::GgmlType;
use lapidary_nn::gguf::write::Meta;

/// Where one parameter goes in the exported files.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    /// Its GGUF name (`blk.3.attn_q.weight`, `v.patch_embd.weight`, ...).
    pub name: String,
    /// In the vision projector (`mmproj`) file, else in the text file.
    pub vision: bool,
    /// llama.cpp stores the values as `1 + w` (Gemma 3's RMS norms).
    pub plus_one: bool,
    /// `Some(p)`: a patch projection `[out, p·p·3]` over pixels in (row, column, channel) order,
    /// stored as llama.cpp's convolution kernel `[out, 3, p, p]`.
    pub patches_as_conv: Option<usize>,
}

impl GgufTensor {
    /// A tensor stored as it is.
    pub fn plain(name: impl Into<String>, vision: bool) -> Self {
        GgufTensor { name: name.into(), vision, plus_one: false, patches_as_conv: None }
    }
}

/// A tensor of the exported files that is no trained parameter: a buffer of the checkpoint
/// (Gemma 4's layer scalars, clip bounds) or a table the converter generates (RoPE factors).
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraTensor {
    /// Its name and file.
    pub tensor: GgufTensor,
    /// Row-major shape as written.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// How the tokenizer goes into the text file.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufTokenizer {
    /// SentencePiece pieces with their scores (`tokenizer.ggml.model` = `llama`): Gemma 3.
    SentencePiece,
    /// An HF byte-fallback BPE `tokenizer.json` as llama.cpp's `LlamaHfVocab` reads it: pieces
    /// in id order, every score -1000, byte pieces BYTE, the tokenizer's special tokens CONTROL
    /// (`visible` ones USER_DEFINED), the merges; `model` names llama.cpp's tokenizer.
    HfBpe {
        /// `tokenizer.ggml.model`.
        model: &'static str,
        /// Special tokens llama.cpp must render (USER_DEFINED).
        visible: &'static [&'static str],
    },
}

/// A family's GGUF layout for one model (see the module docs).
pub trait GgufExport {
    /// `general.architecture` of the text file (`gemma3`); its metadata keys start with it.
    fn architecture(&self) -> &'static str;

    /// Where parameter `name` (lapidary's name) goes; `None` for one llama.cpp has no place for
    /// (an error: nothing is dropped silently).
    fn tensor(&self, name: &str) -> Option<GgufTensor>;

    /// Tensors beside the parameters (none by default).
    fn extra_tensors(&self) -> Vec<ExtraTensor> {
        Vec::new()
    }

    /// The text model's architecture metadata (`<arch>.block_count`, ...), given the context
    /// length the export found.
    fn text_metadata(&self, context_length: u64) -> Vec<(String, Meta)>;

    /// The vision projector file's metadata (`clip.*`), given the processor's image mean and
    /// std; `None` for a text-only model (no `mmproj` file).
    fn mmproj_metadata(&self, image_mean: [f32; 3], image_std: [f32; 3]) -> Option<Vec<(String, Meta)>>;

    /// How the tokenizer is written (SentencePiece by default).
    fn tokenizer(&self) -> GgufTokenizer {
        GgufTokenizer::SentencePiece
    }

    /// The storage type of tensor `gguf` (its GGUF name) of `shape` when matrices are asked in
    /// `matrix`: by default [`converter_storage_type`]; families add the converter's exceptions.
    fn storage_type(&self, gguf: &str, shape: &[usize], matrix: GgmlType) -> GgmlType {
        converter_storage_type(gguf, shape, matrix)
    }
}

/// llama.cpp's converter's rule for every architecture: 1-D tensors, norms, tensors whose name
/// does not end in `.weight` and position embeddings in f32; a Q8_0 matrix whose rows are not
/// whole blocks of 32 in f16; other matrices in `matrix`.
pub fn converter_storage_type(gguf: &str, shape: &[usize], matrix: GgmlType) -> GgmlType {
    if shape.len() <= 1 || gguf.ends_with("_norm.weight") || !gguf.ends_with(".weight") {
        return GgmlType::F32;
    }
    if gguf.starts_with("v.position_embd.") {
        return GgmlType::F32;
    }
    if matrix == GgmlType::Q8_0 && !shape[shape.len() - 1].is_multiple_of(32) {
        return GgmlType::F16;
    }
    matrix
}
