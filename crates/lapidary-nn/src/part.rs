//! [`Part`]: which part of a vision-language model a parameter belongs to — the vision tower,
//! the projector between the towers, or the language model. Model crates say it for each of
//! their parameters; LoRA targeting, the gradient-flow report and the trainer read it (a batch
//! without images reaches no vision-side parameter). Not the names themselves (each model
//! crate's own).

/// A part of a vision-language model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// The vision encoder's own weights.
    Vision,
    /// What maps image features into the language model's embedding space.
    Projector,
    /// The language model (embeddings, decoder layers, head).
    Language,
}

impl Part {
    /// Whether a batch without images reaches it: only the language model.
    pub fn reached_without_images(self) -> bool {
        self == Part::Language
    }

    /// Whether it is on the vision side (the vision tower or the projector).
    pub fn is_vision_side(self) -> bool {
        !self.reached_without_images()
    }
}
