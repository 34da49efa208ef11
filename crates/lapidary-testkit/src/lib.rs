//! lapidary-testkit: helpers for lapidary's tests (a dev-dependency only). Seeded random values,
//! per-dtype tolerances and a closeness assertion that reports the worst element.
//! Not a test framework: tests stay plain `#[test]` / proptest.
//!
//! ```
//! use lapidary_testkit::{assert_close, random_values, Tol};
//! let a = random_values(5, 7, 1.0);
//! assert_eq!(a, random_values(5, 7, 1.0));
//! assert_close("same", &a, &a, Tol::F32);
//! ```

use lapidary_core::DType;

/// Tolerance: `|got - want| <= abs + rel * |want|` for every element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    /// Absolute floor.
    pub abs: f64,
    /// Relative part.
    pub rel: f64,
}

impl Tol {
    /// f32 storage and arithmetic.
    pub const F32: Tol = Tol { abs: 1e-5, rel: 1e-4 };
    /// bf16 storage (8 mantissa bits), f32 arithmetic.
    pub const BF16: Tol = Tol { abs: 1e-2, rel: 1e-2 };
    /// f16 storage (11 mantissa bits), f32 arithmetic.
    pub const F16: Tol = Tol { abs: 2e-3, rel: 2e-3 };

    /// The same tolerance scaled by `k` (for results that sum many terms).
    pub fn scaled(self, k: f64) -> Tol {
        Tol { abs: self.abs * k, rel: self.rel * k }
    }
}

/// The tolerance that goes with a storage dtype.
pub trait TolExt {
    /// Tolerance for a result stored in this dtype.
    fn tol(self) -> Tol;
}

impl TolExt for DType {
    fn tol(self) -> Tol {
        match self {
            DType::F32 => Tol::F32,
            DType::BF16 => Tol::BF16,
            DType::F16 => Tol::F16,
        }
    }
}

/// Panics, naming `what`, the worst element and its values, unless every element of `got` is
/// within `tol` of `want` (NaN never is).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: Tol) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w as f64).abs();
        let allowed = tol.abs + tol.rel * (w as f64).abs();
        let excess = if err.is_nan() || !g.is_finite() && g != w { f64::INFINITY } else { err / allowed };
        if excess > 1.0 && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i} is {} but expected {} (|diff| {:e}, tolerance abs {:e} + rel {:e})",
            got[i],
            want[i],
            (got[i] - want[i]).abs(),
            tol.abs,
            tol.rel
        );
    }
}

/// Largest relative error `|g - w| / max(|w|, floor)` over all elements.
pub fn max_rel_error(got: &[f32], want: &[f32], floor: f64) -> f64 {
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).abs() / (w as f64).abs().max(floor)).fold(0.0, f64::max)
}

/// `n` seeded pseudo-random values uniform in [-scale, scale) (same seed, same values).
pub fn random_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    lapidary_core::rng::SplitMix64::new(seed).uniform(n, scale)
}
