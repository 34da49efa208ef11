//! Helpers for this crate's kernel tests: the test device (with output poisoning on), seeded
//! random tensors, shape strategies, dtype tolerances and a closeness assertion.

use lapidary_core::{DType, Device, Tensor};
use proptest::prelude::*;

pub use lapidary_testkit::{TolExt, assert_close, random_values};

/// The test device (`LAPIDARY_DEVICE`, else the CPU) with output poisoning on, so unwritten
/// outputs are NaN.
pub fn device() -> Device {
    lapidary_core::set_poison_outputs(true);
    Device::from_env_or_cpu().expect("the test device (LAPIDARY_DEVICE, else the CPU)")
}

/// A tensor of seeded uniform values in [-scale, scale), stored as `dt`.
pub fn random_tensor(dev: &Device, shape: &[usize], dt: DType, seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(dev, &random_values(n, seed, scale), shape, dt).unwrap()
}

/// Shapes of 1..=`max_rank` dims, each 1..=`max_dim` (mostly odd sizes, not tile multiples).
pub fn shape_strategy(max_rank: usize, max_dim: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1..=max_dim, 1..=max_rank)
}

/// Any storage dtype.
pub fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::BF16), Just(DType::F16)]
}

/// A proptest config of `n` cases, or fewer when `LAPIDARY_PROPTEST_CASES` sets a smaller number
/// (`cargo xtask cpu-check` does under emulation, where each case costs a hundred times more;
/// every test still runs, on fewer random inputs).
pub fn cases(n: u32) -> ProptestConfig {
    let cap = std::env::var("LAPIDARY_PROPTEST_CASES").ok().and_then(|v| v.parse::<u32>().ok());
    ProptestConfig::with_cases(cap.map_or(n, |c| n.min(c.max(1))))
}
