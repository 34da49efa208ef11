//! How a model is opened and run: [`OpenOptions`] (dtype, which [`Parts`] train, packed frozen
//! linears), [`ForwardOptions`] (images as a variable, checkpointing, the loss's divisor) and
//! what a forward pass returns ([`Output`]). The same for every family. Not the model itself.

use lapidary_autograd::{Trainable, Var};
use lapidary_core::DType;
use lapidary_kernels::quant::PackFormat;
use lapidary_nn::Checkpointing;

/// Trainability of a vision-language model's three parts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Parts {
    /// The vision tower's own weights.
    pub vision: Trainable,
    /// The projector between the towers.
    pub projector: Trainable,
    /// The language model's weights (embedding included).
    pub text: Trainable,
}

impl Parts {
    /// Every part `trainable`.
    pub fn all(trainable: Trainable) -> Self {
        Parts { vision: trainable, projector: trainable, text: trainable }
    }
}

/// How a model is opened.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenOptions {
    /// The dtype the tensors are held in on the device.
    pub dtype: DType,
    /// Which parts are trainable (frozen: nothing is recorded for their gradients).
    pub parts: Parts,
    /// Frozen linear weights packed (bf16, NF4: QLoRA) as they are read, so their
    /// full-precision copies never reach the device; `None`: held as `dtype`.
    pub packing: Option<PackFormat>,
}

impl Default for OpenOptions {
    /// f32, every part frozen, nothing packed: a model for inference.
    fn default() -> Self {
        OpenOptions { dtype: DType::F32, parts: Parts::all(Trainable::No), packing: None }
    }
}

impl OpenOptions {
    /// f32, every part `trainable`, nothing packed.
    pub fn all(trainable: Trainable) -> Self {
        OpenOptions { parts: Parts::all(trainable), ..Self::default() }
    }
}

/// How a forward pass runs; the default is inference on the batch as it is.
#[derive(Clone, Copy, Default)]
pub struct ForwardOptions<'a> {
    /// The images as a variable (e.g. a trainable leaf, to get the gradient with respect to the
    /// image) in place of the batch's pixels.
    pub pixels: Option<&'a Var>,
    /// Whether layers keep their activations or recompute them during backward (both towers).
    pub checkpointing: Checkpointing,
    /// The divisor of the summed cross-entropy; `None`: this batch's label count. Gradient
    /// accumulation passes the label count of all its micro-batches, so that their losses add
    /// up to the loss of the whole batch (not a mean of means).
    pub normalizer: Option<f32>,
}

/// What a forward pass returns.
pub struct Output {
    /// `[batch * seq, vocab]`.
    pub logits: Var,
    /// Mean cross-entropy, `[1]`, when labels were given.
    pub loss: Option<Var>,
    /// HF's `hidden_states`: the decoder's input, the output of every layer but the last, and
    /// the final normalized output; each `[B, T, H]`.
    pub hidden_states: Vec<Var>,
}
