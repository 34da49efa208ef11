//! [`GgufExport`]: what a family tells `export-gguf` so that llama.cpp loads the files — the GGUF
//! name of each parameter and the file it goes to, which values llama.cpp stores shifted
//! (`1 + w`), and the architecture's metadata for the text file and the vision projector
//! (`mmproj`) file. The writing itself (storage types, `general.*`, the tokenizer, atomic files)
//! is the command's, the same for every family. Not reading GGUF (each family's loader).

use lapidary_nn::gguf::write::Meta;

/// Where one parameter goes in the exported files.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    /// Its GGUF name (`blk.3.attn_q.weight`, `v.patch_embd.weight`, ...).
    pub name: String,
    /// In the vision projector (`mmproj`) file, else in the text file.
    pub vision: bool,
    /// llama.cpp stores the values as `1 + w` (Gemma's RMS norms).
    pub plus_one: bool,
}

/// A family's GGUF layout for one model (see the module docs).
pub trait GgufExport {
    /// `general.architecture` of the text file (`gemma3`); its metadata keys start with it.
    fn architecture(&self) -> &'static str;

    /// Where parameter `name` (lapidary's name) goes; `None` for one llama.cpp has no place for
    /// (an error: nothing is dropped silently).
    fn tensor(&self, name: &str) -> Option<GgufTensor>;

    /// The text model's architecture metadata (`<arch>.block_count`, ...), given the context
    /// length the export found.
    fn text_metadata(&self, context_length: u64) -> Vec<(String, Meta)>;

    /// The vision projector file's metadata (`clip.*`), given the processor's image mean and
    /// std; `None` for a text-only model (no `mmproj` file).
    fn mmproj_metadata(&self, image_mean: [f32; 3], image_std: [f32; 3]) -> Option<Vec<(String, Meta)>>;
}
