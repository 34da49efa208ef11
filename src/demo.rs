//! The main job the README's first command runs. For now a kernel smoke run on the chosen device:
//! it launches the GELU kernels on random data, checks them against the host reference and prints
//! a short report. It grows into the bundled vision fine-tune.

use crate::core::{DType, Device, Result, Tensor};
use crate::kernels::elementwise;
use std::time::Instant;

/// Runs the smoke demo and prints its report; an error when a kernel disagrees with its reference.
pub fn run(device: &Device) -> Result<()> {
    println!("lapidary demo on {device} (max units per cube: {})", device.max_units_per_cube());
    let n = 1 << 20;
    let xs: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 8.0).collect();
    let dys: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.414_213_5).fract() - 0.5) * 2.0).collect();
    for dtype in [DType::F32, DType::BF16] {
        let x = Tensor::from_f32(device, &xs, &[n], dtype)?;
        let dy = Tensor::from_f32(device, &dys, &[n], dtype)?;
        let (xr, dyr) = (x.to_f32_vec()?, dy.to_f32_vec()?);
        let _warm = elementwise::gelu_tanh(&x)?.to_f32_vec()?;
        let t = Instant::now();
        let y = elementwise::gelu_tanh(&x)?.to_f32_vec()?;
        let fwd = t.elapsed();
        let t = Instant::now();
        let dx = elementwise::gelu_tanh_backward(&x, &dy)?.to_f32_vec()?;
        let bwd = t.elapsed();
        let err_y = max_abs_diff(&y, &elementwise::reference::gelu_tanh(&xr));
        let err_dx = max_abs_diff(&dx, &elementwise::reference::gelu_tanh_backward(&xr, &dyr));
        println!(
            "  gelu_tanh {dtype:>4} n={n}: forward {:>8.2?} (max |err| {err_y:.2e}), backward {:>8.2?} (max |err| {err_dx:.2e})",
            fwd, bwd
        );
        let limit = if dtype == DType::F32 { 1e-5 } else { 5e-2 };
        if err_y > limit || err_dx > limit {
            return Err(crate::core::Error::Runtime(format!("gelu_tanh {dtype} disagrees with its reference")));
        }
    }
    println!("all kernels agree with their host references");
    Ok(())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
