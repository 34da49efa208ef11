//! Launch sizing shared by kernels: how many cubes and units for a 1-D pass over `n` items, and
//! which vector width divides a length. Pure arithmetic over device properties; launches nothing.

use crate::Device;
use cubecl::prelude::{CubeCount, CubeDim};

/// Grid for a grid-stride loop over `n` work items: each unit handles items
/// `ABSOLUTE_POS, ABSOLUTE_POS + CUBE_COUNT * CUBE_DIM, …`. On the CPU runtime one cube of one
/// unit per core: each unit runs every cube of a launch in turn, so with more cubes each core
/// would sweep the whole buffer once per cube (a GeGLU over 4 MB: 2.5 ms with 8 cubes, 1.0 ms
/// with one). On GPUs cubes of 256 units, enough to fill the card.
pub fn grid_1d(device: &Device, n: usize) -> (CubeCount, CubeDim) {
    let n = n.max(1);
    if device.is_cpu() {
        let units = device.max_units_per_cube().max(1);
        (CubeCount::Static(1, 1, 1), CubeDim::new_1d(units))
    } else {
        let units = 256u32.min(device.max_units_per_cube());
        let cubes = n.div_ceil(units as usize).min(65_535 * 4) as u32;
        (CubeCount::Static(cubes, 1, 1), CubeDim::new_1d(units))
    }
}

/// f32 lanes of this machine's vector registers, for kernels whose register tiles are counted
/// in vectors (the matmuls on the CPU runtime): 16 with AVX-512 (32 such registers), 8 with
/// AVX/AVX2 (16 registers: a 16-lane vector would take two, and a tile of them spills), 4
/// otherwise (SSE, NEON). Read once from the CPU's feature flags.
pub fn cpu_register_lanes() -> usize {
    static LANES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LANES.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return 16;
            }
            if std::arch::is_x86_feature_detected!("avx") {
                return 8;
            }
        }
        4
    })
}

/// The widest of 8, 4, 2, 1 that divides every length given.
pub fn vector_width(lens: &[usize]) -> usize {
    vector_width_up_to(lens, 8)
}

/// The widest power of two up to `max` that divides every length given.
pub fn vector_width_up_to(lens: &[usize], max: usize) -> usize {
    let mut w = max.next_power_of_two();
    while w > 1 && !lens.iter().all(|l| l % w == 0) {
        w /= 2;
    }
    w.max(1)
}

/// Grid for kernels whose units step grid-stride through `tiles` independent tiles of work
/// (matmul). On the CPU runtime one cube with one unit per core; on GPUs cubes of 128 units.
pub fn grid_tiles(device: &Device, tiles: usize) -> (CubeCount, CubeDim) {
    let tiles = tiles.max(1);
    if device.is_cpu() {
        let units = device.max_units_per_cube().max(1).min(tiles as u32);
        (CubeCount::Static(1, 1, 1), CubeDim::new_1d(units))
    } else {
        let units = 128u32.min(device.max_units_per_cube());
        let cubes = tiles.div_ceil(units as usize).min(65_535 * 8) as u32;
        (CubeCount::Static(cubes, 1, 1), CubeDim::new_1d(units))
    }
}

/// Units a 1-d launch runs in all (`cubes × units per cube`), for kernels that split work into
/// one contiguous run per unit.
pub fn units_of(count: &CubeCount, dim: &CubeDim) -> usize {
    let cubes = match count {
        CubeCount::Static(x, _, _) => *x as usize,
        _ => 1,
    };
    cubes * dim.x as usize
}

/// Runs one kernel launch. When the runtime panics while launching (a paced CPU launch runs the
/// kernel's compilation on the caller's behalf and raises the runtime's panic in the caller, see
/// [`crate::pacing`]), the failure the panic hook recorded is left for the next read or sync to
/// report as an error naming the kernel, and the launch returns. A panic that did not come from
/// the runtime unwinds as usual.
pub fn guarded(launch: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(launch)) {
        if crate::kernel_failure().is_none() {
            std::panic::resume_unwind(payload);
        }
    }
}
