//! lapidary-nn: the layers lapidary models are built from: a parameter store with strict
//! safetensors loading, `Linear` with an adapter slot, Gemma RMSNorm, LayerNorm, embeddings, patch
//! embedding, RoPE tables and attention with its masks.
//!
//! Not built yet: this crate is an empty library until the layers land.
