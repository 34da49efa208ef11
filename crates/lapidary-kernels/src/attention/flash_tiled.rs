//! Fused (flash) attention forward in the GPU's shape: a cube per block of `16 · groups` query
//! rows of one (batch, head), each group of 16 rows one plane. The cube stages its queries and
//! each block of 16 keys and values in shared memory; a group scores its rows against the block
//! (`S = Q·Kᵀ`), its units run the online softmax row by row (mask from indices, as
//! `flash_mask.rs` defines it) and the group adds `P·V` to its output rows, kept in shared memory
//! in f32. Both products run on tensor cores (CMMA 16×16×16, f32 accumulation) where the device
//! has them for the dtype, else by the group's units from shared memory, which is also how the
//! CPU runtime (no CMMA) runs and tests every other part of the kernel. Saves only `O` and the
//! log-sum-exp, as the CPU-shaped kernel (`flash.rs`) does. The backward is
//! `flash_tiled_backward.rs`.

use super::AttentionMask;
use super::flash::{NONE, buf, mask_buffers};
use super::flash_mask::{MaskFlags, TILE_ROWS, id_at, key_hi, key_lo, tile, visible};
use cubecl::cmma::{self, MatrixIdent, MatrixLayout};
use cubecl::features::MmaConfig;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;
use lapidary_core::{DType, Result, Tensor};

/// Rows (and keys) of one tile: the CMMA shape 16×16×16.
pub(super) const TILE: usize = 16;

/// How a tiled launch is laid out, fixed per kernel instantiation (a comptime argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct TiledShape {
    /// Groups of 16 rows per cube (one plane each on a GPU).
    pub groups: usize,
    /// Units per group: the plane's width on a GPU.
    pub units: usize,
    /// Head dimension, and it rounded up to a multiple of 16 (the padding is zero in shared
    /// memory).
    pub d: usize,
    pub dp: usize,
    /// Products on tensor cores.
    pub tensor_cores: bool,
    /// f32 tensors staged (and multiplied) in bf16, so that their products can run on tensor
    /// cores; softmax, accumulation and results stay f32. Off unless asked for.
    pub bf16_products: bool,
}

impl TiledShape {
    /// Units in a cube.
    pub(super) fn cube_units(&self) -> usize {
        self.groups * self.units
    }

    /// Rows a cube owns.
    pub(super) fn rows(&self) -> usize {
        TILE * self.groups
    }

    /// The largest layout whose shared memory (`bytes(groups)`) fits this device: groups of 4, 2
    /// or 1 on GPUs (within 100 KiB, so that two cubes share a multiprocessor) with the plane's
    /// width of units and tensor cores for 16-bit types where the device has them; 2 groups of
    /// one unit on the CPU runtime (whose units are threads). `None` when not even one group fits.
    pub(super) fn choose(q: &Tensor, bytes: impl Fn(usize, usize, usize) -> usize) -> Option<TiledShape> {
        let dev = q.device();
        let props = dev.client().properties();
        let d = q.dim(-1);
        let dp = d.div_ceil(TILE) * TILE;
        let bf16_products = q.dtype() == DType::F32
            && lapidary_core::settings().attention_products == lapidary_core::settings::AttentionProducts::Bf16;
        let staged = if bf16_products { DType::BF16 } else { q.dtype() };
        let elem = staged.size();
        let cpu = dev.is_cpu();
        let (units, budget, choices): (usize, usize, &[usize]) = if cpu {
            (1, props.hardware.max_shared_memory_size, &[2, 1])
        } else {
            (props.hardware.plane_size_max as usize, props.hardware.max_shared_memory_size.min(100 << 10), &[4, 2, 1])
        };
        let tensor_cores = !cpu && staged != DType::F32 && {
            let e = elem_type(staged);
            let config =
                MmaConfig { a_type: e, b_type: e, cd_type: ElemType::Float(FloatKind::F32), m: 16, n: 16, k: 16 };
            props.features.matmul.cmma.contains(&config)
        };
        let max_units = dev.max_units_per_cube() as usize;
        choices
            .iter()
            .copied()
            .find(|&g| bytes(g, dp, elem) <= budget && g * units <= max_units)
            .map(|groups| TiledShape { groups, units, d, dp, tensor_cores, bf16_products })
    }
}

fn elem_type(dtype: DType) -> ElemType {
    ElemType::Float(match dtype {
        DType::F32 => FloatKind::F32,
        DType::BF16 => FloatKind::BF16,
        DType::F16 => FloatKind::F16,
    })
}

/// Runs a tiled kernel's launch `$body` with `$F` bound to the tensors' type and `$S` to the type
/// they are staged in: bf16 for f32 tensors with `bf16_products`, else `$F`.
macro_rules! launch_staged {
    ($dtype:expr, $bf16_products:expr, $F:ident, $S:ident => $body:expr) => {
        if $dtype == lapidary_core::DType::F32 && $bf16_products {
            type $F = f32;
            type $S = half::bf16;
            lapidary_core::launch::guarded(|| {
                $body;
            })
        } else {
            dispatch_float!($dtype, $F => {
                type $S = $F;
                $body
            })
        }
    };
}
pub(super) use launch_staged;

/// `C (+)= A · B` for one group: `A` 16 × `kd` and `B` `kd` × `n` (`kd`, `n` multiples of 16) in
/// shared memory, each stored row-major or, when `*_cols`, column-major (a transposed operand
/// read in place), from `*_off` with row (column) stride `*_stride`; `C` 16 × `n`, f32,
/// row-major. On tensor cores (the whole plane together) or by the group's units, entry by
/// entry, in f32.
#[cube]
#[allow(clippy::too_many_arguments)]
fn tile_product<F: Float>(
    a: &[F],
    a_off: usize,
    a_stride: usize,
    #[comptime] a_cols: bool,
    b: &[F],
    b_off: usize,
    b_stride: usize,
    #[comptime] b_cols: bool,
    c: &mut [f32],
    c_off: usize,
    c_stride: usize,
    #[comptime] kd: usize,
    #[comptime] n: usize,
    #[comptime] accumulate: bool,
    #[comptime] shape: TiledShape,
    unit: usize,
) {
    if comptime!(shape.tensor_cores) {
        let a_layout = comptime!(if a_cols { MatrixLayout::ColMajor } else { MatrixLayout::RowMajor });
        let b_layout = comptime!(if b_cols { MatrixLayout::ColMajor } else { MatrixLayout::RowMajor });
        #[unroll]
        for nt in 0..comptime!(n / TILE) {
            let c_at = c_off + nt * TILE;
            let mut acc = unsafe {
                cmma::Matrix::<f32>::uninitialized(MatrixIdent::Accumulator, TILE, TILE, TILE, MatrixLayout::Undefined)
            };
            if comptime!(accumulate) {
                cmma::load_with_layout(&mut acc, &c.slice(c_at, c.len()), c_stride as u32, MatrixLayout::RowMajor);
            } else {
                cmma::fill(&mut acc, 0.0f32);
            }
            for kt in 0..comptime!(kd / TILE) {
                let mut a_at = a_off + kt * TILE;
                if comptime!(a_cols) {
                    a_at = a_off + kt * TILE * a_stride;
                }
                let mut b_at = b_off + kt * TILE * b_stride + nt * TILE;
                if comptime!(b_cols) {
                    b_at = b_off + nt * TILE * b_stride + kt * TILE;
                }
                let fa = cmma::Matrix::<F>::from_slice(
                    MatrixIdent::A,
                    TILE,
                    TILE,
                    TILE,
                    a_layout,
                    &a.slice(a_at, a.len()),
                    a_stride as u32,
                );
                let fb = cmma::Matrix::<F>::from_slice(
                    MatrixIdent::B,
                    TILE,
                    TILE,
                    TILE,
                    b_layout,
                    &b.slice(b_at, b.len()),
                    b_stride as u32,
                );
                cmma::execute(&fa, &fb, &acc, &acc);
            }
            cmma::store(&mut c.slice_mut(c_at, c.len()), &acc, c_stride as u32, MatrixLayout::RowMajor);
        }
    } else {
        let mut e = unit;
        while e < TILE * n {
            let r = e / n;
            let col = e % n;
            let mut sum = 0.0f32;
            if comptime!(accumulate) {
                sum = c[c_off + r * c_stride + col];
            }
            for kk in 0..kd {
                let mut ai = a_off + r * a_stride + kk;
                if comptime!(a_cols) {
                    ai = a_off + kk * a_stride + r;
                }
                let mut bi = b_off + kk * b_stride + col;
                if comptime!(b_cols) {
                    bi = b_off + col * b_stride + kk;
                }
                sum = fma(f32::cast_from(a[ai]), f32::cast_from(b[bi]), sum);
            }
            c[c_off + r * c_stride + col] = sum;
            e += comptime!(shape.units);
        }
    }
}

/// `C = A · Bᵀ` for one group: `A` and `B` 16 rows of `dp` (`B` from 0), `C` 16 × 16 f32 (scores).
#[cube]
pub(super) fn tile_scores<F: Float>(
    a: &[F],
    a_off: usize,
    b: &[F],
    c: &mut [f32],
    c_off: usize,
    #[comptime] shape: TiledShape,
    unit: usize,
) {
    let dp = comptime!(shape.dp);
    tile_product(a, a_off, dp, false, b, 0, dp, true, c, c_off, TILE, dp, TILE, false, shape, unit);
}

/// `C += A · B` for one group: `A` 16 × 16 (probabilities or their gradients), `B` 16 rows of
/// `dp` (from 0), `C` 16 rows of `dp`, f32.
#[cube]
pub(super) fn tile_accumulate<F: Float>(
    a: &[F],
    a_off: usize,
    b: &[F],
    c: &mut [f32],
    c_off: usize,
    #[comptime] shape: TiledShape,
    unit: usize,
) {
    let dp = comptime!(shape.dp);
    tile_product(a, a_off, TILE, false, b, 0, dp, false, c, c_off, dp, TILE, dp, true, shape, unit);
}

/// Copies rows `first..first + rows` of the `len` rows from `row0` of `src` (`d` wide) into
/// `dst` (`dp` wide, from 0, in the staged type), zero past `len` and past `d`; every unit of the
/// cube takes part.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_rows<F: Float, S: Float>(
    src: &[F],
    row0: usize,
    first: usize,
    len: usize,
    dst: &mut [S],
    #[comptime] rows: usize,
    #[comptime] shape: TiledShape,
) {
    let d = comptime!(shape.d);
    let dp = comptime!(shape.dp);
    let mut i = UNIT_POS as usize;
    while i < rows * dp {
        let r = i / dp;
        let c = i % dp;
        let mut x = S::new(0.0);
        if first + r < len && c < d {
            x = S::cast_from(src[(row0 + first + r) * d + c]);
        }
        dst[i] = x;
        i += comptime!(shape.cube_units());
    }
}

/// Sets `dst[0..n]` to zero, every unit of the cube taking part.
#[cube]
pub(super) fn zero_shared(dst: &mut [f32], #[comptime] n: usize, #[comptime] shape: TiledShape) {
    let mut i = UNIT_POS as usize;
    while i < n {
        dst[i] = 0.0f32;
        i += comptime!(shape.cube_units());
    }
}

/// The keys the cube's query rows `t0..` (of head row `q_row0`) can see, `[lo, hi)`: the union of
/// their four-row tiles' ranges (`flash_mask.rs`), through `scratch` (two per tile).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn cube_key_range(
    blocks: &[f32],
    segments: &[f32],
    scratch: &mut [u32],
    b: usize,
    q_row0: usize,
    t0: usize,
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
        let first = t0 + TILE_ROWS * i;
        let mut lo = s_len;
        let mut hi = 0usize;
        if first < t_len {
            let qt = tile(blocks, segments, b, q_row0, first, t_len, q_offset, s_len);
            lo = key_lo(blocks, segments, b, s_len, window, &qt, flags);
            hi = key_hi(blocks, segments, b, s_len, &qt, flags);
        }
        scratch[2 * i] = lo as u32;
        scratch[2 * i + 1] = hi as u32;
        i += comptime!(shape.cube_units());
    }
    range_union(scratch, s_len, tiles)
}

/// Once every tile has written its range `[lo, hi)` into `scratch` (two values a tile): the
/// smallest range holding them all (`none` past every index, empty ranges `[none, 0)`).
#[cube]
pub(super) fn range_union(scratch: &mut [u32], none: usize, #[comptime] tiles: usize) -> (usize, usize) {
    sync_cube();
    let mut lo = none;
    let mut hi = 0usize;
    for i in 0..tiles {
        lo = min(lo, scratch[2 * i] as usize);
        hi = max(hi, scratch[2 * i + 1] as usize);
    }
    (lo, hi)
}

#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked)]
fn tiled_forward_kernel<F: Float, S: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    out: &mut [F],
    lse: &mut [f32],
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
    let d = comptime!(shape.d);
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
    let mut k_s = Shared::<[S]>::new_aligned_slice(comptime!(TILE * dp), 32usize);
    let mut v_s = Shared::<[S]>::new_aligned_slice(comptime!(TILE * dp), 32usize);
    let mut p_s = Shared::<[S]>::new_aligned_slice(comptime!(rows * TILE), 32usize);
    let mut o_s = Shared::<[f32]>::new_aligned_slice(comptime!(rows * dp), 32usize);
    let mut s_s = Shared::<[f32]>::new_aligned_slice(comptime!(rows * TILE), 32usize);
    let mut m_s = Shared::<[f32]>::new_slice(rows);
    let mut l_s = Shared::<[f32]>::new_slice(rows);
    let mut c_s = Shared::<[f32]>::new_slice(rows);
    let mut range_s = Shared::<[u32]>::new_slice(comptime!(rows / 2));

    stage_rows(q, q_row0, t0, t_len, &mut q_s, rows, shape);
    zero_shared(&mut o_s, comptime!(rows * dp), shape);
    let mut r = UNIT_POS as usize;
    while r < rows {
        m_s[r] = f32::new(NONE);
        l_s[r] = 0.0f32;
        r += comptime!(shape.cube_units());
    }
    let (lo, hi) =
        cube_key_range(blocks, segments, &mut range_s, b, q_row0, t0, t_len, s_len, q_offset, window, shape, flags);
    let mut kb = (lo / TILE) * TILE;
    while kb < hi {
        sync_cube();
        stage_rows(k, kv_row0, kb, s_len, &mut k_s, TILE, shape);
        stage_rows(v, kv_row0, kb, s_len, &mut v_s, TILE, shape);
        sync_cube();
        // The group's scores against the block: S = Q·Kᵀ (K read column-major).
        tile_scores(&q_s, g * TILE * dp, &k_s, &mut s_s, g * TILE * TILE, shape, u);
        sync_cube();
        // Online softmax, one row per unit at a time: scale and mask, move to the new max,
        // rescale the row's sum, write the probabilities and the row's rescaling factor.
        let mut r = u;
        while r < TILE {
            let row = g * TILE + r;
            let t = t0 + row;
            let pos = t + q_offset;
            let bq = id_at(blocks, b, pos, s_len, 0.0);
            let sq = id_at(segments, b, pos, s_len, -1.0);
            let m_old = m_s[row];
            let mut m_new = m_old;
            for j in 0..TILE {
                let key = kb + j;
                let mut s = f32::new(NONE);
                if t < t_len
                    && key < s_len
                    && visible(blocks, keep, segments, b, pos, key, bq, sq, s_len, window, flags)
                {
                    s = s_s[row * TILE + j] * scale;
                }
                s_s[row * TILE + j] = s;
                m_new = max(m_new, s);
            }
            let c = f32::exp(m_old - m_new);
            let mut sum = 0.0f32;
            for j in 0..TILE {
                let mut p = 0.0f32;
                if m_new > f32::new(NONE) {
                    p = f32::exp(s_s[row * TILE + j] - m_new);
                }
                sum += p;
                p_s[row * TILE + j] = S::cast_from(p);
            }
            l_s[row] = l_s[row] * c + sum;
            m_s[row] = m_new;
            c_s[row] = c;
            r += units;
        }
        sync_cube();
        // The group's output rows rescaled to their new maxima, every unit of the group taking
        // part; then O += P·V.
        let mut e = u;
        while e < TILE * dp {
            let at = g * TILE * dp + e;
            o_s[at] = o_s[at] * c_s[g * TILE + e / dp];
            e += units;
        }
        sync_cube();
        tile_accumulate(&p_s, g * TILE * TILE, &v_s, &mut o_s, g * TILE * dp, shape, u);
        kb += TILE;
    }
    sync_cube();
    let mut i = UNIT_POS as usize;
    while i < rows * dp {
        let row = i / dp;
        let c = i % dp;
        let t = t0 + row;
        if t < t_len && c < d {
            let l = l_s[row];
            let mut x = 0.0f32;
            if l > 0.0 {
                x = o_s[i] / l;
            }
            out[(q_row0 + t) * d + c] = F::cast_from(x);
        }
        i += comptime!(shape.cube_units());
    }
    let mut r = UNIT_POS as usize;
    while r < rows {
        let t = t0 + r;
        if t < t_len {
            let l = l_s[r];
            let mut stat = f32::new(-NONE);
            if l > 0.0 {
                stat = m_s[r] + f32::ln(l);
            }
            lse[q_row0 + t] = stat;
        }
        r += comptime!(shape.cube_units());
    }
}

/// Shared memory of the forward with `groups` groups (`elem`: the staged type's bytes): queries,
/// output, scores and probabilities per group, one block of keys and values, the row statistics.
pub(super) fn forward_bytes(groups: usize, dp: usize, elem: usize) -> usize {
    let rows = TILE * groups;
    rows * dp * (elem + 4) + rows * TILE * (4 + elem) + 2 * TILE * dp * elem + rows * 12 + rows * 2
}

/// The tiled layout for `q`'s shape on its device, `None` when one group's shared memory is more
/// than the device has (the CPU-shaped kernel takes over).
pub(super) fn forward_shape(q: &Tensor) -> Option<TiledShape> {
    TiledShape::choose(q, forward_bytes)
}

/// Tiled forward. `q: [B, H, T, D]`, `k, v: [B, Hkv, S, D]` (shapes checked by the caller), with
/// the layout `shape`. Returns the output `[B, H, T, D]` and the log-sum-exp per row `[B, H, T]`.
pub(super) fn tiled_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: &AttentionMask,
    shape: TiledShape,
) -> Result<(Tensor, Tensor)> {
    let (b, h, t, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let (hkv, s) = (k.dim(1), k.dim(2));
    let dev = q.device();
    if q.numel() == 0 || s == 0 {
        return Ok((Tensor::zeros(dev, q.shape(), q.dtype())?, Tensor::full(dev, &[b, h, t], -NONE, DType::F32)?));
    }
    debug_assert_eq!(shape.d, d);
    let out = Tensor::uninit(dev, q.shape(), q.dtype())?;
    let lse = Tensor::uninit(dev, &[b, h, t], DType::F32)?;
    let count = CubeCount::Static(t.div_ceil(shape.rows()) as u32, (b * h) as u32, 1);
    let dim = CubeDim::new_1d(shape.cube_units() as u32);
    let [blocks, keep, segments] = mask_buffers(mask, &lse);
    launch_staged!(q.dtype(), shape.bf16_products, F, S => unsafe {
        tiled_forward_kernel::launch_unchecked::<F, S>(
            dev.client(), count, dim,
            buf(q), buf(k), buf(v), buf(&out), buf(&lse), buf(blocks), buf(keep), buf(segments),
            h, h / hkv, t, s, mask.q_offset, mask.window.unwrap_or(0), scale,
            shape, MaskFlags::of(mask),
        )
    });
    Ok((out, lse))
}
