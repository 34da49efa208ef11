//! How row kernels (norms, cross-entropy) lay rows over units. On the CPU runtime one unit owns
//! whole rows: each unit is a thread, and splitting a row would add barriers. On GPUs a row is
//! split over `split` consecutive units of one cube, so that a plane's loads of a row are
//! consecutive vectors (coalesced) and a 2,560-wide row is read by 256 threads instead of one;
//! its sums and maxima are reduced through shared memory. Not the kernels themselves.

use cubecl::prelude::*;
use lapidary_core::{Device, launch};

/// A row kernel's layout, fixed per kernel instantiation (a comptime argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RowSplit {
    /// Units sharing one row (a power of two; 1 on the CPU runtime).
    pub units: usize,
    /// Units in a cube (a multiple of `units`).
    pub cube: usize,
}

impl RowSplit {
    /// Length of the shared memory [`row_sum`] and [`row_max`] reduce through: one value per
    /// unit (a placeholder of one when rows are not split).
    pub(crate) fn scratch_len(&self) -> usize {
        if self.units > 1 { self.cube } else { 1 }
    }

    /// The layout and grid for `rows` rows of `len_vec` vectors each on `device`: on GPUs a
    /// power of two from 32 to 256 units a row (about one vector per unit, whole planes), cubes
    /// of at least 128 units; on the CPU runtime a unit a row, as [`launch::grid_1d`] lays them.
    pub(crate) fn for_rows(device: &Device, rows: usize, len_vec: usize) -> (RowSplit, CubeCount, CubeDim) {
        #[cfg(test)]
        if let Some(split) = FORCED.get() {
            // At most two cubes, so that the cubes also step over rows.
            let cubes = rows.div_ceil(split.cube / split.units).clamp(1, 2) as u32;
            return (split, CubeCount::Static(cubes, 1, 1), CubeDim::new_1d(split.cube as u32));
        }
        if device.is_cpu() {
            let (count, dim) = launch::grid_1d(device, rows);
            return (RowSplit { units: 1, cube: dim.x as usize }, count, dim);
        }
        let units = len_vec.next_power_of_two().clamp(32, 256);
        let cube = units.max(128).min(device.max_units_per_cube() as usize).max(units);
        let rows_per_cube = cube / units;
        let cubes = rows.div_ceil(rows_per_cube).clamp(1, 65_535 * 4) as u32;
        (RowSplit { units, cube }, CubeCount::Static(cubes, 1, 1), CubeDim::new_1d(cube as u32))
    }
}

#[cfg(test)]
thread_local! {
    static FORCED: std::cell::Cell<Option<RowSplit>> = const { std::cell::Cell::new(None) };
}

/// Tests: lays rows as `split` on any device from now on in this thread (`None`: as the device
/// wants), so that the GPU's layout runs on the CPU runtime.
#[cfg(test)]
pub(crate) fn force_split(split: Option<RowSplit>) {
    FORCED.set(split);
}

/// Tests: no split, and the GPU's: several units a row, one or two rows a cube.
#[cfg(test)]
pub(crate) fn split_strategy() -> impl proptest::strategy::Strategy<Value = Option<RowSplit>> {
    use proptest::prelude::*;
    prop_oneof![Just(None), Just(Some(RowSplit { units: 2, cube: 4 })), Just(Some(RowSplit { units: 4, cube: 4 })),]
}

/// The cube's first row: a cube's rows are `cube_row..cube_row + rows a cube` (see
/// [`row_offset`]), the next ones [`row_step`] further on. A loop runs while `cube_row < rows`,
/// the same number of times in every unit of a cube, so that barriers inside it are reached by
/// all; a unit whose own row is past the end skips its loads and stores, not the reductions.
#[cube]
pub(crate) fn cube_first_row(#[comptime] split: RowSplit) -> usize {
    CUBE_POS * comptime!(split.cube / split.units)
}

/// Rows between one of a cube's rows and its next.
#[cube]
pub(crate) fn row_step(#[comptime] split: RowSplit) -> usize {
    CUBE_COUNT * comptime!(split.cube / split.units)
}

/// This unit's row within its cube's rows.
#[cube]
pub(crate) fn row_offset(#[comptime] split: RowSplit) -> usize {
    UNIT_POS as usize / comptime!(split.units)
}

/// This unit's place among the units sharing its row: it reads vectors `lane`,
/// `lane + split.units`, ….
#[cube]
pub(crate) fn row_lane(#[comptime] split: RowSplit) -> usize {
    UNIT_POS as usize % comptime!(split.units)
}

/// The sum of `v` over the units sharing this unit's row, given to each of them.
#[cube]
pub(crate) fn row_sum(v: f32, scratch: &mut [f32], #[comptime] split: RowSplit) -> f32 {
    row_fold(v, scratch, split, false)
}

/// The maximum of `v` over the units sharing this unit's row, given to each of them.
#[cube]
pub(crate) fn row_max(v: f32, scratch: &mut [f32], #[comptime] split: RowSplit) -> f32 {
    row_fold(v, scratch, split, true)
}

/// Folds `v` over the units sharing this unit's row (a sum, or the maximum with `maximum`),
/// through `scratch`, in halving steps: units `lane < half` fold in the value `half` further on.
#[cube]
fn row_fold(v: f32, scratch: &mut [f32], #[comptime] split: RowSplit, #[comptime] maximum: bool) -> f32 {
    let mut out = v;
    if comptime!(split.units > 1) {
        let unit = UNIT_POS as usize;
        let lane = unit % comptime!(split.units);
        scratch[unit] = v;
        sync_cube();
        #[unroll]
        for level in 0..comptime!(split.units.trailing_zeros() as usize) {
            let half = comptime!(split.units / 2) >> level;
            if lane < half {
                if maximum {
                    scratch[unit] = max(scratch[unit], scratch[unit + half]);
                } else {
                    scratch[unit] = scratch[unit] + scratch[unit + half];
                }
            }
            sync_cube();
        }
        out = scratch[unit - lane];
        sync_cube();
    }
    out
}
