//! A small seeded pseudo-random generator (splitmix64): the same seed gives the same numbers on
//! every machine, for weight initialization, dropout masks, data shuffling and tests. Not
//! cryptographic, and not a distribution library.

/// splitmix64: 64 bits of state, one multiply-xorshift mix per draw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed ^ 0x853c_49e6_748f_ea9b }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with 24 bits (every value exact in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `n` values uniform in [-scale, scale).
    pub fn uniform(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (self.next_f32() * 2.0 - 1.0) * scale).collect()
    }

    /// The state, to save in a checkpoint.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// A generator resumed from a saved [`SplitMix64::state`].
    pub fn from_state(state: u64) -> Self {
        SplitMix64 { state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_uniform_in_range_and_resumable() {
        let mut a = SplitMix64::new(42);
        let v = a.uniform(1000, 2.0);
        assert_eq!(v, SplitMix64::new(42).uniform(1000, 2.0));
        assert!(v.iter().all(|x| (-2.0..2.0).contains(x)));
        let mean: f32 = v.iter().sum::<f32>() / 1000.0;
        assert!(mean.abs() < 0.2, "{mean}");
        let mut b = SplitMix64::from_state(a.state());
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }
}
