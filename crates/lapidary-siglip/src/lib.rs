//! lapidary-siglip: the SigLIP vision encoder as HF transformers defines it (patch embedding,
//! learned positions, pre-LN layers, gelu-tanh MLP, post-layernorm), configured by HF field names.
//!
//! Not built yet: this crate is an empty library until the model lands.
