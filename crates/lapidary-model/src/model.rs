//! [`Model`]: an opened model of any family, as the trainer and the commands use it — its
//! parameters on a tape and its linears by name with the part each belongs to (through
//! [`AdapterHost`]), its batches, forward,
//! loss and generation, and the names its parameters have in HF checkpoints and PEFT adapters.
//! Not how a family is recognized or opened ([`crate::Family`]).

use crate::batch::Batch;
use crate::generate::GenerateOptions;
use crate::options::{ForwardOptions, Output};
use lapidary_autograd::Var;
use lapidary_core::{Device, Result, Tensor};
use lapidary_data::Collated;
use lapidary_nn::{AdapterHost, Part};
use std::path::Path;

/// One layer's parameters as the layer itself reports them ([`lapidary_nn::Layer::params`]: the
/// names checkpointing rebinds by), with the layer's path in the checkpoint
/// (`language_model.model.layers.3`).
#[derive(Clone, Debug)]
pub struct LayerParams {
    /// The layer's checkpoint path.
    pub path: String,
    /// Each parameter under its name within the layer (adapters included).
    pub params: Vec<(String, Var)>,
}

/// An opened model. Every method takes the model as it was opened (see [`crate::OpenOptions`]);
/// adapters are attached to its linears and registered on its tape through [`AdapterHost`] (its
/// tape, its linears and how it names them).
pub trait Model: AdapterHost {
    /// The family's name, as [`crate::Family::name`].
    fn family(&self) -> &'static str;

    /// Tokens of the vocabulary (the logits' width).
    fn vocab_size(&self) -> usize;

    /// Whether the model has a vision tower (else it is text-only).
    fn has_vision(&self) -> bool;

    /// Every layer of both towers with the parameters it reports. A base weight's tape name is the
    /// layer's path, a dot and the name it reports; an adapter tensor's is its linear's PEFT path
    /// ([`Naming::peft_path`]) and the adapter's own name (`.lora_A.weight`).
    fn layer_params(&self) -> Vec<LayerParams>;

    /// The key parameter `name` has in the checkpoint the model was opened from (a hub-layout or
    /// GGUF checkpoint stores some parameters under other names).
    fn stored_name(&self, name: &str) -> String;

    /// The shape parameter `name` has in that checkpoint (e.g. a patch embedding stored as a
    /// conv kernel `[out, c, p, p]`, used as a matrix); `None` for one not loaded from it.
    fn stored_shape(&self, name: &str) -> Option<Vec<usize>>;

    /// The key parameter `name` gets in an HF safetensors checkpoint written from this model (as
    /// transformers saves the family's class; for a model opened from GGUF, the HF class the
    /// file's architecture maps to).
    fn hf_checkpoint_key(&self, name: &str) -> String;

    /// The collated rows' images as the model takes them, on `device` (`None` without images).
    fn pixel_values(&self, rows: &Collated, device: &Device) -> Result<Option<Tensor>>;

    /// The model's batch of collated rows, on `device`: [`Batch::without_images`] and
    /// [`Model::pixel_values`].
    fn batch(&self, rows: &Collated, device: &Device) -> Result<Batch> {
        Ok(Batch { pixel_values: self.pixel_values(rows, device)?, ..Batch::without_images(rows) })
    }

    /// Logits and (with labels) the loss of `batch`.
    fn forward(&self, batch: &Batch, opts: &ForwardOptions<'_>) -> Result<Output>;

    /// The loss of [`Model::forward`] alone, for training (the head and the cross-entropy may
    /// run fused, the logits never materialized). Same value and gradients up to summation
    /// order.
    fn loss(&self, batch: &Batch, opts: &ForwardOptions<'_>) -> Result<Var>;

    /// Generates after `prompt` (one row, no labels; see `lapidary_data::Processor::prompt`).
    /// Returns the new tokens.
    fn generate(&self, prompt: &Collated, opts: &GenerateOptions) -> Result<Vec<u32>>;

    /// The part parameter `name` belongs to.
    fn part_of(&self, name: &str) -> Part {
        (self.naming().part_of)(name)
    }

    /// `t` (parameter `name`, or its gradient) in the shape its checkpoint stores it in.
    fn in_stored_shape(&self, name: &str, t: &Tensor) -> Result<Tensor> {
        match self.stored_shape(name) {
            Some(s) if s != t.shape() => t.reshape(&s),
            _ => Ok(t.clone()),
        }
    }

    /// Reads a batch file in the format `lapidary eval` documents ([`Batch::read`]).
    fn read_batch(&self, path: &Path, device: &Device) -> Result<Batch> {
        Batch::read(path, device)
    }

    /// The trainable parameters a batch without images cannot reach (vision-side ones): their
    /// gradients are absent after such a batch, and the gradient-flow check allows that.
    fn unreachable_without_images(&self) -> Vec<String> {
        let naming = self.naming();
        self.tape().leaf_names().into_iter().filter(|n| !(naming.part_of)(n).reached_without_images()).collect()
    }
}
