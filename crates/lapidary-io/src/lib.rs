//! lapidary-io: the kernel-free foundation of lapidary — everything that reads and writes files
//! or describes data without a device. It builds without CubeCL or LLVM, so a crate that only
//! needs files (the tokenizer and image processor of `lapidary-data`, a conversion tool) stays
//! light.
//!
//! It is: the one [`Error`] type (every message names the file, tensor or setting), [`DType`]
//! (f32 / bf16 / f16 and their byte encodings), atomic writes ([`fsio`]: a temporary file, then a
//! rename), memory-mapped [`safetensors`] checkpoints (single or sharded; read as host bytes or
//! f32, written atomically), [`gguf`] files (parsed, dequantized, written as F32 / F16 / BF16 /
//! Q8_0) and a seeded RNG ([`rng`]). It is not: tensors on a device (`lapidary-core`), or a
//! model's weight names and key accounting (`lapidary-nn`'s `Weights`).
//!
//! ```
//! use lapidary_io::safetensors::{save, SafetensorsFiles, Dtype};
//!
//! let dir = std::env::temp_dir().join(format!("lapidary-io-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("w.safetensors");
//! let values: Vec<u8> = [1.5f32, -2.0, 0.25, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
//! save(&path, &[("w".to_string(), Dtype::F32, vec![2, 2], values)]).unwrap();
//!
//! let files = SafetensorsFiles::open(&path).unwrap();
//! let (w, shape) = files.load_f32("w").unwrap();
//! assert_eq!((w, shape), (vec![1.5, -2.0, 0.25, 4.0], vec![2, 2]));
//! // A missing tensor is an error that names it.
//! assert!(files.load_f32("bias").unwrap_err().to_string().contains("bias"));
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

mod dtype;
mod error;
pub mod fsio;
pub mod gguf;
pub mod rng;
pub mod safetensors;

pub use dtype::DType;
pub use error::{Error, Result};
pub use half::{bf16, f16};
