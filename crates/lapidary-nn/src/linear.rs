//! `Linear`: `y = x · Wᵀ + b` with W in HF's `[out, in]` layout, plus an adapter slot. An adapter
//! adds its own term computed from the same input (LoRA: `s · (x · Aᵀ) · Bᵀ`). Not the adapter
//! itself (see `lapidary-lora`). A frozen base can be packed (bf16, NF4) and is then expanded to
//! f32 for each matmul.

use crate::Weights;
use lapidary_autograd::{Tape, Trainable, Var, ops};
use lapidary_core::{Error, Result};
use lapidary_kernels::quant::{PackFormat, PackedMatrix};
use std::fmt;
use std::rc::Rc;

/// Something that adds a term to a linear layer's output, computed from the layer's input.
pub trait Adapter {
    /// The term to add to the base output (`[..., out]`) for input `x` (`[..., in]`).
    fn delta(&self, x: &Var) -> Result<Var>;
    /// The base output `y` plus this adapter's term for `x`; an adapter may fuse the sum into
    /// its last product (LoRA does).
    fn apply(&self, x: &Var, y: &Var) -> Result<Var> {
        ops::add(y, &self.delta(x)?)
    }
    /// The adapter's own parameters (for optimizers and checkpointed segments).
    fn params(&self) -> Vec<Var>;
    /// The same adapter computing with other variables in place of [`Adapter::params`], in the
    /// same order (a checkpointed segment recomputes with its own copies).
    fn rebind(&self, params: &[Var]) -> Result<Rc<dyn Adapter>>;
    /// The change to the base weight (`[out, in]`) that has the same effect, for merging the
    /// adapter into the base; `None` when the adapter cannot be expressed so.
    fn weight_delta(&self) -> Result<Option<lapidary_core::Tensor>> {
        Ok(None)
    }
}

/// A linear layer with HF weight layout and an optional adapter.
#[derive(Clone)]
pub struct Linear {
    path: String,
    weight: Base,
    bias: Option<Var>,
    adapter: Option<Rc<dyn Adapter>>,
}

/// The base weight: a tape variable, or a frozen packed copy (bf16 / NF4) expanded per use.
// One value per layer: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Base {
    Dense(Var),
    Packed(Rc<PackedMatrix>),
}

impl Linear {
    /// A layer at parameter path `path` (e.g. `model.layers.0.self_attn.q_proj`) with weight
    /// `[out, in]` and optional bias `[out]`.
    pub fn new(path: impl Into<String>, weight: Var, bias: Option<Var>) -> Self {
        Linear { path: path.into(), weight: Base::Dense(weight), bias, adapter: None }
    }

    /// Loads `{path}.weight` (`[out, in]`) and, with `bias`, `{path}.bias` (`[out]`) from `w`
    /// onto `tape`. A frozen weight is packed straight from the file when `w` packs
    /// ([`Weights::with_packing`]).
    pub fn load(
        w: &Weights,
        tape: &Tape,
        path: &str,
        out: usize,
        inp: usize,
        bias: bool,
        trainable: Trainable,
    ) -> Result<Self> {
        let bias = if bias { Some(w.param(tape, &format!("{path}.bias"), &[out], trainable)?) } else { None };
        if let (Some(format), Trainable::No) = (w.packing(), trainable) {
            let values = w.host_values(&format!("{path}.weight"), &[out, inp])?;
            let matrix = PackedMatrix::pack(w.device(), &values, &[out, inp], format)?;
            return Ok(Linear { path: path.to_string(), weight: Base::Packed(Rc::new(matrix)), bias, adapter: None });
        }
        let weight = w.param(tape, &format!("{path}.weight"), &[out, inp], trainable)?;
        Ok(Linear::new(path, weight, bias))
    }

    /// The parameter path of this layer.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `(out, in)` features.
    pub fn dims(&self) -> (usize, usize) {
        let s = match &self.weight {
            Base::Dense(w) => w.shape(),
            Base::Packed(matrix) => matrix.shape(),
        };
        (s[0], s[1])
    }

    /// The base weight as a tape variable; `None` once packed (see [`Linear::pack_base`]).
    pub fn weight(&self) -> Option<&Var> {
        match &self.weight {
            Base::Dense(w) => Some(w),
            Base::Packed(_) => None,
        }
    }

    /// The base weight's f32 values (expanded from its packed form when packed).
    pub fn weight_f32(&self) -> Result<lapidary_core::Tensor> {
        match &self.weight {
            Base::Dense(w) => lapidary_kernels::quant::cast_to_f32(w.value()),
            Base::Packed(matrix) => matrix.to_f32(),
        }
    }

    /// The packed base, when packed.
    pub fn packed_base(&self) -> Option<&PackedMatrix> {
        match &self.weight {
            Base::Dense(_) => None,
            Base::Packed(matrix) => Some(matrix),
        }
    }

    /// Stores the frozen base weight in `format` (bf16, NF4: QLoRA) and releases its tape
    /// variable; the forward pass expands it per call. A trainable weight cannot be packed.
    pub fn pack_base(&mut self, format: PackFormat) -> Result<()> {
        let Base::Dense(w) = &self.weight else {
            return Err(Error::invalid(format!("{}: the base weight is already packed", self.path)));
        };
        if w.requires_grad() {
            return Err(Error::invalid(format!(
                "{}: a trainable weight cannot be packed (freeze the base)",
                self.path
            )));
        }
        let matrix = Rc::new(PackedMatrix::from_tensor(w.value(), format)?);
        w.tape().release_leaf(w.id());
        self.weight = Base::Packed(matrix);
        Ok(())
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }

    /// Fills the adapter slot (replacing any adapter already there).
    pub fn set_adapter(&mut self, adapter: Rc<dyn Adapter>) {
        self.adapter = Some(adapter);
    }

    /// The adapter in the slot, if any.
    pub fn adapter(&self) -> Option<&Rc<dyn Adapter>> {
        self.adapter.as_ref()
    }

    /// Every parameter this layer computes with: weight (unless packed), bias, then the
    /// adapter's.
    pub fn params(&self) -> Vec<Var> {
        let mut v: Vec<Var> = self.weight().cloned().into_iter().collect();
        v.extend(self.bias.clone());
        if let Some(a) = &self.adapter {
            v.extend(a.params());
        }
        v
    }

    /// The same layer computing with `params` in place of [`Linear::params`] (same order).
    pub fn rebind(&self, params: &[Var]) -> Result<Linear> {
        let n = self.params().len();
        if params.len() != n {
            return Err(Error::invalid(format!(
                "{}: rebind with {} parameters, the layer has {n}",
                self.path,
                params.len()
            )));
        }
        let dense = usize::from(self.weight().is_some());
        let at = dense + usize::from(self.bias.is_some());
        let adapter = match &self.adapter {
            Some(a) => Some(a.rebind(&params[at..])?),
            None => None,
        };
        let weight = match &self.weight {
            Base::Dense(_) => Base::Dense(params[0].clone()),
            Base::Packed(matrix) => Base::Packed(matrix.clone()),
        };
        Ok(Linear { path: self.path.clone(), weight, bias: self.bias.as_ref().map(|_| params[dense].clone()), adapter })
    }

    /// `x · Wᵀ + b (+ adapter term)` for `x: [..., in]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let (_, inf) = self.dims();
        if x.shape().last() != Some(&inf) {
            return Err(Error::shape(format!("{}: input", self.path), format!("[..., {inf}]"), x.shape()));
        }
        let y = match &self.weight {
            Base::Dense(w) => ops::matmul(x, w, self.bias.as_ref(), false, true)?,
            Base::Packed(matrix) => ops::matmul_packed(x, matrix, self.bias.as_ref())?,
        };
        match &self.adapter {
            Some(a) => a.apply(x, &y),
            None => Ok(y),
        }
    }
}

impl fmt::Debug for Linear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (o, i) = self.dims();
        write!(
            f,
            "Linear({}, in={i}, out={o}, bias={}, adapter={})",
            self.path,
            self.bias.is_some(),
            self.adapter.is_some()
        )
    }
}

/// Rebinds each of `layers` in turn to consecutive runs of `params` (each layer takes as many as
/// its [`Linear::params`] has); a checkpointed segment rebuilds its linears this way.
pub fn rebind_all(layers: &[&Linear], params: &[Var]) -> Result<Vec<Linear>> {
    let mut at = 0;
    let mut out = Vec::with_capacity(layers.len());
    for l in layers {
        let n = l.params().len();
        if at + n > params.len() {
            return Err(Error::invalid(format!("{}: rebind ran out of parameters ({} given)", l.path(), params.len())));
        }
        out.push(l.rebind(&params[at..at + n])?);
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapidary_autograd::{Tape, Trainable};
    use lapidary_core::{DType, Device, Tensor};

    #[test]
    fn wrong_input_width_and_rebind_count_are_clear_errors() {
        let dev = Device::from_env_or_cpu().unwrap();
        let tape = Tape::new();
        let w = tape.param("w", Tensor::from_f32(&dev, &[0.5; 6], &[2, 3], DType::F32).unwrap(), Trainable::No);
        let fc = Linear::new("model.layers.0.mlp.up_proj", w, None);
        let x = tape.input(Tensor::from_f32(&dev, &[1.0; 4], &[2, 2], DType::F32).unwrap());
        let e = fc.forward(&x).unwrap_err().to_string();
        assert!(
            e.contains("model.layers.0.mlp.up_proj: input") && e.contains("[..., 3]") && e.contains("[2, 2]"),
            "{e}"
        );
        let e = fc.rebind(&[]).unwrap_err().to_string();
        assert!(e.contains("rebind with 0 parameters, the layer has 1"), "{e}");
    }
}
