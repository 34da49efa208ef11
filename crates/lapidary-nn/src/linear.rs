//! `Linear`: `y = x · Wᵀ + b` with W in HF's `[out, in]` layout, plus an adapter slot. An adapter
//! adds its own term computed from the same input (LoRA: `s · (x · Aᵀ) · Bᵀ`). Not the adapter
//! itself (see `lapidary-lora`). A frozen base can be packed (bf16, NF4) and is then expanded to
//! f32 for each matmul; a frozen f32/bf16/f16 base on the CPU keeps the matmul's packed panels of
//! itself for the product and for the input's gradient after their first use
//! (`lapidary_autograd::FrozenPanels`), so no step packs it again (a copy of the weight per form).

use crate::Scope;
use crate::layer::{Layer, ParamFn, visited};
use lapidary_autograd::{FrozenPanels, Trainable, Var, ops};
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
    /// Calls `f` on each of the adapter's own parameters under its name within the linear
    /// (PEFT's: `lora_A.weight`) and returns the same adapter computing with what `f` returned (a
    /// checkpointed segment recomputes with its own copies). Fails only where `f` does.
    fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Rc<dyn Adapter>>;
    /// The adapter's own parameters (for optimizers and checkpointed segments).
    fn params(&self) -> Vec<Var> {
        visited(|f| self.map_params(f)).into_iter().map(|(_, v)| v).collect()
    }
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
    panels: FrozenPanels,
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
        Linear { path: path.into(), weight: Base::Dense(weight), bias, adapter: None, panels: FrozenPanels::default() }
    }

    /// Loads `weight` (`[out, in]`) at `scope` (whose path becomes the layer's), with `bias`
    /// already loaded or none. A frozen weight is packed straight from the file when the scope's
    /// weights pack ([`crate::Weights::with_packing`]).
    pub fn load(scope: &Scope<'_>, out: usize, inp: usize, bias: Option<Var>) -> Result<Self> {
        let path = scope.path().to_string();
        if let (Some(format), Trainable::No) = (scope.weights().packing(), scope.trainable()) {
            let values = scope.weights().host_values(&scope.name("weight"), &[out, inp])?;
            let matrix = PackedMatrix::pack(scope.weights().device(), &values, &[out, inp], format)?;
            let weight = Base::Packed(Rc::new(matrix));
            return Ok(Linear { path, weight, bias, adapter: None, panels: FrozenPanels::default() });
        }
        Ok(Linear::new(path, scope.param("weight", &[out, inp])?, bias))
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
        self.panels = FrozenPanels::default();
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

    /// `x · Wᵀ + b (+ adapter term)` for `x: [..., in]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let (_, inf) = self.dims();
        if x.shape().last() != Some(&inf) {
            return Err(Error::shape(format!("{}: input", self.path), format!("[..., {inf}]"), x.shape()));
        }
        let y = match &self.weight {
            Base::Dense(w) => ops::matmul_frozen(x, w, &self.panels, self.bias.as_ref())?,
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

/// Parameters `weight` (unless packed), `bias`, then the adapter's.
impl Layer for Linear {
    fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self> {
        let weight = match &self.weight {
            Base::Dense(w) => Base::Dense(f("weight", w)?),
            Base::Packed(matrix) => Base::Packed(matrix.clone()),
        };
        let bias = self.bias.as_ref().map(|b| f("bias", b)).transpose()?;
        let adapter = self.adapter.as_ref().map(|a| a.map_params(f)).transpose()?;
        Ok(Linear { path: self.path.clone(), weight, bias, adapter, panels: self.panels.clone() })
    }
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
        let e = fc.rebind(&Default::default()).unwrap_err().to_string();
        assert!(e.contains("no variable given for weight"), "{e}");
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(0x85eb_ca6b)) >> 20) as f32 / 2048.0 - 1.0
            })
            .collect()
    }

    /// `x · Wᵀ + b` on the host.
    fn host_linear(x: &[f32], w: &[f32], b: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let dot: f32 = (0..inp).map(|i| x[r * inp + i] * w[o * inp + i]).sum();
                y[r * out + o] = dot + b[o];
            }
        }
        y
    }

    #[test]
    fn frozen_panels_are_reused_only_for_the_tensor_they_were_made_from() {
        let dev = Device::from_env_or_cpu().unwrap();
        let (rows, inp, out) = (40, 24, 20);
        let tape = Tape::new();
        let (wv, w2v, bv, xv) = (values(out * inp, 1), values(out * inp, 2), values(out, 3), values(rows * inp, 4));
        let w = tape.param("w", Tensor::from_f32(&dev, &wv, &[out, inp], DType::F32).unwrap(), Trainable::No);
        let b = tape.param("b", Tensor::from_f32(&dev, &bv, &[out], DType::F32).unwrap(), Trainable::Yes);
        let fc = Linear::new("fc", w, Some(b));
        let x = tape.param("x", Tensor::from_f32(&dev, &xv, &[rows, inp], DType::F32).unwrap(), Trainable::Yes);
        let close = |got: Vec<f32>, want: Vec<f32>| {
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "element {i}: {g} vs {w}");
            }
        };
        let want = host_linear(&xv, &wv, &bv, rows, inp, out);
        // First and second use: the same result; the panels were made once, on the CPU.
        close(fc.forward(&x).unwrap().value().to_f32_vec().unwrap(), want.clone());
        close(fc.forward(&x).unwrap().value().to_f32_vec().unwrap(), want.clone());
        assert_eq!(fc.panels.held(), (dev.is_cpu(), false));
        // A clone rebound to another weight computes with that weight, not the cached panels.
        let w2 = tape.param("w2", Tensor::from_f32(&dev, &w2v, &[out, inp], DType::F32).unwrap(), Trainable::No);
        let b_again = fc.bias().unwrap().clone();
        let by_name = [("weight".to_string(), w2), ("bias".to_string(), b_again)].into_iter().collect();
        let rebound = fc.rebind(&by_name).unwrap();
        close(rebound.forward(&x).unwrap().value().to_f32_vec().unwrap(), host_linear(&xv, &w2v, &bv, rows, inp, out));
        // ... and the original still with its own.
        close(fc.forward(&x).unwrap().value().to_f32_vec().unwrap(), want);
        // A trainable weight is multiplied as it is, and gets its gradient; the bias gets its
        // gradient through the prepared product (the sum over rows of the upstream ones).
        let wt = tape.param("wt", Tensor::from_f32(&dev, &wv, &[out, inp], DType::F32).unwrap(), Trainable::Yes);
        let trained = Linear::new("trained", wt.clone(), None);
        let y = trained.forward(&x).unwrap();
        assert_eq!(trained.panels.held(), (false, false));
        let loss = ops::add(&ops::sum_all(&y).unwrap(), &ops::sum_all(&fc.forward(&x).unwrap()).unwrap()).unwrap();
        let (grads, _) = tape.backward(&loss).unwrap();
        assert!(grads.get(&wt).is_some());
        let db = grads.get(fc.bias().unwrap()).unwrap().to_f32_vec().unwrap();
        close(db, vec![rows as f32; out]);
        // The input's gradient: through the trained weight and through the frozen one's panels
        // for `dy · W` (made by this backward), `dx[r, i] = 2 · Σ_o W[o, i]` for `dy = 1`.
        assert_eq!(fc.panels.held(), (dev.is_cpu(), dev.is_cpu()));
        let col_sums: Vec<f32> = (0..inp).map(|i| 2.0 * (0..out).map(|o| wv[o * inp + i]).sum::<f32>()).collect();
        let want_dx: Vec<f32> = (0..rows).flat_map(|_| col_sums.iter().copied()).collect();
        close(grads.get(&x).unwrap().to_f32_vec().unwrap(), want_dx);
    }
}
