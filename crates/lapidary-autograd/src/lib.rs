//! lapidary-autograd: the reverse-mode tape every lapidary model and adapter runs on: trainable
//! and frozen leaves, a gradient store, a no-grad scope, checkpointed segments that take their
//! trainable parameters as explicit inputs, and a gradient-flow report after every backward.
//!
//! Not built yet: this crate is an empty library until the tape lands.
