//! [`Scope`]: weight names built level by level. A model loads its parameters through a scope
//! that carries the weights, the tape, the trainability and the path so far; each level adds a
//! segment (`scope.at("encoder").at("layers").at(3)`), so a layer names only its own tensors
//! (`layer_norm1.weight`) and never formats a whole key. Not the loading itself (see
//! [`Weights`]) nor the layers.

use crate::{Linear, Weights};
use lapidary_autograd::{Tape, Trainable, Var};
use lapidary_core::{Result, Tensor};
use std::fmt::Display;

/// Where in a checkpoint's name tree a model part loads from, and how.
#[derive(Clone)]
pub struct Scope<'a> {
    weights: &'a Weights,
    tape: &'a Tape,
    path: String,
    trainable: Trainable,
}

impl<'a> Scope<'a> {
    /// The root of `weights`' names; parameters are registered on `tape` as `trainable`.
    pub fn new(weights: &'a Weights, tape: &'a Tape, trainable: Trainable) -> Self {
        Scope { weights, tape, path: String::new(), trainable }
    }

    /// The scope one level down: `segment` appended to the path (`layers` then `0` gives
    /// `layers.0`).
    pub fn at(&self, segment: impl Display) -> Scope<'a> {
        Scope { path: self.name(&segment.to_string()), ..self.clone() }
    }

    /// The same scope with its parameters registered as `trainable` (e.g. one part of a model
    /// trained, the rest frozen).
    pub fn with_trainable(&self, trainable: Trainable) -> Scope<'a> {
        Scope { trainable, ..self.clone() }
    }

    /// The path so far (`vision_tower.encoder.layers.0`; empty at the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether parameters loaded here are trainable.
    pub fn trainable(&self) -> Trainable {
        self.trainable
    }

    /// The full name of `leaf` here.
    pub fn name(&self, leaf: &str) -> String {
        if self.path.is_empty() { leaf.to_string() } else { format!("{}.{leaf}", self.path) }
    }

    /// The weights loaded from.
    pub fn weights(&self) -> &'a Weights {
        self.weights
    }

    /// The tape parameters are registered on.
    pub fn tape(&self) -> &'a Tape {
        self.tape
    }

    /// Loads tensor `leaf` here, which must have `shape`, without registering it.
    pub fn tensor(&self, leaf: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights.tensor(&self.name(leaf), shape)
    }

    /// Loads `leaf` here (which must have `shape`) as a parameter under its full name.
    pub fn param(&self, leaf: &str, shape: &[usize]) -> Result<Var> {
        self.weights.param(self.tape, &self.name(leaf), shape, self.trainable)
    }

    /// The linear layer `name` here without a bias: `name.weight`, `[out, inp]`.
    pub fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Linear::load(&self.at(name), out, inp, None)
    }

    /// The linear layer `name` here with its bias: `name.weight` `[out, inp]`, `name.bias` `[out]`.
    pub fn linear_with_bias(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let at = self.at(name);
        let bias = at.param("bias", &[out])?;
        Linear::load(&at, out, inp, Some(bias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapidary_core::{DType, Device};

    #[test]
    fn segments_join_into_checkpoint_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let f32_entry = |name: &str, shape: &[usize], v: &[f32]| {
            (name.to_string(), lapidary_io::safetensors::Dtype::F32, shape.to_vec(), DType::F32.encode(v))
        };
        lapidary_io::safetensors::save(
            &file,
            &[
                f32_entry("enc.layers.1.fc.weight", &[3, 2], &values),
                f32_entry("enc.layers.1.fc.bias", &[3], &[0.5, -1.0, 2.0]),
            ],
        )
        .unwrap();
        let dev = Device::cpu().unwrap();
        let w = Weights::open(&file, &dev, DType::F32).unwrap();
        let tape = Tape::new();
        let layer = Scope::new(&w, &tape, Trainable::No).at("enc").at("layers").at(1);
        assert_eq!(layer.path(), "enc.layers.1");
        let fc = layer.linear_with_bias("fc", 3, 2).unwrap();
        assert_eq!(fc.path(), "enc.layers.1.fc");
        assert_eq!(fc.weight().unwrap().value().to_f32_vec().unwrap(), values);
        assert_eq!(fc.bias().unwrap().value().to_f32_vec().unwrap(), vec![0.5, -1.0, 2.0]);
        let e = layer.linear("fc", 2, 3).unwrap_err().to_string();
        assert!(e.contains("enc.layers.1.fc.weight has shape [3, 2], expected [2, 3]"), "{e}");
        let e = layer.at("mlp").param("up.weight", &[2]).unwrap_err().to_string();
        assert!(e.contains("missing tensor enc.layers.1.mlp.up.weight"), "{e}");
        w.finish(&[]).unwrap();
    }
}
