//! lapidary-data: the tokenizer, Gemma 3's and Gemma 4's chat formats, image preprocessing
//! (fixed-size images, Gemma 4's patches), JSONL and parquet datasets and the collator — from a
//! folder of images and a JSONL file, or a Hub dataset's parquet files, to padded batches with
//! labels and token_type_ids, matching HF's Gemma3Processor and Gemma4Processor; and the
//! tokenizer a Gemma GGUF file carries ([`gguf_tokenizer`]). Not the model or the training loop.
//! It needs no CubeCL and no LLVM to build: its only lapidary dependency is the kernel-free
//! `lapidary-io`.
//!
//! ```
//! use lapidary_data::template::{Conversation, render};
//!
//! let row: Conversation = serde_json::from_str(r#"{"messages": [
//!     {"role": "user", "content": [{"type": "image", "path": "cat.png"}, {"type": "text", "text": "What is it?"}]},
//!     {"role": "assistant", "content": "A cat."}]}"#).unwrap();
//! let r = render(&row, 2, false).unwrap();
//! assert!(r.text.starts_with("<bos><start_of_turn>user\n\n\n<start_of_image><image_soft_token><image_soft_token><end_of_image>"));
//! assert_eq!(r.images, ["cat.png"]);
//! assert_eq!(&r.text[r.response_spans[0].0..r.response_spans[0].1], "A cat.<end_of_turn>\n");
//! ```

pub mod collate;
pub mod data_files;
pub mod dataset;
pub mod gguf_tokenizer;
pub mod image;
pub mod image_source;
pub mod jpeg;
pub mod pack;
pub mod parquet_rows;
pub mod patches;
pub mod processor;
pub mod stats;
pub mod template;
pub mod tokenizer;

pub use collate::{Collated, collate, collate_packed};
pub use data_files::DataFiles;
pub use dataset::{Dataset, OnBadRow, RowAt, Skipped};
pub use image_source::{EmbeddedImage, ImageSource};
pub use processor::{EncodeOptions, Example, ImagePixels, ImageProcessing, Processor, ResolvedImage};
pub use tokenizer::TextTokenizer;
