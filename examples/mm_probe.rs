use lapidary::core::{DType, Device, Tensor};
use std::time::Instant;
fn main() {
    let dev = Device::cpu().unwrap();
    for &s in &[256usize, 512, 1024] {
        let a: Vec<f32> = (0..s * s).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        for dt in [DType::F32, DType::BF16] {
            let ta = Tensor::from_f32(&dev, &a, &[s, s], dt).unwrap();
            let tb = Tensor::from_f32(&dev, &a, &[s, s], dt).unwrap();
            let _ = lapidary::kernels::matmul::matmul(&ta, &tb, None, false, false).unwrap(); dev.sync().unwrap();
            let reps = if s >= 1024 { 3 } else { 10 };
            let t = Instant::now();
            for _ in 0..reps { let _c = lapidary::kernels::matmul::matmul(&ta, &tb, None, false, false).unwrap(); }
            dev.sync().unwrap();
            let el = t.elapsed().as_secs_f64() / reps as f64;
            println!("{s} {dt}: {:.3} ms {:.1} GFLOP/s", el * 1e3, 2.0 * (s * s * s) as f64 / el / 1e9);
        }
        let mut c = vec![0f32; s * s];
        let t = Instant::now();
        for _ in 0..3 { unsafe { gemm::gemm(s, s, s, c.as_mut_ptr(), 1, s as isize, false, a.as_ptr(), 1, s as isize, a.as_ptr(), 1, s as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::Rayon(2)); } }
        let el = t.elapsed().as_secs_f64() / 3.0;
        println!("{s} gemm f32: {:.3} ms {:.1} GFLOP/s", el * 1e3, 2.0 * (s * s * s) as f64 / el / 1e9);
    }
}
