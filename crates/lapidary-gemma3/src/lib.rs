//! lapidary-gemma3: Gemma 3's multimodal projector, and (to come) the Gemma 3 decoder and
//! Gemma3ForConditionalGeneration, matching HF transformers.
//!
//! Built so far: [`MultiModalProjector`]. It turns SigLIP features into text-width image
//! tokens, as HF's `get_image_features` does.

mod projector;

pub use projector::MultiModalProjector;
