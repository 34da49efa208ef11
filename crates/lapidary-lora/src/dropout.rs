//! LoRA dropout (PEFT's `lora_dropout`): the adapter's input is multiplied by a keep-mask scaled
//! by `1 / (1 - p)` before `A`, in training only. Masks are drawn from a seed the trainer sets per
//! micro-batch ([`LoraDropout::set_seed`]) mixed with the adapter's path, so a checkpointed
//! segment recomputes the same mask, and a resumed run draws the same masks as an uninterrupted
//! one. Not a general dropout layer.

use lapidary_autograd::{Var, ops};
use lapidary_core::rng::SplitMix64;
use lapidary_core::{Result, Tensor};
use std::cell::Cell;
use std::rc::Rc;

/// Dropout shared by every adapter of a model.
#[derive(Debug)]
pub struct LoraDropout {
    p: f32,
    seed: Cell<u64>,
    enabled: Cell<bool>,
}

impl LoraDropout {
    /// Dropout with probability `p` (in [0, 1)).
    pub fn new(p: f32) -> Rc<Self> {
        Rc::new(LoraDropout { p: p.clamp(0.0, 0.99), seed: Cell::new(0), enabled: Cell::new(true) })
    }

    /// The probability.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// The seed of the next masks (set once per micro-batch).
    pub fn set_seed(&self, seed: u64) {
        self.seed.set(seed);
    }

    /// Turns dropout on (training) or off (evaluation, generation).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.set(on);
    }

    /// `x` with dropout applied, for the adapter whose path hashes to `salt`. Identity when off,
    /// when `p` is 0, or when nothing is recorded (no-grad evaluation).
    pub fn apply(&self, x: &Var, salt: u64) -> Result<Var> {
        if self.p == 0.0 || !self.enabled.get() || !x.tape().is_recording() {
            return Ok(x.clone());
        }
        let mut rng = SplitMix64::new(self.seed.get() ^ salt.rotate_left(17));
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..x.value().numel()).map(|_| if rng.next_f32() < self.p { 0.0 } else { keep }).collect();
        let m = x.tape().input(Tensor::from_f32(x.value().device(), &mask, x.shape(), x.value().dtype())?);
        ops::mul(x, &m)
    }
}

impl PartialEq for LoraDropout {
    /// Same probability (the seed and switch are run state).
    fn eq(&self, other: &Self) -> bool {
        self.p == other.p
    }
}

/// A stable 64-bit hash of an adapter path (FNV-1a).
pub fn path_salt(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
