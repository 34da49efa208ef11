//! Kernel benchmarks (criterion), run by `cargo xtask bench`, which prints the table.
//! Convention: throughput in elements counts floating-point operations, in bytes counts bytes
//! moved. Where a peer exists on this machine it is measured in the same run.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lapidary::core::{DType, Device, Tensor};
use lapidary::kernels::elementwise;

fn device() -> Device {
    Device::from_env().expect("a device")
}

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 6.0).collect()
}

fn bench_gelu(c: &mut Criterion) {
    let dev = device();
    let mut g = c.benchmark_group(format!("gelu_tanh/{dev}"));
    for dtype in [DType::F32, DType::BF16] {
        let n = 1 << 22;
        let x = Tensor::from_f32(&dev, &values(n), &[n], dtype).unwrap();
        let dy = Tensor::from_f32(&dev, &values(n), &[n], dtype).unwrap();
        g.throughput(Throughput::Bytes((2 * n * dtype.size()) as u64));
        g.bench_function(format!("forward/{dtype}/{n}"), |b| {
            b.iter(|| {
                let y = elementwise::gelu_tanh(&x).unwrap();
                dev.sync().unwrap();
                y
            })
        });
        g.throughput(Throughput::Bytes((3 * n * dtype.size()) as u64));
        g.bench_function(format!("backward/{dtype}/{n}"), |b| {
            b.iter(|| {
                let y = elementwise::gelu_tanh_backward(&x, &dy).unwrap();
                dev.sync().unwrap();
                y
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench_gelu
}
criterion_main!(benches);
