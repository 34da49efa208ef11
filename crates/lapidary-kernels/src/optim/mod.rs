//! The AdamW update as one kernel (PyTorch's `torch.optim.AdamW` semantics: decoupled weight
//! decay, bias-corrected moments, eps added after the square root), updating the parameter and
//! its f32 moment buffers in place. Not the optimizer's bookkeeping (steps, schedules, groups):
//! that is `lapidary-train`'s.
//!
//! ```
//! use lapidary_core::{Device, DType, Tensor};
//! use lapidary_kernels::optim::{adamw_step, AdamWStep};
//! let dev = Device::cpu().unwrap();
//! let p = Tensor::from_f32(&dev, &[1.0, -1.0], &[2], DType::F32).unwrap();
//! let g = Tensor::from_f32(&dev, &[0.5, -0.5], &[2], DType::F32).unwrap();
//! let (m, v) = (Tensor::zeros(&dev, &[2], DType::F32).unwrap(), Tensor::zeros(&dev, &[2], DType::F32).unwrap());
//! adamw_step(&p, &g, &m, &v, AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1 }).unwrap();
//! let p = p.to_f32_vec().unwrap();
//! assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6);
//! ```

pub mod reference;

use cubecl::prelude::*;
use lapidary_core::{DType, Error, Result, Tensor, launch};

/// AdamW hyper-parameters for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// 1-based step number (for bias correction).
    pub step: u64,
}

#[cube(launch_unchecked)]
fn adamw_kernel<F: Float>(
    param: &mut [F],
    grad: &[F],
    m: &mut [f32],
    v: &mut [f32],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < param.len() {
        let g = f32::cast_from(grad[i]);
        let mut p = f32::cast_from(param[i]);
        p *= 1.0f32 - lr * decay;
        let mi = m[i] + (g - m[i]) * (1.0f32 - beta1);
        let vi = v[i] * beta2 + g * g * (1.0f32 - beta2);
        m[i] = mi;
        v[i] = vi;
        p -= step_size * mi / (f32::sqrt(vi) / bc2_sqrt + eps);
        param[i] = F::cast_from(p);
        i += stride;
    }
}

/// One AdamW step, in place: `param` (any float dtype) and its f32 moments `m`, `v` are updated
/// from `grad` (same shape and dtype as `param`).
pub fn adamw_step(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, h: AdamWStep) -> Result<()> {
    grad.expect_shape("adamw_step: grad", param.shape())?;
    grad.expect_dtype("adamw_step: grad", &[param.dtype()])?;
    for (name, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
        t.expect_shape(&format!("adamw_step: {name}"), param.shape())?;
        t.expect_dtype(&format!("adamw_step: {name}"), &[DType::F32])?;
    }
    if h.step == 0 {
        return Err(Error::invalid("adamw_step: step numbers start at 1"));
    }
    let bc1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
    let bc2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
    let n = param.numel();
    let (count, dim) = launch::grid_1d(param.device(), n);
    dispatch_float!(param.dtype(), F => unsafe {
        adamw_kernel::launch_unchecked::<F>(
            param.device().client(), count, dim,
            BufferArg::from_raw_parts(param.handle().clone(), n),
            BufferArg::from_raw_parts(grad.handle().clone(), n),
            BufferArg::from_raw_parts(m.handle().clone(), n),
            BufferArg::from_raw_parts(v.handle().clone(), n),
            h.lr, h.beta1, h.beta2, h.eps, h.weight_decay,
            (h.lr as f64 / bc1) as f32, bc2.sqrt() as f32,
        )
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use lapidary_testkit::{Tol, TolExt};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_util::cases(16))]
        #[test]
        fn three_steps_match_reference(n in 1usize..200, dt in dtype_strategy(), seed in any::<u64>(), wd in 0.0f32..0.1) {
            let dev = device();
            let p = random_tensor(&dev, &[n], dt, seed, 1.0);
            let m = Tensor::zeros(&dev, &[n], DType::F32).unwrap();
            let v = Tensor::zeros(&dev, &[n], DType::F32).unwrap();
            let mut ph = p.to_f32_vec().unwrap();
            let (mut mh, mut vh) = (vec![0f32; n], vec![0f32; n]);
            for step in 1..=3u64 {
                let g = random_tensor(&dev, &[n], dt, seed ^ step, 0.5);
                let gh = g.to_f32_vec().unwrap();
                let h = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd, step };
                adamw_step(&p, &g, &m, &v, h).unwrap();
                reference::adamw_step(&mut ph, &gh, &mut mh, &mut vh, h);
                // The reference keeps f32 parameters; round like the storage does.
                ph.iter_mut().for_each(|x| *x = dt.round(*x));
            }
            assert_close("adamw param", &p.to_f32_vec().unwrap(), &ph, dt.tol());
            assert_close("adamw exp_avg", &m.to_f32_vec().unwrap(), &mh, Tol::F32);
            assert_close("adamw exp_avg_sq", &v.to_f32_vec().unwrap(), &vh, Tol::F32);
        }
    }

    #[test]
    fn first_step_moves_by_lr() {
        // With zero moments, step 1 moves every parameter by lr * sign(grad) (minus decay).
        let dev = device();
        let p = Tensor::from_f32(&dev, &[1.0, -2.0, 0.5], &[3], DType::F32).unwrap();
        let g = Tensor::from_f32(&dev, &[0.3, -0.7, 2.0], &[3], DType::F32).unwrap();
        let m = Tensor::zeros(&dev, &[3], DType::F32).unwrap();
        let v = Tensor::zeros(&dev, &[3], DType::F32).unwrap();
        let h = AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1 };
        adamw_step(&p, &g, &m, &v, h).unwrap();
        assert_close("step 1", &p.to_f32_vec().unwrap(), &[0.9, -1.9, 0.4], Tol::F32);
        let e = adamw_step(&p, &g, &m, &v, AdamWStep { step: 0, ..h }).unwrap_err().to_string();
        assert!(e.contains("start at 1"), "{e}");
    }
}
