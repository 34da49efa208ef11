//! How the CPU register matmul ([`super::matmul`]) walks K, chosen from the running CPU rather
//! than from a constant: its vector width (a tile's panel of B is two registers wide) and its
//! per-core L2 size (`lapidary_core::cpu`). Every tile takes one block of K before any tile
//! takes the next, so one super-block's rows of A (64) and panels of B (8) over a block are
//! sized to fill at most three quarters of L2 (the rest left to C's tiles and the streams), and
//! each is read from beyond L2 once per super-block instead of once per tile. Longer blocks
//! than that cost L2 misses; shorter ones cost C's reloads between blocks (C is swept once per
//! block), which is why the block is not sized for L1d as well: a tile's panel of B re-read
//! from L2 costs less than the extra sweeps of C (measured on a 48 KiB L1d / 2 MiB L2 CPU:
//! blocks of 192 were up to 15% slower than one block of 2,048; blocks sized to its L2 as fast
//! or faster).
//!
//! f32 products only: their partial sums wait in C between blocks exactly (every element is
//! still summed in K's order, so the result is the same for any block). A 16-bit C takes K in
//! one block, so it is rounded once. Pure arithmetic; the kernel is in `kernel.rs`.

use lapidary_core::cpu::{self, CacheSource, CpuCaches};
use lapidary_core::{DType, launch};
use std::fmt;

/// Rows of C in one register tile.
pub(super) const TILE_ROWS: usize = 8;
/// Vectors of C along N in one register tile.
pub(super) const TILE_VECTORS: usize = 2;
/// A super-block in tiles: `SUPER_ROWS` tiles down, `SUPER_COLS` across.
pub(super) const SUPER_ROWS: usize = 8;
pub(super) const SUPER_COLS: usize = 8;
/// Bounds of a block of K: below, C's reloads between blocks would cost more than the cache
/// saves; above, no cache of the CPUs in use holds the block anyway.
const MIN_K_BLOCK: usize = 64;
const MAX_K_BLOCK: usize = 2048;

/// The matmul's blocking for one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuBlocking {
    /// f32 lanes of one vector register.
    pub lanes: usize,
    /// The caches the block is sized for.
    pub caches: CpuCaches,
    /// The longest block of K every tile takes before the next (f32 products).
    pub k_block: usize,
}

impl CpuBlocking {
    /// The blocking for a CPU with `lanes` f32 lanes per register and these caches.
    pub fn for_cpu(lanes: usize, caches: CpuCaches) -> Self {
        // Bytes one step of K adds to a super-block: its rows of A and its panels of B, in f32.
        let super_step = (SUPER_ROWS * TILE_ROWS + SUPER_COLS * TILE_VECTORS * lanes) * 4;
        let fits = caches.l2 / 4 * 3 / super_step;
        let k_block = (fits / 16 * 16).clamp(MIN_K_BLOCK, MAX_K_BLOCK);
        CpuBlocking { lanes, caches, k_block }
    }

    /// The running CPU's blocking (its register width and [`lapidary_core::cpu::caches`]).
    pub fn current() -> (Self, CacheSource) {
        let (caches, source) = cpu::caches();
        (Self::for_cpu(launch::cpu_register_lanes(), caches), source)
    }

    /// The block of K a product of this K and dtype is walked in: K in blocks of equal length
    /// (a multiple of 16, at most [`Self::k_block`]) for f32, all of K at once otherwise.
    pub fn k_block_for(&self, k: usize, dtype: DType) -> usize {
        if dtype != DType::F32 || k <= self.k_block {
            return k.max(1);
        }
        let blocks = k.div_ceil(self.k_block);
        k.div_ceil(blocks).next_multiple_of(16).min(self.k_block)
    }
}

impl fmt::Display for CpuBlocking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} f32 lanes, {} -> K in blocks of {}", self.lanes, self.caches, self.k_block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caches(l1d_k: usize, l2_k: usize) -> CpuCaches {
        CpuCaches { l1d: l1d_k << 10, l2: l2_k << 10 }
    }

    /// What the rule picks on CPUs people train on (the table in benches/RESULTS.md).
    #[test]
    fn the_block_follows_vector_width_and_caches() {
        let picks = [
            ("Haswell / Skylake client (AVX2, 32K, 256K)", 8, caches(32, 256), 256),
            ("Zen 2 / Zen 3 (AVX2, 32K, 512K)", 8, caches(32, 512), 512),
            ("Zen 4 (AVX-512, 32K, 1M)", 16, caches(32, 1024), 608),
            ("Sapphire Rapids (AVX-512, 48K, 2M)", 16, caches(48, 2048), 1216),
            ("Ice Lake server (AVX-512, 48K, 1.25M)", 16, caches(48, 1280), 768),
            ("Nehalem (SSE, 32K, 256K)", 4, caches(32, 256), 384),
            ("Apple M1 P-core (NEON, 128K, 12M)", 4, caches(128, 12288), 2048),
            ("assumed (AVX2, fallback caches)", 8, CpuCaches::FALLBACK, 256),
        ];
        for (cpu, lanes, c, want) in picks {
            let b = CpuBlocking::for_cpu(lanes, c);
            assert_eq!(b.k_block, want, "{cpu}: {b}");
            // Whatever the CPU, a super-block over one block fits 3/4 of L2 (unless the lower
            // bound overrides it), and the next multiple of 16 would not (unless the upper does).
            let bytes = |k: usize| k * (SUPER_ROWS * TILE_ROWS + SUPER_COLS * TILE_VECTORS * lanes) * 4;
            assert!(b.k_block == MIN_K_BLOCK || bytes(b.k_block) <= c.l2 / 4 * 3, "{cpu}: {b}");
            assert!(b.k_block == MAX_K_BLOCK || bytes(b.k_block + 16) > c.l2 / 4 * 3, "{cpu}: {b}");
        }
    }

    #[test]
    fn long_k_is_split_into_equal_blocks_and_16_bit_c_never() {
        let b = CpuBlocking::for_cpu(8, caches(32, 512));
        assert_eq!(b.k_block, 512);
        assert_eq!(b.k_block_for(200, DType::F32), 200);
        assert_eq!(b.k_block_for(512, DType::F32), 512);
        // 1,152 = 3 blocks of 384, not 512 + 512 + 128.
        assert_eq!(b.k_block_for(1152, DType::F32), 384);
        assert_eq!(b.k_block_for(640, DType::F32), 320);
        assert_eq!(b.k_block_for(262_144, DType::F32), 512);
        assert_eq!(b.k_block_for(640, DType::BF16), 640);
        assert_eq!(b.k_block_for(0, DType::F32), 1);
        for k in 1..3000 {
            let kb = b.k_block_for(k, DType::F32);
            assert!(kb == k || (kb <= b.k_block && kb.is_multiple_of(16)), "k {k}: {kb}");
            assert!(k.div_ceil(kb) == k.div_ceil(b.k_block), "k {k}: no more blocks than needed ({kb})");
        }
    }
}
