//! The matmul kernel and its entry functions. Register blocking: every unit owns tiles of
//! 8 rows × 2 vectors of C and walks K with fused multiply-adds in f32; A is read as scalars
//! (any row/col stride, so a transposed A costs nothing), B and C along N in vectors of the
//! widest width dividing N, at most one of the CPU's registers (16 f32 lanes with AVX-512, 8
//! with AVX2: the 16 accumulators must fit its register file). B is read either in place
//! (`[K, N]`, rows N apart) or packed in panels (`pack.rs`: a transposed B, and a large one);
//! a B used for several products can be packed once ([`PreparedB`]). Units step through tiles
//! grid-stride, rows fastest, so one unit's consecutive tiles reuse the same panel of B from
//! cache; K is walked in blocks sized from the CPU's caches (`blocking.rs`), all tiles taking
//! one block before the next.

use super::transpose;
use super::{Layout, Needs};
use crate::reduce;
use cubecl::prelude::*;
use lapidary_core::{Error, Result, Tensor, launch};

/// Super-block of tiles (in 8-row x 2-vector tiles): 64 rows x 16 vectors of C.
const SB_M: usize = super::blocking::SUPER_ROWS;
const SB_N: usize = super::blocking::SUPER_COLS;
/// Shortest K read in place by the `A · Bᵀ` kernel.
const NT_MIN_K: usize = 64;
/// Fewest rows of A for which packing B pays: below, `A · Bᵀ` reads B in place.
const PACK_MIN_M: usize = 32;
/// Smallest B (values) packed when not transposed (in this crate's tests 4,096, so that small
/// products, cheap under CPU emulation, take the packed route too).
const PACK_MIN_B: usize = if cfg!(test) { 1 << 12 } else { 1 << 20 };
/// Below this K, a transposed B's gradient is taken as the transpose of `Aᵀ · dC` (CPU).
const SHORT_K: usize = 32;
/// Longest K for which a large B that is not transposed is packed; beyond, B is read in place
/// (each block of K reads only its rows of B).
const PACK_MAX_K: usize = 4096;

// Kernel code: `div_ceil` is not in the cube language.
#[allow(clippy::manual_div_ceil)]
#[cube(launch_unchecked)]
fn matmul_kernel<F: Float, N: Size>(
    a: &[F],
    b: &[Vector<F, N>],
    bias: &[Vector<F, N>],
    addend: &[Vector<F, N>],
    c: &mut [Vector<F, N>],
    batches: usize,
    m: usize,
    k: usize,
    n_vec: usize,
    a_row_stride: usize,
    a_col_stride: usize,
    a_batch_stride: usize,
    b_batch_stride: usize,
    k_block: usize,
    #[comptime] has_bias: bool,
    #[comptime] has_addend: bool,
    #[comptime] packed: bool,
) {
    let tiles_m = (m + 7) / 8;
    let tiles_n = (n_vec + 1) / 2;
    // Tiles are walked in super-blocks of SB_M x SB_N tiles (rows fastest), so a unit's
    // consecutive tiles share both a block of A rows and a panel of B in cache.
    let sb_rows = (tiles_m + SB_M - 1) / SB_M;
    let sb_cols = (tiles_n + SB_N - 1) / SB_N;
    let per_sb = SB_M * SB_N;
    let total = batches * sb_rows * sb_cols * per_sb;
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    // K is walked in blocks of `k_block` (`blocking.rs`): every tile takes one block, then the
    // next, so a block of A and B stays in cache while all tiles use it, and B is read from
    // memory once whatever M (a tile's partial sums wait in C between blocks, C swept once per
    // block, as BLIS's loop order does). f32 C only: the caller passes k_block = k otherwise, so
    // a 16-bit C is never rounded midway.
    let mut k0 = 0;
    while k0 < k {
        let k1 = min(k0 + k_block, k);
        let first = k0 == 0;
        let last = k1 == k;
        let mut t = ABSOLUTE_POS;
        while t < total {
            let local = t % per_sb;
            let sb = t / per_sb;
            let tm = (sb % sb_rows) * SB_M + local % SB_M;
            let tn = ((sb / sb_rows) % sb_cols) * SB_N + local / SB_M;
            let bi = sb / (sb_rows * sb_cols);
            if tm < tiles_m && tn < tiles_n {
                let r0 = tm * 8;
                // Rows and the second vector past the edge are clamped for loads, skipped for stores.
                let r1 = min(r0 + 1, m - 1);
                let r2 = min(r0 + 2, m - 1);
                let r3 = min(r0 + 3, m - 1);
                let r4 = min(r0 + 4, m - 1);
                let r5 = min(r0 + 5, m - 1);
                let r6 = min(r0 + 6, m - 1);
                let r7 = min(r0 + 7, m - 1);
                let j0 = tn * 2;
                let j1 = min(j0 + 1, n_vec - 1);
                let a_base = bi * a_batch_stride;
                let a0 = a_base + r0 * a_row_stride;
                let a1 = a_base + r1 * a_row_stride;
                let a2 = a_base + r2 * a_row_stride;
                let a3 = a_base + r3 * a_row_stride;
                let a4 = a_base + r4 * a_row_stride;
                let a5 = a_base + r5 * a_row_stride;
                let a6 = a_base + r6 * a_row_stride;
                let a7 = a_base + r7 * a_row_stride;
                let b_base = bi * b_batch_stride;

                let zero = Vector::<f32, N>::new(0.0f32);
                let mut c00 = zero;
                let mut c01 = zero;
                let mut c10 = zero;
                let mut c11 = zero;
                let mut c20 = zero;
                let mut c21 = zero;
                let mut c30 = zero;
                let mut c31 = zero;
                let mut c40 = zero;
                let mut c41 = zero;
                let mut c50 = zero;
                let mut c51 = zero;
                let mut c60 = zero;
                let mut c61 = zero;
                let mut c70 = zero;
                let mut c71 = zero;
                if first && has_addend {
                    // C starts from the addend (C's layout), at clamped positions.
                    let c_base = bi * m * n_vec;
                    c00 = Vector::cast_from(addend[c_base + r0 * n_vec + j0]);
                    c01 = Vector::cast_from(addend[c_base + r0 * n_vec + j1]);
                    c10 = Vector::cast_from(addend[c_base + r1 * n_vec + j0]);
                    c11 = Vector::cast_from(addend[c_base + r1 * n_vec + j1]);
                    c20 = Vector::cast_from(addend[c_base + r2 * n_vec + j0]);
                    c21 = Vector::cast_from(addend[c_base + r2 * n_vec + j1]);
                    c30 = Vector::cast_from(addend[c_base + r3 * n_vec + j0]);
                    c31 = Vector::cast_from(addend[c_base + r3 * n_vec + j1]);
                    c40 = Vector::cast_from(addend[c_base + r4 * n_vec + j0]);
                    c41 = Vector::cast_from(addend[c_base + r4 * n_vec + j1]);
                    c50 = Vector::cast_from(addend[c_base + r5 * n_vec + j0]);
                    c51 = Vector::cast_from(addend[c_base + r5 * n_vec + j1]);
                    c60 = Vector::cast_from(addend[c_base + r6 * n_vec + j0]);
                    c61 = Vector::cast_from(addend[c_base + r6 * n_vec + j1]);
                    c70 = Vector::cast_from(addend[c_base + r7 * n_vec + j0]);
                    c71 = Vector::cast_from(addend[c_base + r7 * n_vec + j1]);
                }
                if !first {
                    // The partial sums of the blocks before, at clamped positions (never stored).
                    let c_base = bi * m * n_vec;
                    c00 = Vector::cast_from(c[c_base + r0 * n_vec + j0]);
                    c01 = Vector::cast_from(c[c_base + r0 * n_vec + j1]);
                    c10 = Vector::cast_from(c[c_base + r1 * n_vec + j0]);
                    c11 = Vector::cast_from(c[c_base + r1 * n_vec + j1]);
                    c20 = Vector::cast_from(c[c_base + r2 * n_vec + j0]);
                    c21 = Vector::cast_from(c[c_base + r2 * n_vec + j1]);
                    c30 = Vector::cast_from(c[c_base + r3 * n_vec + j0]);
                    c31 = Vector::cast_from(c[c_base + r3 * n_vec + j1]);
                    c40 = Vector::cast_from(c[c_base + r4 * n_vec + j0]);
                    c41 = Vector::cast_from(c[c_base + r4 * n_vec + j1]);
                    c50 = Vector::cast_from(c[c_base + r5 * n_vec + j0]);
                    c51 = Vector::cast_from(c[c_base + r5 * n_vec + j1]);
                    c60 = Vector::cast_from(c[c_base + r6 * n_vec + j0]);
                    c61 = Vector::cast_from(c[c_base + r6 * n_vec + j1]);
                    c70 = Vector::cast_from(c[c_base + r7 * n_vec + j0]);
                    c71 = Vector::cast_from(c[c_base + r7 * n_vec + j1]);
                }
                // Packed B: the tile's panel holds its two vectors of each step side by side.
                let panel = b_base + tn * k * 2;
                for p in k0..k1 {
                    let (i0, i1) = if packed {
                        (panel + p * 2, panel + p * 2 + 1)
                    } else {
                        (b_base + p * n_vec + j0, b_base + p * n_vec + j1)
                    };
                    let b0 = Vector::<f32, N>::cast_from(b[i0]);
                    let b1 = Vector::<f32, N>::cast_from(b[i1]);
                    let ap = p * a_col_stride;
                    let v0 = Vector::<f32, N>::new(f32::cast_from(a[a0 + ap]));
                    let v1 = Vector::<f32, N>::new(f32::cast_from(a[a1 + ap]));
                    let v2 = Vector::<f32, N>::new(f32::cast_from(a[a2 + ap]));
                    let v3 = Vector::<f32, N>::new(f32::cast_from(a[a3 + ap]));
                    let v4 = Vector::<f32, N>::new(f32::cast_from(a[a4 + ap]));
                    let v5 = Vector::<f32, N>::new(f32::cast_from(a[a5 + ap]));
                    let v6 = Vector::<f32, N>::new(f32::cast_from(a[a6 + ap]));
                    let v7 = Vector::<f32, N>::new(f32::cast_from(a[a7 + ap]));
                    c00 = fma(v0, b0, c00);
                    c01 = fma(v0, b1, c01);
                    c10 = fma(v1, b0, c10);
                    c11 = fma(v1, b1, c11);
                    c20 = fma(v2, b0, c20);
                    c21 = fma(v2, b1, c21);
                    c30 = fma(v3, b0, c30);
                    c31 = fma(v3, b1, c31);
                    c40 = fma(v4, b0, c40);
                    c41 = fma(v4, b1, c41);
                    c50 = fma(v5, b0, c50);
                    c51 = fma(v5, b1, c51);
                    c60 = fma(v6, b0, c60);
                    c61 = fma(v6, b1, c61);
                    c70 = fma(v7, b0, c70);
                    c71 = fma(v7, b1, c71);
                }
                if has_bias && last {
                    let bias0 = Vector::<f32, N>::cast_from(bias[j0]);
                    let bias1 = Vector::<f32, N>::cast_from(bias[j1]);
                    c00 += bias0;
                    c01 += bias1;
                    c10 += bias0;
                    c11 += bias1;
                    c20 += bias0;
                    c21 += bias1;
                    c30 += bias0;
                    c31 += bias1;
                    c40 += bias0;
                    c41 += bias1;
                    c50 += bias0;
                    c51 += bias1;
                    c60 += bias0;
                    c61 += bias1;
                    c70 += bias0;
                    c71 += bias1;
                }
                let second = j0 + 1 < n_vec;
                let out0 = (bi * m + r0) * n_vec + j0;
                c[out0] = Vector::cast_from(c00);
                if second {
                    c[out0 + 1] = Vector::cast_from(c01);
                }
                if r0 + 1 < m {
                    c[out0 + n_vec] = Vector::cast_from(c10);
                    if second {
                        c[out0 + n_vec + 1] = Vector::cast_from(c11);
                    }
                }
                if r0 + 2 < m {
                    c[out0 + 2 * n_vec] = Vector::cast_from(c20);
                    if second {
                        c[out0 + 2 * n_vec + 1] = Vector::cast_from(c21);
                    }
                }
                if r0 + 3 < m {
                    c[out0 + 3 * n_vec] = Vector::cast_from(c30);
                    if second {
                        c[out0 + 3 * n_vec + 1] = Vector::cast_from(c31);
                    }
                }
                if r0 + 4 < m {
                    c[out0 + 4 * n_vec] = Vector::cast_from(c40);
                    if second {
                        c[out0 + 4 * n_vec + 1] = Vector::cast_from(c41);
                    }
                }
                if r0 + 5 < m {
                    c[out0 + 5 * n_vec] = Vector::cast_from(c50);
                    if second {
                        c[out0 + 5 * n_vec + 1] = Vector::cast_from(c51);
                    }
                }
                if r0 + 6 < m {
                    c[out0 + 6 * n_vec] = Vector::cast_from(c60);
                    if second {
                        c[out0 + 6 * n_vec + 1] = Vector::cast_from(c61);
                    }
                }
                if r0 + 7 < m {
                    c[out0 + 7 * n_vec] = Vector::cast_from(c70);
                    if second {
                        c[out0 + 7 * n_vec + 1] = Vector::cast_from(c71);
                    }
                }
            }
            t += stride;
        }
        k0 = k1;
    }
}

/// `op(a) · op(b) (+ bias)`, where `op` transposes the last two dims when asked.
///
/// - `a`: `[..., M, K]` (`[..., K, M]` with `trans_a`)
/// - `b`: `[..., K, N]` (`[..., N, K]` with `trans_b`), with the same leading dims as `a`, or
///   rank 2 to share one matrix across the batch (a weight)
/// - `bias`: `[N]`, added to every row
///
/// Returns `[..., M, N]` in `a`'s dtype; all operands must share dtype and device.
pub fn matmul(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, layout: Layout) -> Result<Tensor> {
    matmul_impl(a, b, bias, None, layout.transposes_a(), layout.transposes_b(), None)
}

/// `addend + op(a) · op(b)`: [`matmul`] starting from `addend` (the output's shape and dtype)
/// instead of zeros, so a sum such as a Linear's output plus its LoRA term costs no extra pass.
/// On the register kernel the addend is read as the accumulators' start; on the other routes
/// (A · Bᵀ read in place, GPUs) it is added after the product.
pub fn matmul_add(addend: &Tensor, a: &Tensor, b: &Tensor, layout: Layout) -> Result<Tensor> {
    matmul_impl(a, b, None, Some(addend), layout.transposes_a(), layout.transposes_b(), None)
}

/// A B prepared once for several products `a · op(b)` with different `a` (the chunks of a
/// fused output head): on the CPU its packed panels are made here, not again for each product.
#[derive(Clone, Debug)]
pub struct PreparedB {
    b: Tensor,
    trans_b: bool,
    packed: Option<Tensor>,
}

impl PreparedB {
    /// Prepares `b` (`[K, N]` for [`Layout::AB`], `[N, K]` for [`Layout::ABt`]; rank 2, shared
    /// by every product).
    pub fn new(b: &Tensor, layout: Layout) -> Result<Self> {
        Self::prepare(b, layout.b_transposed_only("PreparedB")?, false)
    }

    /// Prepares `b` for many calls (a frozen weight kept between steps): on the CPU always
    /// packed, whatever its size, since the packing is paid once. Same layouts as [`Self::new`].
    pub fn kept(b: &Tensor, layout: Layout) -> Result<Self> {
        Self::prepare(b, layout.b_transposed_only("PreparedB")?, true)
    }

    /// Packed on the CPU when the register kernel would pack it for `PACK_MIN_M` rows, or always.
    fn prepare(b: &Tensor, trans_b: bool, always: bool) -> Result<Self> {
        if b.rank() != 2 {
            return Err(Error::shape("PreparedB: b", "[K, N] or [N, K] (rank 2)", b.shape()));
        }
        let (k, n) = if trans_b { (b.dim(1), b.dim(0)) } else { (b.dim(0), b.dim(1)) };
        let packed = if b.device().is_cpu() && k > 0 && n > 0 && (always || pack_mode(PACK_MIN_M, k, n, trans_b)) {
            Some(super::pack::pack_b(b, trans_b, k, n, vector_width_n(n))?)
        } else {
            None
        };
        Ok(PreparedB { b: b.clone(), trans_b, packed })
    }

    /// The B it was prepared from.
    pub fn tensor(&self) -> &Tensor {
        &self.b
    }

    /// Whether B is read transposed (`[N, K]`).
    pub fn trans_b(&self) -> bool {
        self.trans_b
    }
}

/// [`matmul`] of `a` (`[..., M, K]`) and a prepared B (`+ bias`): the same result, without
/// preparing B again.
pub fn matmul_prepared(a: &Tensor, b: &PreparedB, bias: Option<&Tensor>) -> Result<Tensor> {
    matmul_impl(a, &b.b, bias, None, false, b.trans_b, b.packed.as_ref())
}

/// The vector width of the register kernel along N: one of the CPU's registers at most, and at
/// least two vectors when N allows it (the tile is two vectors wide).
fn vector_width_n(n: usize) -> usize {
    let mut w = launch::vector_width_up_to(&[n], launch::cpu_register_lanes());
    if n / w < 2 && w > 1 {
        w /= 2;
    }
    w
}

fn matmul_impl(
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    addend: Option<&Tensor>,
    trans_a: bool,
    trans_b: bool,
    packed: Option<&Tensor>,
) -> Result<Tensor> {
    let op = if addend.is_some() { "matmul_add" } else { "matmul" };
    if a.rank() < 2 {
        return Err(Error::shape(format!("{op}: a"), "[..., M, K] (rank >= 2)", a.shape()));
    }
    if b.rank() < 2 {
        return Err(Error::shape(format!("{op}: b"), "[..., K, N] (rank >= 2)", b.shape()));
    }
    let operands = [("b", b)].into_iter().chain(bias.map(|t| ("bias", t))).chain(addend.map(|t| ("addend", t)));
    for (name, t) in operands {
        if t.dtype() != a.dtype() {
            return Err(Error::DType {
                context: format!("{op}: {name}"),
                expected: format!("{} (as a)", a.dtype()),
                got: t.dtype(),
            });
        }
        if t.device() != a.device() {
            return Err(Error::Device(format!("{op}: a on {}, {name} on {}", a.device(), t.device())));
        }
    }
    let (m, k) = if trans_a { (a.dim(-1), a.dim(-2)) } else { (a.dim(-2), a.dim(-1)) };
    let (kb, n) = if trans_b { (b.dim(-1), b.dim(-2)) } else { (b.dim(-2), b.dim(-1)) };
    let lead = &a.shape()[..a.rank() - 2];
    let batches: usize = lead.iter().product();
    let b_shared = b.rank() == 2;
    if kb != k || (!b_shared && &b.shape()[..b.rank() - 2] != lead) {
        let want = match (trans_b, b_shared) {
            (false, true) => format!("[{k}, N]"),
            (true, true) => format!("[N, {k}]"),
            (false, false) => format!("{:?} + [{k}, N]", lead),
            (true, false) => format!("{:?} + [N, {k}]", lead),
        };
        return Err(Error::shape(
            format!("{op}: b (a is {:?}, trans_a={trans_a}, trans_b={trans_b})", a.shape()),
            want,
            b.shape(),
        ));
    }
    if let Some(bias) = bias {
        bias.expect_shape(&format!("{op}: bias"), &[n])?;
    }
    let mut out_shape = lead.to_vec();
    out_shape.extend([m, n]);
    if let Some(addend) = addend {
        addend.expect_shape(&format!("{op}: addend"), &out_shape)?;
    }
    let c = Tensor::uninit(a.device(), &out_shape, a.dtype())?;
    if m == 0 || n == 0 || batches == 0 {
        return Ok(c);
    }
    let lanes = launch::cpu_register_lanes();
    let w_k = launch::vector_width_up_to(&[k], lanes);
    // Panels made beforehand are used whenever the register kernel runs.
    let pack = packed.is_some() || pack_mode(m, k, n, trans_b);
    let read_b_in_place = trans_b && !trans_a && w_k >= 4 && k >= NT_MIN_K && m < PACK_MIN_M;
    if let Some(addend) = addend {
        if k == 0 || !a.device().is_cpu() || read_b_in_place {
            // Routes without an addend in their kernel: the product, then one add.
            return crate::elementwise::add(addend, &matmul_impl(a, b, None, None, trans_a, trans_b, packed)?);
        }
    }
    if !a.device().is_cpu() {
        // GPUs: cubek's routines (tensor cores for 16-bit operands), layouts read in place.
        super::accelerated::matmul_into(
            a,
            b,
            Layout::new(trans_a, trans_b),
            &c,
            super::accelerated::Route::for_dtype(a.dtype()),
        )?;
        return match bias {
            Some(bias) => crate::elementwise::add(&c, bias),
            None => Ok(c),
        };
    }
    if k == 0 {
        // An empty sum: zeros (and the bias).
        let zeros = Tensor::zeros(a.device(), &out_shape, a.dtype())?;
        return match bias {
            Some(bias) => crate::elementwise::add(&zeros, bias),
            None => Ok(zeros),
        };
    }
    // x · Wᵀ with W stored [N, K]: read W in place when a vector of 4 or more divides K and K
    // is long enough for the dot products to pay (a short K, such as a LoRA rank, is cheaper
    // through a transpose of the small B and the register kernel).
    // Vectors as wide as one of the CPU's registers (`lanes`): the tiles below hold 16 of them.
    if read_b_in_place {
        let k_vec = k / w_k;
        let sb = super::nt::SB;
        let tiles = batches * m.div_ceil(4 * sb) * sb * n.div_ceil(4 * sb) * sb;
        let (count, dim) = launch::grid_tiles(a.device(), tiles);
        let bias_handle = bias.map_or_else(|| c.handle().clone(), |t| t.handle().clone());
        dispatch_float!(a.dtype(), F => unsafe {
            super::nt::matmul_nt_kernel::launch_unchecked::<F>(
                a.device().client(), count, dim, w_k,
                BufferArg::from_raw_parts(a.handle().clone(), a.numel()),
                BufferArg::from_raw_parts(b.handle().clone(), b.numel()),
                BufferArg::from_raw_parts(bias_handle, if bias.is_some() { n } else { 1 }),
                BufferArg::from_raw_parts(c.handle().clone(), c.numel()),
                batches, m, n, k_vec,
                if b_shared { 0 } else { n * k_vec },
                bias.is_some(),
            )
        });
        return Ok(c);
    }
    let w = vector_width_n(n);
    let n_vec = n / w;
    let (b_kn, b_batch_stride) = if pack {
        let packed = match packed {
            Some(p) => p.clone(),
            None => super::pack::pack_b(b, trans_b, k, n, w)?,
        };
        (packed, n_vec.div_ceil(2) * k * 2)
    } else {
        // Not packed: never a transposed B (`pack_mode`), so B is read as it is.
        (b.clone(), k * n_vec)
    };
    let (a_row_stride, a_col_stride) = if trans_a { (1, m) } else { (k, 1) };
    let tiles = batches * m.div_ceil(8 * SB_M) * SB_M * n_vec.div_ceil(2 * SB_N) * SB_N;
    let (count, dim) = launch::grid_tiles(a.device(), tiles);
    let bias_handle = bias.map_or_else(|| c.handle().clone(), |t| t.handle().clone());
    let bias_len = if bias.is_some() { n } else { w };
    let addend_handle = addend.map_or_else(|| c.handle().clone(), |t| t.handle().clone());
    dispatch_float!(a.dtype(), F => unsafe {
        matmul_kernel::launch_unchecked::<F>(
            a.device().client(), count, dim, w,
            BufferArg::from_raw_parts(a.handle().clone(), a.numel()),
            BufferArg::from_raw_parts(b_kn.handle().clone(), b_kn.numel()),
            BufferArg::from_raw_parts(bias_handle, bias_len),
            BufferArg::from_raw_parts(addend_handle, c.numel()),
            BufferArg::from_raw_parts(c.handle().clone(), c.numel()),
            batches, m, k, n_vec,
            a_row_stride, a_col_stride, m * k,
            if b_shared { 0 } else { b_batch_stride },
            k_block(k, a.dtype()),
            bias.is_some(),
            addend.is_some(),
            pack,
        )
    });
    Ok(c)
}

/// Whether the register kernel reads B packed ([`super::pack`]): always for a transposed B (the
/// packing pass is the transpose), and for a large B (4 MiB of f32 or more) once A has enough
/// rows to reuse it; a small B is read in place from cache.
fn pack_mode(m: usize, k: usize, n: usize, trans_b: bool) -> bool {
    trans_b || (m >= PACK_MIN_M && k * n >= PACK_MIN_B && k <= PACK_MAX_K)
}

/// Block of K walked by all tiles before the next: from the running CPU's caches
/// ([`super::CpuBlocking`], decided once per process unless the settings change it).
fn k_block(k: usize, dtype: lapidary_core::DType) -> usize {
    #[cfg(test)]
    if let Some(block) = tests::K_BLOCK.with(|b| b.get()) {
        return super::CpuBlocking { k_block: block, ..super::CpuBlocking::current().0 }.k_block_for(k, dtype);
    }
    super::CpuBlocking::current().0.k_block_for(k, dtype)
}

/// Gradients of [`matmul`] with respect to its inputs.
#[derive(Debug)]
pub struct MatmulGrads {
    /// Gradient of `a`, in `a`'s layout.
    pub a: Option<Tensor>,
    /// Gradient of `b`, in `b`'s layout (summed over the batch when `b` is shared).
    pub b: Option<Tensor>,
    /// Gradient of the bias: `dC` summed over every row.
    pub bias: Option<Tensor>,
}

/// Backward of [`matmul`] given `dc` (shape of its output). Computes only the gradients `needs`
/// asks for, each in its input's own layout.
pub fn matmul_backward(a: &Tensor, b: &Tensor, dc: &Tensor, layout: Layout, needs: Needs) -> Result<MatmulGrads> {
    let (trans_a, trans_b) = (layout.transposes_a(), layout.transposes_b());
    let n = dc.dim(-1);
    let b_shared = b.rank() == 2 && a.rank() > 2;
    // A = op_a(A'), C = A·B. dA = dC·Bᵀ; dA' = dAᵀ when trans_a.
    let ga = if needs.a {
        // dop(A) = dC · op(B)ᵀ; stored transposed back when trans_a.
        let g = matmul(dc, b, None, Layout::new(false, !trans_b))?;
        Some(if trans_a { transpose(&g)? } else { g })
    } else {
        None
    };
    let gb = if needs.b {
        let (dc2, a2) =
            if b_shared { (flatten_rows(dc)?, flatten_rows_of(a, trans_a)?) } else { (dc.clone(), a.clone()) };
        let k = if trans_a { a2.dim(-2) } else { a2.dim(-1) };
        Some(if trans_b && k < SHORT_K && n >= 4 * k && a.device().is_cpu() {
            // dB' [N, K] with a short K (a LoRA rank): (Aᵀ · dC)ᵀ reads dC along its rows, where
            // dCᵀ · A would read it down its columns, a row apart at every step.
            transpose(&matmul(&a2, &dc2, None, Layout::new(!trans_a, false))?)?
        } else if trans_b {
            // dB' [N, K] = dCᵀ · A
            matmul(&dc2, &a2, None, Layout::new(true, trans_a))?
        } else {
            // dB [K, N] = Aᵀ · dC
            matmul(&a2, &dc2, None, Layout::new(!trans_a, false))?
        })
    } else {
        None
    };
    let gbias = if needs.bias { Some(reduce::sum_rows(&dc.reshape(&[dc.numel() / n.max(1), n])?)?) } else { None };
    Ok(MatmulGrads { a: ga, b: gb, bias: gbias })
}

/// `[..., M, N]` -> `[prod(...) * M, N]`.
fn flatten_rows(t: &Tensor) -> Result<Tensor> {
    let n = t.dim(-1);
    t.reshape(&[t.numel() / n.max(1), n])
}

/// For a shared-B gradient with `trans_a`, the batch of `[K, M]` blocks cannot be flattened into
/// one matrix without a transpose; without `trans_a` it is a plain reshape.
fn flatten_rows_of(a: &Tensor, trans_a: bool) -> Result<Tensor> {
    if trans_a {
        let t = transpose(a)?; // [..., M, K]
        let t = flatten_rows(&t)?; // [B*M, K]
        transpose(&t) // [K, B*M], read back with trans_a = true
    } else {
        flatten_rows(a)
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference;
    use super::super::{Layout, Needs};
    use crate::test_util::*;
    use lapidary_core::DType;
    use lapidary_testkit::{Tol, TolExt};
    use proptest::prelude::*;

    /// Tolerance for a dot product of `k` terms in [-1, 1) stored in `dt`.
    fn tol(dt: DType, k: usize) -> Tol {
        let t = dt.tol();
        Tol { abs: t.abs * (k as f64).sqrt().max(1.0), rel: t.rel }
    }

    fn check(
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        ta: bool,
        tb: bool,
        shared: bool,
        bias: bool,
        dt: DType,
        seed: u64,
    ) {
        let dev = device();
        let a_shape = if ta { vec![batch, k, m] } else { vec![batch, m, k] };
        let b_mat = if tb { vec![n, k] } else { vec![k, n] };
        let b_shape = if shared { b_mat.clone() } else { [vec![batch], b_mat.clone()].concat() };
        let a = random_tensor(&dev, &a_shape, dt, seed, 1.0);
        let b = random_tensor(&dev, &b_shape, dt, seed.wrapping_add(1), 1.0);
        let bias_t = bias.then(|| random_tensor(&dev, &[n], dt, seed.wrapping_add(2), 1.0));
        let (ah, bh) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        let biash = bias_t.as_ref().map(|t| t.to_f32_vec().unwrap());
        let c = super::matmul(&a, &b, bias_t.as_ref(), Layout::new(ta, tb)).unwrap();
        assert_eq!(c.shape(), &[batch, m, n]);
        let want = reference::matmul(&ah, &bh, biash.as_deref(), batch, m, k, n, Layout::new(ta, tb), shared);
        let what = format!("matmul b{batch} m{m} k{k} n{n} ta{ta} tb{tb} shared{shared} bias{bias} {dt}");
        assert_close(&what, &c.to_f32_vec().unwrap(), &want, tol(dt, k));

        // Backward against the reference: dA = dC·op(B)ᵀ, dB = op(A)ᵀ·dC, in each input's layout.
        let dc = random_tensor(&dev, &[batch, m, n], dt, seed.wrapping_add(3), 1.0);
        let dch = dc.to_f32_vec().unwrap();
        let g =
            super::matmul_backward(&a, &b, &dc, Layout::new(ta, tb), Needs { a: true, b: true, bias: bias }).unwrap();
        // dop(A)[b] = dC[b] · op(B)ᵀ  ([m, n] · [n, k])
        let d_opa = reference::matmul(&dch, &bh, None, batch, m, n, k, Layout::new(false, !tb), shared);
        let want_a = if ta { transpose_host(&d_opa, batch, m, k) } else { d_opa };
        assert_close(&format!("{what}: grad a"), &g.a.unwrap().to_f32_vec().unwrap(), &want_a, tol(dt, n));
        // dop(B) = Σ_b op(A)ᵀ · dC  ([k, m] · [m, n])
        let mut d_opb = vec![0f32; if shared { k * n } else { batch * k * n }];
        for bi in 0..batch {
            let ab = &ah[bi * m * k..(bi + 1) * m * k];
            let cb = &dch[bi * m * n..(bi + 1) * m * n];
            let part = reference::matmul(ab, cb, None, 1, k, m, n, Layout::new(!ta, false), false);
            let off = if shared { 0 } else { bi * k * n };
            for (o, p) in d_opb[off..off + k * n].iter_mut().zip(&part) {
                *o += p;
            }
        }
        let bb = if shared { 1 } else { batch };
        let want_b = if tb { transpose_host(&d_opb, bb, k, n) } else { d_opb };
        let rows = if shared { batch * m } else { m };
        assert_close(&format!("{what}: grad b"), &g.b.unwrap().to_f32_vec().unwrap(), &want_b, tol(dt, rows));
        if bias {
            let want_bias = crate::reduce::reference::sum_rows(&dch, batch * m, n);
            assert_close(
                &format!("{what}: grad bias"),
                &g.bias.unwrap().to_f32_vec().unwrap(),
                &want_bias,
                tol(dt, batch * m),
            );
        }
    }

    fn transpose_host(x: &[f32], batch: usize, r: usize, c: usize) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        for b in 0..batch {
            for i in 0..r {
                for j in 0..c {
                    y[b * r * c + j * r + i] = x[b * r * c + i * c + j];
                }
            }
        }
        y
    }

    proptest! {
        #![proptest_config(crate::test_util::cases(40))]
        #[test]
        fn matmul_forward_backward_match_reference(
            batch in 1usize..3, m in 1usize..41, k in 1usize..37, n in 1usize..41,
            ta in any::<bool>(), tb in any::<bool>(), shared in any::<bool>(), bias in any::<bool>(),
            dt in dtype_strategy(), seed in any::<u64>(),
        ) {
            check(batch, m, k, n, ta, tb, shared, bias, dt, seed);
        }
    }

    #[test]
    fn wide_vectors_and_edges() {
        // n multiple of 8 (widest vector), m not a multiple of the 8-row tile, odd vector count.
        check(2, 13, 64, 24, false, false, false, true, DType::F32, 11);
        check(1, 5, 3, 8, true, true, true, false, DType::BF16, 12);
        // A transposed B with a short K: its gradient through the transpose of Aᵀ · dC (shared
        // and batched B, A read either way).
        check(2, 9, 16, 70, true, true, true, false, DType::F32, 13);
        check(2, 9, 16, 70, false, true, false, true, DType::BF16, 14);
    }

    #[test]
    fn addend_starts_the_sum() {
        // addend + op(a)·op(b) on every route: the register kernel (edges in M and N, A
        // transposed, a shared B, K in blocks), A·Bᵀ read in place (added after), every dtype.
        let dev = device();
        for (i, (batch, m, k, n, ta, tb, shared)) in [
            (2, 13, 16, 24, false, true, true),
            (1, 9, 7, 5, true, false, false),
            (3, 4, 33, 40, false, false, false),
            (1, 11, 4100, 24, false, false, true),
            (2, 6, 64, 19, false, true, true),
        ]
        .into_iter()
        .enumerate()
        {
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let seed = 300 + 10 * i as u64;
                let a_shape = if ta { vec![batch, k, m] } else { vec![batch, m, k] };
                let b_mat = if tb { vec![n, k] } else { vec![k, n] };
                let b_shape = if shared { b_mat } else { [vec![batch], b_mat].concat() };
                let a = random_tensor(&dev, &a_shape, dt, seed, 1.0);
                let b = random_tensor(&dev, &b_shape, dt, seed + 1, 1.0);
                let addend = random_tensor(&dev, &[batch, m, n], dt, seed + 2, 4.0);
                let (ah, bh, dh) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap(), addend.to_f32_vec().unwrap());
                let prod = reference::matmul(&ah, &bh, None, batch, m, k, n, Layout::new(ta, tb), shared);
                let want: Vec<f32> = prod.iter().zip(&dh).map(|(p, d)| p + d).collect();
                let got = super::matmul_add(&addend, &a, &b, Layout::new(ta, tb)).unwrap();
                assert_eq!(got.shape(), &[batch, m, n]);
                let what = format!("matmul_add b{batch} m{m} k{k} n{n} ta{ta} tb{tb} shared{shared} {dt}");
                assert_close(&what, &got.to_f32_vec().unwrap(), &want, tol(dt, k));
            }
        }
        let a = random_tensor(&dev, &[3, 4], DType::F32, 1, 1.0);
        let b = random_tensor(&dev, &[4, 5], DType::F32, 2, 1.0);
        let e = super::matmul_add(&random_tensor(&dev, &[3, 4], DType::F32, 3, 1.0), &a, &b, Layout::AB);
        assert!(e.unwrap_err().to_string().contains("matmul_add: addend"));
    }

    thread_local! {
        /// A block of K this thread's products use instead of the CPU's (`k_block`).
        pub(super) static K_BLOCK: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    }

    #[test]
    fn long_k_walked_in_blocks() {
        // K beyond the CPU's block (a vocabulary-sized product): f32 walks K in blocks with
        // partial sums kept in C — a last block shorter than the others, edges in M and N, the
        // bias added once, A transposed (a head's weight gradient) or not; bf16 in one block.
        check(2, 11, 4100, 24, false, false, false, true, DType::F32, 21);
        check(1, 9, 5000, 33, true, false, true, true, DType::F32, 22);
        check(1, 3, 4611, 16, false, false, true, false, DType::BF16, 23);
    }

    #[test]
    fn any_block_of_k_gives_the_same_bits() {
        // The block is the CPU's choice, so it must not change the result: every element is
        // summed in K's order whatever the block (f32 partial sums wait in C exactly).
        let dev = device();
        for (m, k, n, ta, tb, bias, seed) in [
            (37, 700, 72, false, false, true, 61),
            (40, 1000, 48, true, false, false, 62),
            (33, 520, 96, false, true, true, 63),
            (9, 600, 40, false, false, false, 64),
        ] {
            let (a_shape, b_shape) = (if ta { [k, m] } else { [m, k] }, if tb { [n, k] } else { [k, n] });
            let a = random_tensor(&dev, &a_shape, DType::F32, seed, 1.0);
            let b = random_tensor(&dev, &b_shape, DType::F32, seed + 100, 1.0);
            let bias = bias.then(|| random_tensor(&dev, &[n], DType::F32, seed + 200, 1.0));
            let product = |block: usize| {
                K_BLOCK.with(|b| b.set(Some(block)));
                let c = super::matmul(&a, &b, bias.as_ref(), Layout::new(ta, tb)).unwrap().to_f32_vec().unwrap();
                K_BLOCK.with(|b| b.set(None));
                c
            };
            let whole = product(k);
            for block in [64, 160, 256] {
                let blocked = product(block);
                let differ = whole.iter().zip(&blocked).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                assert_eq!(differ, 0, "m{m} k{k} n{n} ta{ta} tb{tb}: block {block} changed {differ} values");
            }
        }
    }

    #[test]
    fn large_b_packed_in_panels() {
        // A large B (in these tests 4,096 values or more), with 32 rows of A or more, is packed
        // before the product; a transposed B always is: edges in M and N (an odd count of
        // vectors: the last panel repeats its vector), a batch of B's, K in blocks, every dtype.
        check(1, 37, 64, 130, false, false, true, true, DType::F32, 41);
        check(2, 33, 96, 72, false, false, false, false, DType::BF16, 42);
        check(1, 40, 20, 250, true, false, true, false, DType::F32, 43);
        check(2, 45, 300, 72, false, true, false, true, DType::F16, 44);
        check(1, 5, 4200, 12, false, true, true, false, DType::F32, 45);
    }

    #[test]
    fn weights_read_in_place_along_k() {
        // trans_b without trans_a, fewer than 32 rows, K of at least 64 and a multiple of 4, 8
        // or 16: the A·Bᵀ kernel (33 rows: packed), with edges in both M and N (not multiples
        // of its 4 x 4 tile), shared and batched B, every dtype.
        for (i, (batch, m, k, n, shared, bias)) in [
            (2, 13, 64, 23, true, true),
            (1, 5, 68, 9, true, false),
            (3, 7, 72, 6, false, true),
            (1, 33, 96, 65, true, true),
            (2, 1, 80, 1, false, false),
        ]
        .into_iter()
        .enumerate()
        {
            for dt in [DType::F32, DType::BF16, DType::F16] {
                check(batch, m, k, n, false, true, shared, bias, dt, 100 + i as u64);
            }
        }
    }

    #[test]
    fn prepared_b_gives_the_products_of_b() {
        // One B prepared per call (packed when it would be) or kept (always packed), then
        // products with A's of several row counts (below 32: read in place or with the kept
        // panels; above: the panels) and a batch of A's sharing it, against the reference. K of
        // 4,100 is walked in blocks, through panels only when kept.
        let dev = device();
        let cases = [(96, 70, true), (40, 33, true), (80, 70, false), (64, 48, false), (4100, 20, false)];
        for (i, (k, n, tb)) in cases.into_iter().enumerate() {
            for (dt, kept) in [(DType::F32, false), (DType::F32, true), (DType::BF16, false), (DType::BF16, true)] {
                let seed = 500 + 10 * i as u64;
                let b = random_tensor(&dev, &if tb { [n, k] } else { [k, n] }, dt, seed, 1.0);
                let prepared = if kept {
                    super::PreparedB::kept(&b, Layout::new(false, tb)).unwrap()
                } else {
                    super::PreparedB::new(&b, Layout::new(false, tb)).unwrap()
                };
                let bh = b.to_f32_vec().unwrap();
                for (batches, m) in [(1, 3), (1, 37), (2, 19)] {
                    let a = random_tensor(&dev, &[batches, m, k], dt, seed + m as u64, 1.0);
                    let ah = a.to_f32_vec().unwrap();
                    let want: Vec<f32> = (0..batches)
                        .flat_map(|bi| {
                            let a_bi = &ah[bi * m * k..(bi + 1) * m * k];
                            reference::matmul(a_bi, &bh, None, 1, m, k, n, Layout::new(false, tb), true)
                        })
                        .collect();
                    let got = super::matmul_prepared(&a, &prepared, None).unwrap();
                    assert_eq!(got.shape(), &[batches, m, n]);
                    let what = format!("matmul_prepared {batches}x{m} k{k} n{n} tb{tb} {dt} kept {kept}");
                    assert_close(&what, &got.to_f32_vec().unwrap(), &want, tol(dt, k));
                }
            }
        }
        let b3 = random_tensor(&dev, &[2, 4, 5], DType::F32, 1, 1.0);
        assert!(super::PreparedB::new(&b3, Layout::AB).unwrap_err().to_string().contains("PreparedB: b"));
        assert!(super::PreparedB::kept(&b3, Layout::ABt).unwrap_err().to_string().contains("PreparedB: b"));
        let b2 = random_tensor(&dev, &[3, 4], DType::F32, 1, 1.0);
        let e = super::PreparedB::new(&b2, Layout::AtB).unwrap_err().to_string();
        assert!(e.contains("PreparedB") && e.contains("AtB"), "{e}");
    }

    #[test]
    fn shape_errors_name_the_operand() {
        let dev = device();
        let a = random_tensor(&dev, &[2, 3, 4], DType::F32, 1, 1.0);
        let b = random_tensor(&dev, &[5, 6], DType::F32, 2, 1.0);
        let e = super::matmul(&a, &b, None, Layout::AB).unwrap_err().to_string();
        assert!(e.contains("matmul: b") && e.contains("[4, N]") && e.contains("[5, 6]"), "{e}");
        let b = random_tensor(&dev, &[4, 6], DType::BF16, 2, 1.0);
        let e = super::matmul(&a, &b, None, Layout::AB).unwrap_err().to_string();
        assert!(e.contains("expected dtype F32") && e.contains("BF16"), "{e}");
        let b = random_tensor(&dev, &[4, 6], DType::F32, 2, 1.0);
        let bias = random_tensor(&dev, &[5], DType::F32, 3, 1.0);
        let e = super::matmul(&a, &b, Some(&bias), Layout::AB).unwrap_err().to_string();
        assert!(e.contains("bias") && e.contains("[6]"), "{e}");
    }
}
