//! lapidary-gemma3: the Gemma 3 decoder, the multimodal projector and
//! Gemma3ForConditionalGeneration, matching HF transformers.
//!
//! Not built yet: this crate is an empty library until the model lands.
