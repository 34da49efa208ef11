//! The GPU matmul: `op(A) · op(B)` through cubek-matmul's routines, every transpose layout read
//! in place through strides (no transpose pass), a rank-2 B broadcast over the batch.
//!
//! - [`Route::TensorCores`]: bf16/f16 operands on tensor cores (CMMA), f32 accumulation, stored
//!   in the operands' dtype: cubek's double-buffered cyclic routine.
//! - [`Route::Units`]: cubek's unit routine, for f32 (no TF32: f32 stays f32, as in PyTorch with
//!   TF32 off).
//!
//! Each falls back along tensor cores → units → cubek's register-tiled routine when a routine is
//! unavailable on the device (no tensor cores for the type; a stage larger than the device's
//! shared memory, as the CPU runtime's 32 KiB is for some 16-bit layouts).
//!
//! The CPU runtime keeps lapidary's register kernels (faster there). The tests run both routes on
//! it, with the bindings a GPU gets, so layouts and batching are checked everywhere and the unit
//! routine's numerics too; the tensor-core kernels are compiled for sm_80/sm_90 by `cargo xtask
//! cuda-check`. Not here: the bias (added by the caller) and packed NF4 bases (expanded before
//! the call).

use super::Layout;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::std::tensor::TensorHandle;
use cubek_matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulSetupError};
use cubek_matmul::launch::launch_ref;
use cubek_matmul::strategy::Strategy;
use cubek_matmul::{multi_level, tiled};
use lapidary_core::{DType, Error, Result, Tensor};

/// Which cubek routine computes the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Tensor cores (CMMA) where the device has them for the dtype, else [`Route::Units`].
    TensorCores,
    /// One output tile per unit, no tensor cores.
    Units,
}

impl Route {
    /// The route a GPU takes for `dtype`: tensor cores for 16-bit operands, units for f32.
    pub fn for_dtype(dtype: DType) -> Route {
        match dtype {
            DType::BF16 | DType::F16 => Route::TensorCores,
            DType::F32 => Route::Units,
        }
    }
}

fn elem(dtype: DType) -> ElemType {
    ElemType::Float(match dtype {
        DType::F32 => FloatKind::F32,
        DType::BF16 => FloatKind::BF16,
        DType::F16 => FloatKind::F16,
    })
}

/// `t`, stored contiguous as `batches` matrices of `[r, c]`, as a rank-3 binding
/// `[batches, r, c]`, or `[batches, c, r]` when `transposed` (a swap of the last two strides).
/// Always rank 3: cubek's multi-level routines do not expand a rank-2 operand broadcast
/// against a batched one, but do a batch of 1.
fn binding(t: &Tensor, batches: usize, transposed: bool) -> TensorHandle {
    let (r, c) = (t.dim(-2), t.dim(-1));
    let (shape, strides) =
        if transposed { (vec![batches, c, r], vec![r * c, 1, c]) } else { (vec![batches, r, c], vec![r * c, c, 1]) };
    TensorHandle::new(t.handle().clone(), shape, strides, elem(t.dtype()))
}

/// Writes `op(a) · op(b)` into `c` (`lead + [M, N]`, contiguous; `a`'s dtype, or f32 for 16-bit
/// operands). `a` and `b` share a dtype; shapes are the caller's to check (as [`super::matmul`]
/// does); `b` of rank 2 is shared by every batch.
pub fn matmul_into(a: &Tensor, b: &Tensor, layout: Layout, c: &Tensor, route: Route) -> Result<()> {
    let (trans_a, trans_b) = (layout.transposes_a(), layout.transposes_b());
    let batches = a.numel() / (a.dim(-2) * a.dim(-1));
    let b_shared = b.rank() == 2 && a.rank() > 2;
    // A shared B with A read as stored: one GEMM over every batch's rows, [1, batches·M, K].
    let (a_view, c_view, batches) = if b_shared && !trans_a {
        let rows = batches * a.dim(-2);
        (a.reshape(&[rows, a.dim(-1)])?, c.reshape(&[rows, c.dim(-1)])?, 1)
    } else {
        (a.clone(), c.clone(), batches)
    };
    let (a, c) = (&a_view, &c_view);
    let b_batches = if b.rank() == 2 { 1 } else { batches };
    let (dt, out_dt) = (elem(a.dtype()), elem(c.dtype()));
    let globals = MatmulGlobalElems { lhs: dt, rhs: dt, out: out_dt };
    let client = a.device().client();
    let launch = |strategy: &Strategy| {
        let mut elems = MatmulElems::from_globals(&globals);
        launch_ref(
            strategy,
            client,
            cubek_std::InputBinding::Normal(binding(a, batches, trans_a).binding(), dt),
            cubek_std::InputBinding::Normal(binding(b, b_batches, trans_b).binding(), dt),
            binding(c, batches, false).binding(),
            &mut elems,
        )
    };
    // Routines in order of preference; the next is tried when one is unavailable on this device
    // (no tensor cores for the type, a stage larger than its shared memory).
    let tensor_cores = Strategy::MultiLevel(multi_level::Strategy::DoubleCyclicCmma(Default::default()));
    let units = Strategy::MultiLevel(multi_level::Strategy::SimpleUnit(Default::default()));
    let registers = Strategy::Tiled(tiled::Strategy::CpuGemm(Default::default()));
    let chain = match route {
        Route::TensorCores => vec![tensor_cores, units, registers],
        Route::Units => vec![units, registers],
    };
    let mut result = Ok(());
    for strategy in &chain {
        result = launch(strategy);
        if !matches!(result, Err(MatmulSetupError::Unavailable(_))) {
            break;
        }
    }
    result.map_err(|e| {
        Error::Runtime(format!(
            "matmul ({route:?}) of {:?}{} by {:?}{} in {}: {e:?}",
            a.shape(),
            if trans_a { "ᵀ" } else { "" },
            b.shape(),
            if trans_b { "ᵀ" } else { "" },
            a.dtype()
        ))
    })
}

/// `a · op(b) (+ bias)` with 16-bit operands of one dtype and the result stored as `out`
/// (f32 keeps the f32 accumulation): `a` `[..., M, K]`, `b` a weight `[K, N]` ([`Layout::AB`]) or
/// `[N, K]` ([`Layout::ABt`]) shared by every row, `bias` `[N]` in `out`. Tensor cores where the
/// device has them; cubek's other routines elsewhere (slow on the CPU runtime, which does not
/// call this).
pub fn matmul_mixed(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, layout: Layout, out: DType) -> Result<Tensor> {
    let op = "matmul_mixed";
    let trans_b = layout.b_transposed_only(op)?;
    if a.rank() < 2 {
        return Err(Error::shape(format!("{op}: a"), "[..., M, K] (rank >= 2)", a.shape()));
    }
    if b.rank() != 2 {
        return Err(Error::shape(format!("{op}: b"), if trans_b { "[N, K]" } else { "[K, N]" }, b.shape()));
    }
    if a.dtype() != b.dtype() || a.dtype() == DType::F32 {
        return Err(Error::DType {
            context: format!("{op}: b (a is {})", a.dtype()),
            expected: "bf16 or f16, as a".into(),
            got: b.dtype(),
        });
    }
    let k = a.dim(-1);
    let (kb, n) = if trans_b { (b.dim(1), b.dim(0)) } else { (b.dim(0), b.dim(1)) };
    if kb != k {
        let want = if trans_b { format!("[N, {k}]") } else { format!("[{k}, N]") };
        return Err(Error::shape(format!("{op}: b (a is {:?}, trans_b={trans_b})", a.shape()), want, b.shape()));
    }
    let mut shape = a.shape().to_vec();
    *shape.last_mut().unwrap() = n;
    let c = Tensor::uninit(a.device(), &shape, out)?;
    if c.numel() == 0 || k == 0 {
        return if k == 0 { Tensor::zeros(a.device(), &shape, out) } else { Ok(c) };
    }
    matmul_into(a, b, Layout::new(false, trans_b), &c, Route::for_dtype(a.dtype()))?;
    match bias {
        Some(bias) => {
            bias.expect_shape(&format!("{op}: bias"), &[n])?;
            crate::elementwise::add(&c, bias)
        }
        None => Ok(c),
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference;
    use super::{Layout, Route, matmul_into};
    use crate::test_util::*;
    use lapidary_core::{DType, Tensor};
    use lapidary_testkit::{Tol, TolExt, assert_close};
    use proptest::prelude::*;

    /// `op(A) · op(B)` through `route` against the host reference, every layout, batched or with
    /// a shared B; on the CPU runtime the tensor-core route falls back to units (no CMMA there).
    fn check(
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        ta: bool,
        tb: bool,
        shared: bool,
        dt: DType,
        route: Route,
        seed: u64,
    ) {
        let dev = device();
        let a_shape = if ta { vec![batch, k, m] } else { vec![batch, m, k] };
        let b_mat = if tb { vec![n, k] } else { vec![k, n] };
        let b_shape = if shared { b_mat } else { [vec![batch], b_mat].concat() };
        let a = random_tensor(&dev, &a_shape, dt, seed, 1.0);
        let b = random_tensor(&dev, &b_shape, dt, seed.wrapping_add(1), 1.0);
        let c = Tensor::uninit(&dev, &[batch, m, n], dt).unwrap();
        matmul_into(&a, &b, Layout::new(ta, tb), &c, route).unwrap();
        let want = reference::matmul(
            &a.to_f32_vec().unwrap(),
            &b.to_f32_vec().unwrap(),
            None,
            batch,
            m,
            k,
            n,
            Layout::new(ta, tb),
            shared,
        );
        let t = dt.tol();
        let tol = Tol { abs: t.abs * (k as f64).sqrt().max(1.0), rel: t.rel };
        let what = format!("cubek {route:?} b{batch} m{m} k{k} n{n} ta{ta} tb{tb} shared{shared} {dt}");
        assert_close(&what, &c.to_f32_vec().unwrap(), &want, tol);
    }

    #[test]
    fn every_layout_batched_and_shared() {
        // The four transpose layouts, each with a batched and a shared B, across dtypes and routes;
        // several tiles in M and N with ragged edges.
        let dtypes = [DType::F32, DType::BF16, DType::F16];
        let mut i = 0;
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for shared in [false, true] {
                let route = if i % 2 == 0 { Route::TensorCores } else { Route::Units };
                check(2, 37, 45, 29, ta, tb, shared, dtypes[i % 3], route, 40 + i as u64);
                i += 1;
            }
        }
    }

    #[test]
    fn sixteen_bit_operands_accumulate_and_store_in_f32() {
        let dev = device();
        for (dt, tb, seed) in [(DType::BF16, true, 60u64), (DType::F16, false, 61)] {
            let (m, k, n) = (19, 300, 23);
            let a = random_tensor(&dev, &[2, m, k], dt, seed, 1.0);
            let b = random_tensor(&dev, &if tb { [n, k] } else { [k, n] }, dt, seed + 1, 1.0);
            let bias = random_tensor(&dev, &[n], DType::F32, seed + 2, 1.0);
            let c = super::matmul_mixed(&a, &b, Some(&bias), Layout::new(false, tb), DType::F32).unwrap();
            assert_eq!((c.shape(), c.dtype()), (&[2, m, n][..], DType::F32));
            let (ah, bh) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
            let want = reference::matmul(
                &ah,
                &bh,
                Some(&bias.to_f32_vec().unwrap()),
                2,
                m,
                k,
                n,
                Layout::new(false, tb),
                true,
            );
            // Exact products of 16-bit values summed in f32: f32's tolerance, not the 16-bit one.
            let t = DType::F32.tol();
            assert_close(
                &format!("mixed {dt}"),
                &c.to_f32_vec().unwrap(),
                &want,
                Tol { abs: t.abs * (k as f64).sqrt(), rel: t.rel },
            );
        }
    }

    #[test]
    fn mixed_shape_errors_name_the_operand() {
        let dev = device();
        let a = random_tensor(&dev, &[2, 3, 4], DType::BF16, 1, 1.0);
        let batched_b = random_tensor(&dev, &[2, 4, 5], DType::BF16, 2, 1.0);
        let e = super::matmul_mixed(&a, &batched_b, None, Layout::AB, DType::F32).unwrap_err().to_string();
        assert!(e.contains("matmul_mixed: b") && e.contains("[K, N]"), "{e}");
        let e = super::matmul_mixed(&random_tensor(&dev, &[4], DType::BF16, 3, 1.0), &a, None, Layout::AB, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("matmul_mixed: a"), "{e}");
        let f32_a = random_tensor(&dev, &[3, 4], DType::F32, 4, 1.0);
        let f32_b = random_tensor(&dev, &[4, 5], DType::F32, 5, 1.0);
        assert!(super::matmul_mixed(&f32_a, &f32_b, None, Layout::AB, DType::F32).is_err());
    }

    proptest! {
        #![proptest_config(crate::test_util::cases(6))]
        #[test]
        fn random_shapes_match_reference(
            batch in 1usize..3, m in 1usize..70, k in 1usize..70, n in 1usize..70,
            ta in any::<bool>(), tb in any::<bool>(), shared in any::<bool>(),
            dt in dtype_strategy(), tensor_cores in any::<bool>(), seed in any::<u64>(),
        ) {
            let route = if tensor_cores { Route::TensorCores } else { Route::Units };
            check(batch, m, k, n, ta, tb, shared, dt, route, seed);
        }
    }
}
