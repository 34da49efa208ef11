//! The one layer abstraction: a [`Layer`] walks its own parameters (adapters included) under
//! their names within the layer, and can be rebuilt computing with other variables found by those
//! names, which is all gradient checkpointing needs; [`checkpointed`] is the one place a layer
//! runs as a recomputed segment ([`checkpointed_many`] for several inputs and outputs). Adding a layer type means writing [`Layer::map_params`] once.
//! Not the layers' forward passes (their signatures differ).

use lapidary_autograd::{Var, checkpoint};
use lapidary_core::{Error, Result};
use std::collections::BTreeMap;

/// What a parameter walk calls for each parameter: its name within the layer and its variable;
/// it returns the variable the rebuilt layer computes with.
pub type ParamFn<'a> = dyn FnMut(&str, &Var) -> Result<Var> + 'a;

/// A layer that walks its own parameters by name.
pub trait Layer: Clone + 'static {
    /// Calls `f` on every parameter the layer computes with, adapters included, under its name
    /// within the layer (HF's: `self_attn.q_proj.weight`, `self_attn.q_proj.lora_A.weight`), and
    /// returns the same layer computing with what `f` returned for each. Fails only where `f`
    /// does.
    fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self>;

    /// Every parameter with its name within the layer, in the walk's order.
    fn params(&self) -> Vec<(String, Var)> {
        visited(|f| self.map_params(f))
    }

    /// The same layer computing with `by_name[name]` in place of each of its parameters; an
    /// error names the first parameter `by_name` lacks.
    fn rebind(&self, by_name: &BTreeMap<String, Var>) -> Result<Self> {
        self.map_params(&mut |name, _| {
            by_name.get(name).cloned().ok_or_else(|| Error::invalid(format!("rebind: no variable given for {name}")))
        })
    }
}

/// Every parameter `walk` visits, with its name, in order; the walk is given a function that
/// returns each variable unchanged (so it cannot fail). [`Layer::params`] and
/// [`crate::Adapter::params`] are this over their `map_params`.
pub(crate) fn visited<T>(walk: impl FnOnce(&mut ParamFn<'_>) -> Result<T>) -> Vec<(String, Var)> {
    let mut out = Vec::new();
    walk(&mut |name, v| {
        out.push((name.to_string(), v.clone()));
        Ok(v.clone())
    })
    .expect("a walk that returns each variable unchanged cannot fail");
    out
}

/// `layer.map_params` with each name prefixed by `prefix.`: a layer walking one of its
/// sub-layers (`map_within("self_attn.q_proj", &self.q_proj, f)`).
pub fn map_within<L: Layer>(prefix: &str, layer: &L, f: &mut ParamFn<'_>) -> Result<L> {
    layer.map_params(&mut |name, v| f(&format!("{prefix}.{name}"), v))
}

/// Whether layers keep their activations for backward or recompute them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checkpointing {
    /// Every layer keeps the activations its backward reads (the fastest, the most memory).
    #[default]
    Off,
    /// Each layer runs as a recomputed segment: only its input is kept, its activations are
    /// computed again during backward (gradients bit-identical to [`Checkpointing::Off`]).
    EachLayer,
}

impl Checkpointing {
    /// [`Checkpointing::EachLayer`] when `on`, else [`Checkpointing::Off`].
    pub fn each_layer_if(on: bool) -> Self {
        if on { Checkpointing::EachLayer } else { Checkpointing::Off }
    }
}

/// `forward(layer, x)`; with [`Checkpointing::EachLayer`], as a segment whose activations are recomputed during
/// backward, the layer's parameters passed to it explicitly (and found again by name inside) so
/// that their gradients (adapters, trained weights) reach the outer tape exactly as without
/// checkpointing.
pub fn checkpointed<L, F>(layer: &L, x: &Var, checkpointing: Checkpointing, forward: F) -> Result<Var>
where
    L: Layer,
    F: Fn(&L, &Var) -> Result<Var> + 'static,
{
    let outs = checkpointed_many(layer, &[x], checkpointing, move |l, ins| Ok(vec![forward(l, &ins[0])?]))?;
    Ok(outs.into_iter().next().expect("one output"))
}

/// [`checkpointed`] for a layer with several activation inputs and outputs (a layer that hands
/// its keys and values on to later layers, or takes them from an earlier one): gradients reach
/// every input that needs one, through every output that receives one.
pub fn checkpointed_many<L, F>(layer: &L, xs: &[&Var], checkpointing: Checkpointing, forward: F) -> Result<Vec<Var>>
where
    L: Layer,
    F: Fn(&L, &[Var]) -> Result<Vec<Var>> + 'static,
{
    if checkpointing == Checkpointing::Off {
        let owned: Vec<Var> = xs.iter().map(|&x| x.clone()).collect();
        return forward(layer, &owned);
    }
    let (names, params): (Vec<String>, Vec<Var>) = layer.params().into_iter().unzip();
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(Error::invalid(format!("checkpointed layer: two parameters named {twice}")));
    }
    let refs: Vec<&Var> = params.iter().collect();
    let own = layer.clone();
    let segment = move |_: &lapidary_autograd::Tape, ins: &[Var], ps: &[Var]| {
        let by_name: BTreeMap<String, Var> = names.iter().cloned().zip(ps.iter().cloned()).collect();
        forward(&own.rebind(&by_name)?, ins)
    };
    checkpoint(xs, &refs, segment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Linear;
    use lapidary_autograd::{Tape, Trainable, ops};
    use lapidary_core::rng::SplitMix64;
    use lapidary_core::{DType, Device, Tensor};

    /// A layer norm and two linears, written as a model crate writes a layer.
    #[derive(Clone)]
    struct Block {
        ln: (Var, Var),
        fc1: Linear,
        fc2: Linear,
    }

    impl Layer for Block {
        fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self> {
            Ok(Block {
                ln: (f("ln.weight", &self.ln.0)?, f("ln.bias", &self.ln.1)?),
                fc1: map_within("fc1", &self.fc1, f)?,
                fc2: map_within("fc2", &self.fc2, f)?,
            })
        }
    }

    fn block(tape: &Tape, seed: u64) -> Block {
        block_named(tape, seed, "")
    }

    /// [`block`] with its tape names prefixed by `prefix`.
    fn block_named(tape: &Tape, seed: u64, prefix: &str) -> Block {
        let dev = Device::cpu().unwrap();
        let mut rng = SplitMix64::new(seed);
        let mut t = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            Tensor::from_f32(&dev, &v, shape, DType::F32).unwrap()
        };
        let n = |name: &str| format!("{prefix}{name}");
        Block {
            ln: (tape.param(n("ln.w"), t(&[8]), Trainable::Yes), tape.param(n("ln.b"), t(&[8]), Trainable::Yes)),
            fc1: Linear::new("fc1", tape.param(n("fc1.w"), t(&[16, 8]), Trainable::Yes), None),
            fc2: Linear::new(
                "fc2",
                tape.param(n("fc2.w"), t(&[8, 16]), Trainable::No),
                Some(tape.param(n("fc2.b"), t(&[8]), Trainable::Yes)),
            ),
        }
    }

    /// The block run with and without checkpointing: same output, and the same gradient for
    /// every parameter and for the input, bit for bit.
    #[test]
    fn checkpointing_gives_the_same_values_and_gradients() {
        let run = |checkpointing: Checkpointing| {
            let tape = Tape::new();
            let layer = block(&tape, 11);
            let x = {
                let mut rng = SplitMix64::new(3);
                let v: Vec<f32> = (0..48).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
                tape.param(
                    "x",
                    Tensor::from_f32(&Device::cpu().unwrap(), &v, &[2, 3, 8], DType::F32).unwrap(),
                    Trainable::Yes,
                )
            };
            let y = checkpointed(&layer, &x, checkpointing, |l, x| {
                let h = ops::layer_norm(x, &l.ln.0, &l.ln.1, 1e-6)?;
                let h = ops::gelu_tanh(&l.fc1.forward(&h)?)?;
                ops::add(x, &l.fc2.forward(&h)?)
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
        let (plain, ckpt) = (run(Checkpointing::Off), run(Checkpointing::EachLayer));
        let names: Vec<&str> = plain.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fc1.w", "fc2.b", "ln.b", "ln.w", "x", "y"]);
        assert_eq!(plain, ckpt);
    }

    /// Two blocks where the first hands a side output to the second (as a layer storing its
    /// keys and values for a later one): checkpointed or not, the same values and gradients, and
    /// the first block's parameters receive the gradient that comes back through the side output.
    #[test]
    fn side_outputs_carry_gradients_between_checkpointed_layers() {
        let run = |checkpointing: Checkpointing, use_side: bool| {
            let tape = Tape::new();
            let (first, second) = (block_named(&tape, 21, "first."), block_named(&tape, 22, "second."));
            let v: Vec<f32> = (0..48).map(|i| ((i * 37 % 23) as f32 / 11.0) - 1.0).collect();
            let x = tape.input(Tensor::from_f32(&Device::cpu().unwrap(), &v, &[2, 3, 8], DType::F32).unwrap());
            let outs = checkpointed_many(&first, &[&x], checkpointing, |l, ins| {
                let side = ops::layer_norm(&ins[0], &l.ln.0, &l.ln.1, 1e-6)?;
                Ok(vec![ops::add(&ins[0], &l.fc2.forward(&ops::gelu_tanh(&l.fc1.forward(&side)?)?)?)?, side])
            })
            .unwrap();
            let ins: Vec<&Var> = if use_side { vec![&outs[0], &outs[1]] } else { vec![&outs[0], &x] };
            let y = checkpointed_many(&second, &ins, checkpointing, |l, ins| {
                let h = ops::layer_norm(&ins[0], &l.ln.0, &l.ln.1, 1e-6)?;
                Ok(vec![ops::mul(&l.fc2.forward(&ops::gelu_tanh(&l.fc1.forward(&h)?)?)?, &ins[1])?])
            })
            .unwrap()
            .remove(0);
            let (grads, _) = tape.backward(&ops::sum_all(&y).unwrap()).unwrap();
            let mut out: Vec<(String, Vec<f32>)> =
                grads.named().into_iter().map(|(n, g)| (n.to_string(), g.to_f32_vec().unwrap())).collect();
            out.push(("y".into(), y.value().to_f32_vec().unwrap()));
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        };
        let plain = run(Checkpointing::Off, true);
        assert_eq!(plain, run(Checkpointing::EachLayer, true));
        // Without the side path the first block's norm gets another gradient: the path counts.
        let ln = |r: &[(String, Vec<f32>)]| r.iter().find(|(n, _)| n == "first.ln.w").map(|(_, g)| g.clone());
        assert!(ln(&plain).is_some());
        assert_ne!(ln(&plain), ln(&run(Checkpointing::EachLayer, false)));
    }

    #[test]
    fn parameters_are_named_within_the_layer_and_rebound_by_name() {
        let tape = Tape::new();
        let layer = block(&tape, 5);
        let names: Vec<String> = layer.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["ln.weight", "ln.bias", "fc1.weight", "fc2.weight", "fc2.bias"]);
        // Rebinding swaps by name, whatever the order of the map.
        let other = block(&tape, 6);
        let by_name: BTreeMap<String, Var> = other.params().into_iter().collect();
        let rebound = layer.rebind(&by_name).unwrap();
        for ((n, a), (_, b)) in rebound.params().iter().zip(other.params()) {
            assert_eq!(a.id(), b.id(), "{n}");
        }
        let mut missing = by_name.clone();
        missing.remove("fc2.bias");
        let e = layer.rebind(&missing).err().expect("a missing name is an error").to_string();
        assert!(e.contains("no variable given for fc2.bias"), "{e}");
    }

    #[test]
    fn two_parameters_with_one_name_cannot_be_checkpointed() {
        #[derive(Clone)]
        struct Twice(Var);
        impl Layer for Twice {
            fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self> {
                f("w", &self.0)?;
                Ok(Twice(f("w", &self.0)?))
            }
        }
        let tape = Tape::new();
        let w = tape.param(
            "w",
            Tensor::from_f32(&Device::cpu().unwrap(), &[1.0; 4], &[4], DType::F32).unwrap(),
            Trainable::Yes,
        );
        let e = checkpointed(&Twice(w.clone()), &w, Checkpointing::EachLayer, |l, x| ops::mul(&l.0, x))
            .unwrap_err()
            .to_string();
        assert!(e.contains("two parameters named w"), "{e}");
    }
}
