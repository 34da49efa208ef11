//! Kernel benchmarks (criterion), run by `cargo xtask bench`, which prints the table.
//! Convention: throughput in elements counts floating-point operations, in bytes counts bytes
//! moved. Where a peer exists on this machine it is measured in the same run: the `gemm` crate
//! (f32, the fastest CPU GEMM in Rust) next to the matmul kernel on the CPU runtime. On a GPU
//! (`LAPIDARY_DEVICE=cuda`) `tools/gpu/run.sh` measures the same work in PyTorch.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lapidary::core::{DType, Device, Tensor};
use lapidary::kernels::matmul::Layout;
use lapidary::kernels::{attention, elementwise, loss, matmul, norm};
use std::time::Duration;

fn device() -> Device {
    Device::from_env().expect("a device")
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn sizes() -> Vec<usize> {
    match std::env::var("LAPIDARY_BENCH_MATMUL") {
        Ok(s) => s.split(',').filter_map(|v| v.trim().parse().ok()).collect(),
        Err(_) => vec![256, 512, 1024, 2048],
    }
}

fn bench_matmul(c: &mut Criterion) {
    let dev = device();
    let mut g = c.benchmark_group(format!("matmul/{dev}"));
    for s in sizes() {
        g.throughput(Throughput::Elements(2 * (s * s * s) as u64));
        if s >= 1024 {
            g.sample_size(10);
        }
        let a = values(s * s, 1);
        let b = values(s * s, 2);
        for dtype in [DType::F32, DType::BF16] {
            let ta = Tensor::from_f32(&dev, &a, &[s, s], dtype).unwrap();
            let tb = Tensor::from_f32(&dev, &b, &[s, s], dtype).unwrap();
            g.bench_with_input(BenchmarkId::new(format!("lapidary-{dtype}"), s), &s, |bch, _| {
                bch.iter(|| {
                    let c = matmul::matmul(&ta, &tb, None, Layout::AB).unwrap();
                    dev.sync().unwrap();
                    c
                })
            });
        }
        #[cfg(feature = "cubek-peer")]
        {
            let ta = Tensor::from_f32(&dev, &a, &[s, s], DType::F32).unwrap();
            let tb = Tensor::from_f32(&dev, &b, &[s, s], DType::F32).unwrap();
            // Same result as lapidary's kernel, or the comparison means nothing.
            let ours = matmul::matmul(&ta, &tb, None, Layout::AB).unwrap().to_f32_vec().unwrap();
            let theirs = cubek_cpu_gemm(&dev, &ta, &tb, s).to_f32_vec().unwrap();
            let diff = ours.iter().zip(&theirs).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-3 * (s as f32).sqrt(), "cubek and lapidary disagree by {diff}");
            g.bench_with_input(BenchmarkId::new("cubek-CpuGemm-F32", s), &s, |bch, _| {
                bch.iter(|| cubek_cpu_gemm(&dev, &ta, &tb, s))
            });
        }
        if !dev.is_cpu() {
            // The CPU peer belongs next to the CPU runtime only; on a GPU, torch is the peer
            // (tools/gpu/run.sh).
            continue;
        }
        let mut out = vec![0f32; s * s];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        g.bench_with_input(BenchmarkId::new("gemm-crate-F32", s), &s, |bch, _| {
            bch.iter(|| unsafe {
                gemm::gemm(
                    s,
                    s,
                    s,
                    out.as_mut_ptr(),
                    1,
                    s as isize,
                    false,
                    a.as_ptr(),
                    1,
                    s as isize,
                    b.as_ptr(),
                    1,
                    s as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            })
        });
    }
    g.finish();
}

/// cubek-matmul 0.3.1's CPU GEMM on the same CubeCL runtime, as a peer (feature `cubek-peer`).
#[cfg(feature = "cubek-peer")]
fn cubek_cpu_gemm(dev: &Device, a: &Tensor, b: &Tensor, s: usize) -> Tensor {
    use cubecl::ir::{ElemType, FloatKind};
    use cubecl::std::tensor::TensorHandle;
    use cubek_matmul::{definition::MatmulElems, launch::launch_ref, strategy::Strategy, tiled};
    use lapidary::core::cubecl;
    let dt = ElemType::Float(FloatKind::F32);
    let out = Tensor::uninit(dev, &[s, s], DType::F32).unwrap();
    let lhs = TensorHandle::new_contiguous(vec![1, s, s], a.handle().clone(), dt);
    let rhs = TensorHandle::new_contiguous(vec![1, s, s], b.handle().clone(), dt);
    let o = TensorHandle::new_contiguous(vec![1, s, s], out.handle().clone(), dt);
    launch_ref(
        &Strategy::Tiled(tiled::Strategy::CpuGemm(Default::default())),
        dev.client(),
        cubek_std::InputBinding::Normal(lhs.binding(), dt),
        cubek_std::InputBinding::Normal(rhs.binding(), dt),
        o.binding(),
        &mut MatmulElems::from_single_dtype(dt),
    )
    .expect("cubek CpuGemm launch");
    dev.sync().unwrap();
    out
}

fn attention_lengths() -> Vec<usize> {
    match std::env::var("LAPIDARY_BENCH_ATTENTION") {
        Ok(s) => s.split(',').filter_map(|v| v.trim().parse().ok()).collect(),
        Err(_) => vec![512, 2048, 8192],
    }
}

/// Bytes an attention forward keeps for its backward, beyond its inputs.
fn saved_bytes(saved: &attention::AttentionSaved, out: &Tensor) -> usize {
    match (saved.probs(), saved.log_sum_exp()) {
        // Probabilities plus K and V repeated to the query heads (as large as q and the output).
        (Some(p), _) => p.size_bytes() + 2 * out.size_bytes(),
        // The output (also the layer's result) and the log-sum-exp.
        (None, Some(l)) => l.size_bytes(),
        _ => 0,
    }
}

fn bench_attention(c: &mut Criterion) {
    let dev = device();
    let mut g = c.benchmark_group(format!("attention/{dev}"));
    // One Gemma-3-270M-like layer: 4 query heads, 1 kv head, head dim 256, causal; then the same
    // at head dim 512 (Gemma 4's global layers, where FlashAttention 2 stops); forward and
    // backward, fused next to materialized scores: the CPU-shaped fused kernels on the CPU, the
    // GPU-shaped ones (tensor cores in bf16) on GPUs.
    let (b, h, hkv) = (1, 4, 1);
    let (fused, dtypes) = if dev.is_cpu() {
        (attention::AttentionPath::Flash, &[DType::F32][..])
    } else {
        (attention::AttentionPath::Tiled, &[DType::F32, DType::BF16][..])
    };
    let cases = [256, 512].into_iter().flat_map(|d| attention_lengths().into_iter().map(move |t| (d, t)));
    for ((d, t), &dtype) in cases.flat_map(|dt| dtypes.iter().map(move |x| (dt, x))) {
        let q = Tensor::from_f32(&dev, &values(b * h * t * d, 3), &[b, h, t, d], dtype).unwrap();
        let k = Tensor::from_f32(&dev, &values(b * hkv * t * d, 4), &[b, hkv, t, d], dtype).unwrap();
        let v = Tensor::from_f32(&dev, &values(b * hkv * t * d, 5), &[b, hkv, t, d], dtype).unwrap();
        let mask = attention::AttentionMask::causal();
        let scale = 1.0 / (d as f32).sqrt();
        // Causal: half the scores; forward 2 and backward 4 products of T x S x D.
        g.throughput(Throughput::Elements((6 * b * h * t * t * d) as u64));
        if t >= 4096 {
            g.sample_size(10).measurement_time(Duration::from_secs(1));
        }
        for path in [fused, attention::AttentionPath::Materialized] {
            let (out, saved) = attention::attention_with(&q, &k, &v, scale, &mask, path).unwrap();
            eprintln!(
                "attention {path:?} {dtype} t={t} d={d}: {:.1} KiB kept for the backward",
                saved_bytes(&saved, &out) as f64 / 1024.0
            );
            drop((out, saved));
            g.bench_function(format!("fwd+bwd/{path:?}/{dtype}/h{h}-kv{hkv}-t{t}-d{d}"), |bch| {
                bch.iter(|| {
                    let (o, saved) = attention::attention_with(&q, &k, &v, scale, &mask, path).unwrap();
                    let gr = attention::attention_backward(&q, &saved, &o, scale).unwrap();
                    dev.sync().unwrap();
                    gr
                })
            });
        }
    }
    let t = 512;
    let scores = Tensor::from_f32(&dev, &values(b * h * t * t, 6), &[b, h, t, t], DType::F32).unwrap();
    g.throughput(Throughput::Bytes((2 * scores.size_bytes()) as u64));
    g.sample_size(15).measurement_time(Duration::from_secs(2));
    g.bench_function(format!("masked_softmax/F32/{h}x{t}x{t}"), |bch| {
        bch.iter(|| {
            let p = attention::masked_softmax(&scores, 0.0625, &attention::AttentionMask::sliding(128)).unwrap();
            dev.sync().unwrap();
            p
        })
    });
    g.finish();
}

fn bench_norm_loss(c: &mut Criterion) {
    let dev = device();
    let mut g = c.benchmark_group(format!("norm-loss/{dev}"));
    let (rows, cols) = (2048, 640);
    for dtype in [DType::F32, DType::BF16] {
        let x = Tensor::from_f32(&dev, &values(rows * cols, 7), &[rows, cols], dtype).unwrap();
        let w = Tensor::from_f32(&dev, &values(cols, 8), &[cols], dtype).unwrap();
        g.throughput(Throughput::Bytes((2 * x.size_bytes()) as u64));
        g.bench_function(format!("rms_norm/{dtype}/{rows}x{cols}"), |bch| {
            bch.iter(|| {
                let y = norm::gemma_rms_norm(&x, &w, 1e-6).unwrap();
                dev.sync().unwrap();
                y
            })
        });
    }
    let (n, vocab) = (256, 32_768);
    let logits = Tensor::from_f32(&dev, &values(n * vocab, 9), &[n, vocab], DType::F32).unwrap();
    let labels: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % vocab as i64).collect();
    g.throughput(Throughput::Bytes(logits.size_bytes() as u64));
    g.bench_function(format!("cross_entropy/F32/{n}x{vocab}"), |bch| {
        bch.iter(|| {
            let ce = loss::cross_entropy(&logits, &labels).unwrap();
            dev.sync().unwrap();
            ce
        })
    });
    let x = Tensor::from_f32(&dev, &values(1 << 22, 10), &[1 << 22], DType::F32).unwrap();
    g.throughput(Throughput::Bytes((2 * x.size_bytes()) as u64));
    g.bench_function("gelu_tanh/F32/4M", |bch| {
        bch.iter(|| {
            let y = elementwise::gelu_tanh(&x).unwrap();
            dev.sync().unwrap();
            y
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(15).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    targets = bench_matmul, bench_attention, bench_norm_loss
}
criterion_main!(benches);
