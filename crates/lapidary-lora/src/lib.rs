//! lapidary-lora: LoRA adapters that fill `lapidary_nn::Linear`'s adapter slot.
//!
//! Built so far: [`LoraAdapter`], the low-rank term `scale · (x · Aᵀ) · Bᵀ` with PEFT's layouts
//! (`lora_A.weight: [r, in]`, `lora_B.weight: [out, r]`) and scaling (`alpha / r`, or
//! `alpha / √r` with rsLoRA), and [`load_peft_adapter`], which reads a PEFT adapter directory
//! (`adapter_config.json` + `adapter_model.safetensors`) into the adapter slots of a model's
//! linears by module path (a whole model of any family: [`load_peft_adapter_into`]); targeting
//! ([`attach_lora`], or [`attach_lora_to`] a model), PEFT/gaussian initialization, saving in
//! PEFT's format, and the weight delta `scale · B · A` used to merge an adapter into its base.
//! LoRA dropout ([`LoraDropout`]) as PEFT's `lora_dropout`. NF4 (QLoRA) bases live in
//! `lapidary_kernels::quant` and `lapidary_nn::Linear::pack_base`.
//!
//! ```
//! use lapidary_autograd::{Tape, Trainable};
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_lora::LoraAdapter;
//! use lapidary_nn::Linear;
//! use std::rc::Rc;
//!
//! let dev = Device::cpu().unwrap();
//! let t = |v: &[f32], s: &[usize]| Tensor::from_f32(&dev, v, s, DType::F32).unwrap();
//! let tape = Tape::new();
//! let mut fc = Linear::new("fc", tape.param("fc.weight", t(&[1., 0., 0., 1.], &[2, 2]), Trainable::No), None);
//! let a = tape.param("fc.lora_A.weight", t(&[1., 1.], &[1, 2]), Trainable::Yes);
//! let b = tape.param("fc.lora_B.weight", t(&[1., -1.], &[2, 1]), Trainable::Yes);
//! fc.set_adapter(Rc::new(LoraAdapter::new(a, b, 2.0, false).unwrap()));
//! let x = tape.input(t(&[1., 2.], &[1, 2]));
//! // x + 2 · (x·Aᵀ)·Bᵀ = [1, 2] + 2 · 3 · [1, -1]
//! assert_eq!(fc.forward(&x).unwrap().value().to_f32_vec().unwrap(), vec![7., -4.]);
//! ```
//!
//! Building: this crate runs kernels through CubeCL's CPU runtime, which links a local LLVM 22.
//! Once per machine, from a checkout of the repository: `cargo xtask setup --user` (Debian's
//! LLVM packages and the shim CubeCL's bundler looks for); then any project builds offline. Give
//! dependencies `opt-level = 3` in the dev profile, or kernels crawl. With `--features cuda`
//! (on `lapidary-core`) kernels also run on NVIDIA GPUs.

use lapidary_autograd::{Var, ops};
use lapidary_core::{Error, Result};
use lapidary_kernels::matmul::Layout;
use lapidary_nn::Adapter;
use std::rc::Rc;

mod dropout;
mod peft;
mod target;
pub use dropout::LoraDropout;
pub use peft::{PeftAdapterConfig, adapter_tensors, load_peft_adapter, load_peft_adapter_into, save_peft_adapter};
pub use target::{
    ATTENTION_MODULES, LoraConfig, LoraInit, LoraTargets, MLP_MODULES, attach_lora, attach_lora_to, module_name,
    peft_target_modules,
};

/// A LoRA adapter: `scale · (x · Aᵀ) · Bᵀ`.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    a: Var,
    b: Var,
    scale: f32,
    dropout: Option<(Rc<LoraDropout>, u64)>,
}

impl LoraAdapter {
    /// From `A: [r, in]`, `B: [out, r]` and `lora_alpha`; the scale is `alpha / r`, or
    /// `alpha / √r` with rsLoRA.
    pub fn new(a: Var, b: Var, alpha: f32, rslora: bool) -> Result<Self> {
        if a.shape().len() != 2 || b.shape().len() != 2 || b.shape()[1] != a.shape()[0] {
            return Err(Error::invalid(format!(
                "LoRA: lora_A must be [r, in] and lora_B [out, r]; got {:?} and {:?}",
                a.shape(),
                b.shape()
            )));
        }
        let r = a.shape()[0] as f32;
        let scale = if rslora { alpha / r.sqrt() } else { alpha / r };
        Ok(LoraAdapter { a, b, scale, dropout: None })
    }

    /// The same adapter with dropout on its input (`path` salts the masks).
    pub fn with_dropout(mut self, dropout: Rc<LoraDropout>, path: &str) -> Self {
        self.dropout = Some((dropout, dropout::path_salt(path)));
        self
    }

    /// `x · Aᵀ` (after dropout) and the B to multiply it by, scaled: `scale · (low · Bᵀ)` as
    /// `low · (scale · B)ᵀ`, so the scale touches the small `[out, r]` B rather than the
    /// `[tokens, out]` product (and nothing at all when it is 1).
    fn low_rank(&self, x: &Var) -> Result<(Var, Var)> {
        let x = match &self.dropout {
            Some((d, salt)) => d.apply(x, *salt)?,
            None => x.clone(),
        };
        let low = ops::matmul(&x, &self.a, None, Layout::ABt)?;
        let b = if self.scale == 1.0 { self.b.clone() } else { ops::scale(&self.b, self.scale)? };
        Ok((low, b))
    }

    /// The scale applied to the low-rank term.
    pub fn scale(&self) -> f32 {
        self.scale
    }
}

impl Adapter for LoraAdapter {
    fn delta(&self, x: &Var) -> Result<Var> {
        let (low, b) = self.low_rank(x)?;
        ops::matmul(&low, &b, None, Layout::ABt)
    }

    fn apply(&self, x: &Var, y: &Var) -> Result<Var> {
        let (low, b) = self.low_rank(x)?;
        ops::matmul_add(y, &low, &b, Layout::ABt)
    }

    fn map_params(&self, f: &mut lapidary_nn::ParamFn<'_>) -> Result<Rc<dyn Adapter>> {
        Ok(Rc::new(LoraAdapter {
            a: f("lora_A.weight", &self.a)?,
            b: f("lora_B.weight", &self.b)?,
            scale: self.scale,
            dropout: self.dropout.clone(),
        }))
    }

    /// `scale · B · A`, `[out, in]`.
    fn weight_delta(&self) -> Result<Option<lapidary_core::Tensor>> {
        let ba = lapidary_kernels::matmul::matmul(self.b.value(), self.a.value(), None, Layout::AB)?;
        Ok(Some(lapidary_kernels::elementwise::scale(&ba, self.scale)?))
    }
}
