//! The one layer abstraction: a [`Layer`] walks its own parameters (adapters included) and can
//! be rebuilt computing with other copies of them, which is all gradient checkpointing needs;
//! [`checkpointed`] is the one place a layer runs as a recomputed segment. Adding a layer type
//! means implementing [`Layer`] once. Not the layers' forward passes (their signatures differ).

use crate::linear::{Linear, rebind_all};
use lapidary_autograd::{Var, checkpoint};
use lapidary_core::{Error, Result};

/// A layer that walks its own parameters.
pub trait Layer: Clone + 'static {
    /// Every parameter the layer computes with, adapters included, in a fixed order.
    fn params(&self) -> Vec<Var>;

    /// The same layer computing with `params` (in [`Layer::params`]'s order) in place of its own.
    fn rebind(&self, params: &[Var]) -> Result<Self>;
}

impl Layer for Linear {
    fn params(&self) -> Vec<Var> {
        Linear::params(self)
    }

    fn rebind(&self, params: &[Var]) -> Result<Self> {
        Linear::rebind(self, params)
    }
}

/// Plain parameters (norm weights, biases) followed by linears: the shape of most transformer
/// layers, rebound in that order. A layer type can keep its fields in one of these or implement
/// [`Layer`] itself.
#[derive(Clone, Debug)]
pub struct ParamsAndLinears<const P: usize, const L: usize> {
    /// The plain parameters.
    pub params: [Var; P],
    /// The linears.
    pub linears: [Linear; L],
}

impl<const P: usize, const L: usize> Layer for ParamsAndLinears<P, L> {
    fn params(&self) -> Vec<Var> {
        let mut v = self.params.to_vec();
        self.linears.iter().for_each(|l| v.extend(l.params()));
        v
    }

    fn rebind(&self, ps: &[Var]) -> Result<Self> {
        if ps.len() < P {
            return Err(Error::invalid(format!(
                "rebind: {} parameters given, the layer has {P} before its linears",
                ps.len()
            )));
        }
        let params: [Var; P] = std::array::from_fn(|i| ps[i].clone());
        let linears: [Linear; L] = rebind_all(&self.linears.iter().collect::<Vec<_>>(), &ps[P..])?
            .try_into()
            .map_err(|_| Error::invalid(format!("rebind: expected {L} linears")))?;
        Ok(ParamsAndLinears { params, linears })
    }
}

/// `forward(layer, x)`; with `checkpointing`, as a segment whose activations are recomputed during
/// backward, the layer's parameters passed to it explicitly so that their gradients (adapters,
/// trained weights) reach the outer tape exactly as without checkpointing.
pub fn checkpointed<L, F>(layer: &L, x: &Var, checkpointing: bool, forward: F) -> Result<Var>
where
    L: Layer,
    F: Fn(&L, &Var) -> Result<Var> + 'static,
{
    if !checkpointing {
        return forward(layer, x);
    }
    let params = layer.params();
    let refs: Vec<&Var> = params.iter().collect();
    let own = layer.clone();
    Ok(checkpoint(&[x], &refs, move |_, ins, ps| Ok(vec![forward(&own.rebind(ps)?, &ins[0])?]))?.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapidary_autograd::{Tape, Trainable, ops};
    use lapidary_core::rng::SplitMix64;
    use lapidary_core::{DType, Device, Tensor};

    /// A two-linear block with a layer norm, run with and without checkpointing: same output,
    /// and the same gradient for every parameter and for the input, bit for bit.
    #[test]
    fn checkpointing_gives_the_same_values_and_gradients() {
        let dev = Device::cpu().unwrap();
        let run = |checkpointing: bool| {
            let tape = Tape::new();
            let mut rng = SplitMix64::new(11);
            let mut t = |shape: &[usize]| {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
                Tensor::from_f32(&dev, &v, shape, DType::F32).unwrap()
            };
            let x = tape.param("x", t(&[2, 3, 8]), Trainable::Yes);
            let ln = [tape.param("ln.w", t(&[8]), Trainable::Yes), tape.param("ln.b", t(&[8]), Trainable::Yes)];
            let fc1 = Linear::new("fc1", tape.param("fc1.w", t(&[16, 8]), Trainable::Yes), None);
            let fc2 = Linear::new(
                "fc2",
                tape.param("fc2.w", t(&[8, 16]), Trainable::No),
                Some(tape.param("fc2.b", t(&[8]), Trainable::Yes)),
            );
            let layer = ParamsAndLinears { params: ln, linears: [fc1, fc2] };
            let y = checkpointed(&layer, &x, checkpointing, |l, x| {
                let h = ops::layer_norm(x, &l.params[0], &l.params[1], 1e-6)?;
                let h = ops::gelu_tanh(&l.linears[0].forward(&h)?)?;
                ops::add(x, &l.linears[1].forward(&h)?)
            })
            .unwrap();
            let loss = ops::sum_all(&ops::mul(&y, &y).unwrap()).unwrap();
            let (grads, _) = tape.backward(&loss).unwrap();
            let mut out = vec![("y".to_string(), y.value().to_f32_vec().unwrap())];
            for (name, g) in grads.named() {
                out.push((name.to_string(), g.to_f32_vec().unwrap()));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        };
        let (plain, ckpt) = (run(false), run(true));
        let names: Vec<&str> = plain.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fc1.w", "fc2.b", "ln.b", "ln.w", "x", "y"]);
        assert_eq!(plain, ckpt);
    }

    #[test]
    fn rebinding_with_too_few_parameters_is_an_error() {
        let dev = Device::cpu().unwrap();
        let tape = Tape::new();
        let w = tape.param("w", Tensor::from_f32(&dev, &[1.0; 4], &[2, 2], DType::F32).unwrap(), Trainable::Yes);
        let layer = ParamsAndLinears { params: [w.clone()], linears: [Linear::new("fc", w.clone(), None)] };
        assert!(layer.rebind(&[]).is_err());
        assert!(layer.rebind(&[w.clone()]).is_err());
        assert_eq!(layer.rebind(&[w.clone(), w]).unwrap().params().len(), 2);
    }
}
