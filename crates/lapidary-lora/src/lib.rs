//! lapidary-lora: LoRA and QLoRA (NF4 base) adapters attached to `nn::Linear` slots by parameter
//! path, merge/unmerge, and PEFT-format adapter files.
//!
//! Not built yet: this crate is an empty library until adapters land.
