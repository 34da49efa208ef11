//! lapidary-train: AdamW, learning-rate schedules, gradient accumulation and clipping,
//! checkpoint/resume, metrics, and the training loop.
//!
//! Not built yet: this crate is an empty library until the trainer lands.
