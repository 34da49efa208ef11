//! Fused (flash) attention backward in the GPU's shape, the twin of `flash_tiled.rs`: the
//! probabilities recomputed tile by tile from Q, K and the forward's log-sum-exp, never stored,
//! as in `flash_backward.rs` (`P = exp(scale·q·k − lse)`, `dS = P ∘ (dP − δ) · scale`). Two
//! kernels, no atomics: dQ with a cube per block of query rows walking blocks of 16 keys
//! (`dP = dO·Vᵀ`, `S = Q·Kᵀ`, `dQ += dS·K`), and dK, dV with a cube per block of keys of one
//! key/value head walking blocks of 16 queries of every query head that shares them
//! (`Sᵀ = K·Qᵀ`, `dPᵀ = V·dOᵀ`, `dV += Pᵀ·dO`, `dK += dSᵀ·Q`). Where dK's and dV's tiles do not
//! fit shared memory together (head dim 512 in 16-bit types: 134 KB), the dK/dV kernel runs
//! twice, once per accumulator, `Sᵀ` recomputed in each (a quarter more products, 84 KB and
//! 99 KB). Products on tensor cores where the device has them, accumulators in shared memory in
//! f32. Not the forward.

use super::flash::{NONE, buf, mask_buffers};
use super::flash_backward::{flash_backward, row_deltas};
use super::flash_mask::{MaskFlags, TILE_ROWS, id_at, query_hi, query_lo, tile, visible};
use super::flash_tiled::{
    TILE, TiledShape, cube_key_range, launch_staged, range_union, stage_rows, tile_accumulate, tile_scores, zero_shared,
};
use super::{AttentionGrads, AttentionMask};
use cubecl::prelude::*;
use lapidary_core::{Result, Tensor};

/// Writes rows `first..` of a cube's f32 accumulator (`dp` wide) into `dst` (`d` wide, rows
/// from `row0`, `len` of them), every unit of the cube taking part.
#[cube]
fn write_rows<F: Float>(
    acc: &[f32],
    dst: &mut [F],
    row0: usize,
    first: usize,
    len: usize,
    #[comptime] shape: TiledShape,
) {
    let d = comptime!(shape.d);
    let dp = comptime!(shape.dp);
    let mut i = UNIT_POS as usize;
    while i < comptime!(shape.rows() * dp) {
        let r = i / dp;
        let c = i % dp;
        if first + r < len && c < d {
            dst[(row0 + first + r) * d + c] = F::cast_from(acc[i]);
        }
        i += comptime!(shape.cube_units());
    }
}

#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn tiled_dq_kernel<F: Float, S: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    dout: &[F],
    lse: &[f32],
    delta: &[f32],
    dq: &mut [F],
    blocks: &[f32],
    keep: &[f32],
    segments: &[f32],
    heads: usize,
    groups: usize,
    t_len: usize,
    s_len: usize,
    q_offset: usize,
    window: usize,
    scale: f32,
    #[comptime] shape: TiledShape,
    #[comptime] flags: MaskFlags,
) {
    let dp = comptime!(shape.dp);
    let rows = comptime!(shape.rows());
    let units = comptime!(shape.units);
    let bh = CUBE_POS_Y as usize;
    let t0 = CUBE_POS_X as usize * rows;
    let b = bh / heads;
    let kv_row0 = (b * (heads / groups) + (bh % heads) / groups) * s_len;
    let q_row0 = bh * t_len;
    let g = UNIT_POS as usize / units;
    let u = UNIT_POS as usize % units;
    let mut q_s = Shared::<[S]>::new_aligned_slice(comptime!(rows * dp), 32usize);
    let mut do_s = Shared::<[S]>::new_aligned_slice(comptime!(rows * dp), 32usize);
    // One block of values, then of keys, in turn.
    let mut kv_s = Shared::<[S]>::new_aligned_slice(comptime!(TILE * dp), 32usize);
    let mut ds_s = Shared::<[S]>::new_aligned_slice(comptime!(rows * TILE), 32usize);
    let mut dq_s = Shared::<[f32]>::new_aligned_slice(comptime!(rows * dp), 32usize);
    let mut s_s = Shared::<[f32]>::new_aligned_slice(comptime!(rows * TILE), 32usize);
    let mut dp_s = Shared::<[f32]>::new_aligned_slice(comptime!(rows * TILE), 32usize);
    let mut range_s = Shared::<[u32]>::new_slice(comptime!(rows / 2));

    stage_rows(q, q_row0, t0, t_len, &mut q_s, rows, shape);
    stage_rows(dout, q_row0, t0, t_len, &mut do_s, rows, shape);
    zero_shared(&mut dq_s, comptime!(rows * dp), shape);
    let (lo, hi) =
        cube_key_range(blocks, segments, &mut range_s, b, q_row0, t0, t_len, s_len, q_offset, window, shape, flags);
    let mut kb = (lo / TILE) * TILE;
    while kb < hi {
        sync_cube();
        stage_rows(v, kv_row0, kb, s_len, &mut kv_s, TILE, shape);
        sync_cube();
        // dP = dO·Vᵀ
        tile_scores(&do_s, g * TILE * dp, &kv_s, &mut dp_s, g * TILE * TILE, shape, u);
        sync_cube();
        stage_rows(k, kv_row0, kb, s_len, &mut kv_s, TILE, shape);
        sync_cube();
        // S = Q·Kᵀ
        tile_scores(&q_s, g * TILE * dp, &kv_s, &mut s_s, g * TILE * TILE, shape, u);
        sync_cube();
        let mut r = u;
        while r < TILE {
            let row = g * TILE + r;
            let t = t0 + row;
            let pos = t + q_offset;
            let bq = id_at(blocks, b, pos, s_len, 0.0);
            let sq = id_at(segments, b, pos, s_len, -1.0);
            let mut stat = f32::new(-NONE);
            let mut dl = 0.0f32;
            if t < t_len {
                stat = lse[q_row0 + t];
                dl = delta[q_row0 + t];
            }
            for j in 0..TILE {
                let key = kb + j;
                let mut ds = 0.0f32;
                if t < t_len
                    && key < s_len
                    && visible(blocks, keep, segments, b, pos, key, bq, sq, s_len, window, flags)
                {
                    let p = f32::exp(s_s[row * TILE + j] * scale - stat);
                    ds = p * (dp_s[row * TILE + j] - dl) * scale;
                }
                ds_s[row * TILE + j] = S::cast_from(ds);
            }
            r += units;
        }
        sync_cube();
        // dQ += dS·K
        tile_accumulate(&ds_s, g * TILE * TILE, &kv_s, &mut dq_s, g * TILE * dp, shape, u);
        kb += TILE;
    }
    sync_cube();
    write_rows(&dq_s, dq, q_row0, t0, t_len, shape);
}

/// The queries (rows, not positions) the cube's keys `j0..` (of head row `k_row0`) are seen by,
/// `[ta, tz)`: the union of their four-key tiles' ranges (`flash_mask.rs`), through `scratch`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn cube_query_range(
    blocks: &[f32],
    segments: &[f32],
    scratch: &mut [u32],
    b: usize,
    k_row0: usize,
    j0: usize,
    t_len: usize,
    s_len: usize,
    q_offset: usize,
    window: usize,
    #[comptime] shape: TiledShape,
    #[comptime] flags: MaskFlags,
) -> (usize, usize) {
    let tiles = comptime!(shape.rows() / TILE_ROWS);
    let mut i = UNIT_POS as usize;
    while i < tiles {
        let first = j0 + TILE_ROWS * i;
        let mut ta = t_len;
        let mut tz = 0usize;
        if first < s_len {
            let kt = tile(blocks, segments, b, k_row0, first, s_len, 0, s_len);
            ta = query_lo(blocks, segments, b, q_offset, s_len, &kt, flags) - q_offset;
            tz = max(query_hi(blocks, segments, b, q_offset + t_len, s_len, window, &kt, flags), ta + q_offset)
                - q_offset;
        }
        scratch[2 * i] = ta as u32;
        scratch[2 * i + 1] = tz as u32;
        i += comptime!(shape.cube_units());
    }
    range_union(scratch, t_len, tiles)
}

/// Which accumulators one launch of the dK/dV kernel fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct KvPass {
    pub keys: bool,
    pub values: bool,
}

impl KvPass {
    /// dK and dV in one launch.
    pub(super) const BOTH: KvPass = KvPass { keys: true, values: true };
    /// dK alone (needs V for `dPᵀ`).
    pub(super) const KEYS: KvPass = KvPass { keys: true, values: false };
    /// dV alone (needs neither V nor dP).
    pub(super) const VALUES: KvPass = KvPass { keys: false, values: true };
}

/// Elements of a shared buffer that a pass uses (`n`) or leaves out (one, never read).
fn used(on: bool, n: usize) -> usize {
    if on { n } else { 1 }
}

#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn tiled_dkdv_kernel<F: Float, S: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    dout: &[F],
    lse: &[f32],
    delta: &[f32],
    dk: &mut [F],
    dv: &mut [F],
    blocks: &[f32],
    keep: &[f32],
    segments: &[f32],
    kv_heads: usize,
    groups: usize,
    t_len: usize,
    s_len: usize,
    q_offset: usize,
    window: usize,
    scale: f32,
    #[comptime] shape: TiledShape,
    #[comptime] flags: MaskFlags,
    #[comptime] pass: KvPass,
) {
    let dp = comptime!(shape.dp);
    let rows = comptime!(shape.rows());
    let units = comptime!(shape.units);
    let bkv = CUBE_POS_Y as usize;
    let j0 = CUBE_POS_X as usize * rows;
    let b = bkv / kv_heads;
    let kh = bkv % kv_heads;
    let heads = kv_heads * groups;
    let k_row0 = bkv * s_len;
    let g = UNIT_POS as usize / units;
    let u = UNIT_POS as usize % units;
    let mut k_s = Shared::<[S]>::new_aligned_slice(comptime!(rows * dp), 32usize);
    let mut v_s = Shared::<[S]>::new_aligned_slice(comptime!(used(pass.keys, rows * dp)), 32usize);
    let mut q_s = Shared::<[S]>::new_aligned_slice(comptime!(TILE * dp), 32usize);
    let mut do_s = Shared::<[S]>::new_aligned_slice(comptime!(TILE * dp), 32usize);
    let mut p_s = Shared::<[S]>::new_aligned_slice(comptime!(used(pass.values, rows * TILE)), 32usize);
    let mut ds_s = Shared::<[S]>::new_aligned_slice(comptime!(used(pass.keys, rows * TILE)), 32usize);
    let mut dk_s = Shared::<[f32]>::new_aligned_slice(comptime!(used(pass.keys, rows * dp)), 32usize);
    let mut dv_s = Shared::<[f32]>::new_aligned_slice(comptime!(used(pass.values, rows * dp)), 32usize);
    let mut s_s = Shared::<[f32]>::new_aligned_slice(comptime!(rows * TILE), 32usize);
    let mut dp_s = Shared::<[f32]>::new_aligned_slice(comptime!(used(pass.keys, rows * TILE)), 32usize);
    let mut range_s = Shared::<[u32]>::new_slice(comptime!(rows / 2));

    stage_rows(k, k_row0, j0, s_len, &mut k_s, rows, shape);
    if comptime!(pass.keys) {
        stage_rows(v, k_row0, j0, s_len, &mut v_s, rows, shape);
        zero_shared(&mut dk_s, comptime!(rows * dp), shape);
    }
    if comptime!(pass.values) {
        zero_shared(&mut dv_s, comptime!(rows * dp), shape);
    }
    let (ta, tz) =
        cube_query_range(blocks, segments, &mut range_s, b, k_row0, j0, t_len, s_len, q_offset, window, shape, flags);
    for qh in 0..groups {
        let q_row0 = (b * heads + kh * groups + qh) * t_len;
        let mut qb = (ta / TILE) * TILE;
        while qb < tz {
            sync_cube();
            stage_rows(q, q_row0, qb, t_len, &mut q_s, TILE, shape);
            stage_rows(dout, q_row0, qb, t_len, &mut do_s, TILE, shape);
            sync_cube();
            // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for the group's keys.
            tile_scores(&k_s, g * TILE * dp, &q_s, &mut s_s, g * TILE * TILE, shape, u);
            if comptime!(pass.keys) {
                tile_scores(&v_s, g * TILE * dp, &do_s, &mut dp_s, g * TILE * TILE, shape, u);
            }
            sync_cube();
            let mut r = u;
            while r < TILE {
                let row = g * TILE + r;
                let key = j0 + row;
                for i in 0..TILE {
                    let t = qb + i;
                    let pos = t + q_offset;
                    let mut p = 0.0f32;
                    let mut ds = 0.0f32;
                    if key < s_len && t < t_len {
                        let bq = id_at(blocks, b, pos, s_len, 0.0);
                        let sq = id_at(segments, b, pos, s_len, -1.0);
                        if visible(blocks, keep, segments, b, pos, key, bq, sq, s_len, window, flags) {
                            p = f32::exp(s_s[row * TILE + i] * scale - lse[q_row0 + t]);
                            if comptime!(pass.keys) {
                                ds = p * (dp_s[row * TILE + i] - delta[q_row0 + t]) * scale;
                            }
                        }
                    }
                    if comptime!(pass.values) {
                        p_s[row * TILE + i] = S::cast_from(p);
                    }
                    if comptime!(pass.keys) {
                        ds_s[row * TILE + i] = S::cast_from(ds);
                    }
                }
                r += units;
            }
            sync_cube();
            // dV += Pᵀ·dO, dK += dSᵀ·Q
            if comptime!(pass.values) {
                tile_accumulate(&p_s, g * TILE * TILE, &do_s, &mut dv_s, g * TILE * dp, shape, u);
            }
            if comptime!(pass.keys) {
                tile_accumulate(&ds_s, g * TILE * TILE, &q_s, &mut dk_s, g * TILE * dp, shape, u);
            }
            qb += TILE;
        }
    }
    sync_cube();
    if comptime!(pass.keys) {
        write_rows(&dk_s, dk, k_row0, j0, s_len, shape);
    }
    if comptime!(pass.values) {
        write_rows(&dv_s, dv, k_row0, j0, s_len, shape);
    }
}

/// Shared memory of the dQ kernel with `groups` groups.
pub(super) fn dq_bytes(groups: usize, dp: usize, elem: usize) -> usize {
    let rows = TILE * groups;
    rows * dp * (2 * elem + 4) + rows * TILE * (elem + 8) + TILE * dp * elem + rows * 2
}

/// Shared memory of the dK/dV kernel's `pass` with `groups` groups.
pub(super) fn dkdv_bytes(pass: KvPass) -> impl Fn(usize, usize, usize) -> usize {
    move |groups, dp, elem| {
        let rows = TILE * groups;
        let (keys, values) = (usize::from(pass.keys), usize::from(pass.values));
        rows * dp * (elem + keys * (elem + 4) + values * 4)
            + rows * TILE * (4 + keys * (4 + elem) + values * elem)
            + 2 * TILE * dp * elem
            + rows * 2
    }
}

/// How the dK/dV kernel runs: one launch where both accumulators fit, else one per accumulator
/// (each with its own layout), `None` when not even those fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KvLaunches {
    Together(TiledShape),
    Apart { keys: TiledShape, values: TiledShape },
}

impl KvLaunches {
    fn choose(q: &Tensor) -> Option<KvLaunches> {
        if let Some(shape) = TiledShape::choose(q, dkdv_bytes(KvPass::BOTH)) {
            return Some(KvLaunches::Together(shape));
        }
        let keys = TiledShape::choose(q, dkdv_bytes(KvPass::KEYS))?;
        let values = TiledShape::choose(q, dkdv_bytes(KvPass::VALUES))?;
        Some(KvLaunches::Apart { keys, values })
    }

    /// Each launch: its layout and the accumulators it fills.
    fn launches(self) -> Vec<(TiledShape, KvPass)> {
        match self {
            KvLaunches::Together(shape) => vec![(shape, KvPass::BOTH)],
            KvLaunches::Apart { keys, values } => vec![(keys, KvPass::KEYS), (values, KvPass::VALUES)],
        }
    }
}

/// Tiled backward: gradients of q, k, v from the forward's output and log-sum-exp. When the dQ
/// kernel's tiles, or even one accumulator's of the dK/dV kernel, do not fit the device's shared
/// memory, the whole backward goes to the CPU-shaped kernels (`flash_backward.rs`), which need
/// none.
#[allow(clippy::too_many_arguments)]
pub(super) fn tiled_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f32,
    mask: &AttentionMask,
) -> Result<AttentionGrads> {
    match (TiledShape::choose(q, dq_bytes), KvLaunches::choose(q)) {
        (Some(dq_shape), Some(kv)) if q.numel() > 0 && k.numel() > 0 => {
            tiled_backward_in(q, k, v, out, lse, dout, scale, mask, dq_shape, kv)
        }
        _ => flash_backward(q, k, v, out, lse, dout, scale, mask),
    }
}

/// [`tiled_backward`] with the layouts given (non-empty tensors).
#[allow(clippy::too_many_arguments)]
pub(super) fn tiled_backward_in(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f32,
    mask: &AttentionMask,
    dq_shape: TiledShape,
    kv: KvLaunches,
) -> Result<AttentionGrads> {
    let (b, h, t) = (q.dim(0), q.dim(1), q.dim(2));
    let (hkv, s) = (k.dim(1), k.dim(2));
    let dev = q.device();
    let delta = row_deltas(out, dout)?;
    let dq = Tensor::uninit(dev, q.shape(), q.dtype())?;
    let dk = Tensor::uninit(dev, k.shape(), k.dtype())?;
    let dv = Tensor::uninit(dev, v.shape(), v.dtype())?;
    let [blocks, keep, segments] = mask_buffers(mask, lse);
    let (window, flags) = (mask.window.unwrap_or(0), MaskFlags::of(mask));
    let count = CubeCount::Static(t.div_ceil(dq_shape.rows()) as u32, (b * h) as u32, 1);
    let dim = CubeDim::new_1d(dq_shape.cube_units() as u32);
    launch_staged!(q.dtype(), dq_shape.bf16_products, F, S => unsafe {
        tiled_dq_kernel::launch_unchecked::<F, S>(
            dev.client(), count, dim,
            buf(q), buf(k), buf(v), buf(dout), buf(lse), buf(&delta), buf(&dq),
            buf(blocks), buf(keep), buf(segments),
            h, h / hkv, t, s, mask.q_offset, window, scale, dq_shape, flags,
        )
    });
    for (shape, pass) in kv.launches() {
        let count = CubeCount::Static(s.div_ceil(shape.rows()) as u32, (b * hkv) as u32, 1);
        let dim = CubeDim::new_1d(shape.cube_units() as u32);
        launch_staged!(q.dtype(), shape.bf16_products, F, S => unsafe {
            tiled_dkdv_kernel::launch_unchecked::<F, S>(
                dev.client(), count, dim,
                buf(q), buf(k), buf(v), buf(dout), buf(lse), buf(&delta), buf(&dk), buf(&dv),
                buf(blocks), buf(keep), buf(segments),
                hkv, h / hkv, t, s, mask.q_offset, window, scale, shape, flags, pass,
            )
        });
    }
    Ok(AttentionGrads { q: dq, k: dk, v: dv })
}
