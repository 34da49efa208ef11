//! [`AdapterHost`]: what adapters attach to — a model's linears, the [`Part`] each lies in, the
//! PEFT names of their modules ([`Naming`]), and the tape adapter weights are registered on.
//! Every model implements it (`lapidary_model::Model` requires it), so LoRA attaches to any
//! family by path without knowing it. Not the adapters themselves (lapidary-lora).

use crate::{Linear, Part};
use lapidary_autograd::Tape;

/// How a model names its parameters, as plain functions (copied freely, so callers can hold them
/// while borrowing the model's linears mutably).
#[derive(Clone, Copy)]
pub struct Naming {
    /// The part a parameter belongs to, by its name (a tape leaf, checkpoint key or adapter
    /// tensor, with or without a PEFT prefix).
    pub part_of: fn(&str) -> Part,
    /// The module path PEFT gives the linear at a checkpoint path (without `.weight`), e.g.
    /// `base_model.model.model.language_model.layers.0.self_attn.q_proj`.
    pub peft_path: fn(&str) -> String,
}

impl std::fmt::Debug for Naming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Naming")
    }
}

/// A model adapters can attach to.
pub trait AdapterHost {
    /// The tape the parameters live on (adapters are registered on it; training takes gradients
    /// from it).
    fn tape(&self) -> &Tape;

    /// How the model names its parameters.
    fn naming(&self) -> Naming;

    /// Every linear of both towers (their paths are checkpoint keys without `.weight`), for
    /// attaching adapters by path.
    fn linears_mut(&mut self) -> Vec<&mut Linear>;
}
