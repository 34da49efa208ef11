//! The AdamW update as one kernel (PyTorch's `torch.optim.AdamW` semantics: decoupled weight
//! decay, bias-corrected moments, eps added after the square root), updating the parameter and
//! its f32 moment buffers in place, optionally with a gradient factor that lives on the device;
//! and the step guard computing that factor there (gradient-norm clipping, and skipping a step
//! whose loss or norm is not finite) so that a step needs no read back to the host. Not the
//! optimizer's bookkeeping (steps, schedules, groups): that is `lapidary-train`'s.
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
    scale: &[f32],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let factor = scale[0];
    // Not positive (or NaN): the step guard's verdict to skip this step.
    let mut i = if factor > 0.0f32 { ABSOLUTE_POS } else { param.len() };
    while i < param.len() {
        let g = f32::cast_from(grad[i]) * factor;
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
    let one = Tensor::from_f32(param.device(), &[1.0], &[1], DType::F32)?;
    adamw_step_scaled(param, grad, m, v, h, &one)
}

/// [`adamw_step`] with the gradient multiplied by `scale[0]`, an f32 value on the device (the
/// clipping coefficient [`step_guard`] writes first in its output, which may be passed whole).
/// When `scale[0]` is not positive, or NaN, nothing changes: the step is skipped on the device.
pub fn adamw_step_scaled(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: AdamWStep,
    scale: &Tensor,
) -> Result<()> {
    scale.expect_dtype("adamw_step: scale", &[DType::F32])?;
    if scale.numel() == 0 || scale.device() != param.device() {
        return Err(Error::invalid(format!(
            "adamw_step: scale {:?} on {}: expected at least one f32 value on {}",
            scale.shape(),
            scale.device(),
            param.device()
        )));
    }
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
            BufferArg::from_raw_parts(scale.handle().clone(), 1),
            h.lr, h.beta1, h.beta2, h.eps, h.weight_decay,
            (h.lr as f64 / bc1) as f32, bc2.sqrt() as f32,
        )
    });
    Ok(())
}

#[cube(launch_unchecked)]
fn step_guard_kernel(sums: &[f32], loss: &[f32], halted: &mut [f32], out: &mut [f32], max_norm: f32) {
    if ABSOLUTE_POS == 0 {
        // One thread, in order: the same sum on every device and run.
        let mut total = 0.0f32;
        for i in 0..sums.len() {
            let s = sums[i];
            total += s;
            out[3 + i] = s; // GUARD_SUMS
        }
        let norm = f32::sqrt(total);
        let l = loss[0];
        let bad_loss = IsNan::is_nan(l) || IsInf::is_inf(l);
        let bad_norm = IsNan::is_nan(norm) || IsInf::is_inf(norm);
        let mut coef = 1.0f32;
        if max_norm > 0.0f32 {
            coef = min(1.0f32, max_norm / (norm + 1e-6f32));
        }
        if bad_loss || bad_norm || halted[0] != 0.0f32 {
            coef = -1.0f32;
            halted[0] = 1.0f32;
        }
        // GUARD_COEF, GUARD_NORM, GUARD_LOSS
        out[0] = coef;
        out[1] = norm;
        out[2] = l;
    }
}

/// Where [`step_guard`]'s output keeps the gradient factor of the step: `min(1, max_norm /
/// (norm + 1e-6))` (torch's `clip_grad_norm_`), 1 without clipping, -1 for a skipped step.
pub const GUARD_COEF: usize = 0;
/// Where [`step_guard`]'s output keeps the global gradient norm (before clipping).
pub const GUARD_NORM: usize = 1;
/// Where [`step_guard`]'s output keeps the step's loss.
pub const GUARD_LOSS: usize = 2;
/// Where [`step_guard`]'s output starts the sum of squares of each gradient, in input order.
pub const GUARD_SUMS: usize = 3;

/// The step guard, on the device: from `sums` (f32 `[n]`, each gradient's sum of squares, as
/// [`crate::reduce::sum_sq_each`] gives them) and the step's `loss` (f32 `[1]`), writes one
/// f32 `[3 + n]` buffer: the gradient factor ([`GUARD_COEF`]), the global norm
/// ([`GUARD_NORM`]), the loss ([`GUARD_LOSS`]) and the sums ([`GUARD_SUMS`]..). The norm sums
/// `sums` in order in f32. `max_norm` 0 turns clipping off.
///
/// `halted` (f32 `[1]`, 0 at first) is the run's memory: when the loss or the norm is NaN or
/// infinite, or `halted` is already set, the factor is -1 (so [`adamw_step_scaled`] changes
/// nothing) and `halted` is set. A run reads the buffers of several steps back at once, later,
/// and finds the first bad step by its values; no later step has changed anything.
pub fn step_guard(sums: &Tensor, loss: &Tensor, halted: &Tensor, max_norm: f32) -> Result<Tensor> {
    let dev = sums.device();
    sums.expect_dtype("step_guard: sums", &[DType::F32])?;
    if sums.rank() != 1 || sums.numel() == 0 {
        return Err(Error::shape("step_guard: sums", "[n] with n > 0", sums.shape()));
    }
    for (name, t) in [("loss", loss), ("halted", halted)] {
        t.expect_shape(&format!("step_guard: {name}"), &[1])?;
        t.expect_dtype(&format!("step_guard: {name}"), &[DType::F32])?;
        if t.device() != dev {
            return Err(Error::Device(format!("step_guard: sums on {dev}, {name} on {}", t.device())));
        }
    }
    if !(max_norm >= 0.0 && max_norm.is_finite()) {
        return Err(Error::invalid(format!("step_guard: max_norm {max_norm}: expected a finite value >= 0")));
    }
    let n = sums.numel();
    let out = Tensor::uninit(dev, &[GUARD_SUMS + n], DType::F32)?;
    launch::guarded(|| unsafe {
        step_guard_kernel::launch_unchecked(
            dev.client(),
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(1),
            BufferArg::from_raw_parts(sums.handle().clone(), n),
            BufferArg::from_raw_parts(loss.handle().clone(), 1),
            BufferArg::from_raw_parts(halted.handle().clone(), 1),
            BufferArg::from_raw_parts(out.handle().clone(), GUARD_SUMS + n),
            max_norm,
        )
    });
    Ok(out)
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

    proptest! {
        #![proptest_config(crate::test_util::cases(24))]
        #[test]
        fn step_guard_and_a_scaled_step_match_reference(
            n in 1usize..40,
            seed in any::<u64>(),
            max_norm in prop_oneof![Just(0.0f32), 0.01f32..10.0],
            loss in prop_oneof![-5.0f32..5.0, Just(f32::NAN), Just(f32::INFINITY)],
            bad_sum in prop_oneof![Just(None), (0usize..40, prop_oneof![Just(f32::NAN), Just(f32::INFINITY)]).prop_map(Some)],
            halted_before in any::<bool>(),
            dt in dtype_strategy(),
        ) {
            let dev = device();
            let mut sums = random_tensor(&dev, &[n], DType::F32, seed, 2.0).to_f32_vec().unwrap();
            sums.iter_mut().for_each(|s| *s = *s * *s);
            if let Some((i, v)) = bad_sum {
                sums[i % n] = v;
            }
            let sums_t = Tensor::from_f32(&dev, &sums, &[n], DType::F32).unwrap();
            let loss_t = Tensor::from_f32(&dev, &[loss], &[1], DType::F32).unwrap();
            let halted = Tensor::from_f32(&dev, &[if halted_before { 1.0 } else { 0.0 }], &[1], DType::F32).unwrap();
            let mut halted_h = halted_before;
            let want = reference::step_guard(&sums, loss, &mut halted_h, max_norm);
            let out = step_guard(&sums_t, &loss_t, &halted, max_norm).unwrap();
            let got = out.to_f32_vec().unwrap();
            prop_assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert!((g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-5 * w.abs(), "value {}: {} vs {}", i, g, w);
            }
            prop_assert_eq!(halted.to_f32_vec().unwrap()[0] != 0.0, halted_h);
            // The factor drives the update: scaled by it, or nothing at all.
            let p = random_tensor(&dev, &[n], dt, seed ^ 3, 1.0);
            let g = random_tensor(&dev, &[n], dt, seed ^ 4, 0.5);
            let m = random_tensor(&dev, &[n], DType::F32, seed ^ 5, 0.1);
            let v = Tensor::from_f32(&dev, &vec![0.01; n], &[n], DType::F32).unwrap();
            let (mut ph, mut mh, mut vh) = (p.to_f32_vec().unwrap(), m.to_f32_vec().unwrap(), v.to_f32_vec().unwrap());
            let h = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 2 };
            adamw_step_scaled(&p, &g, &m, &v, h, &out).unwrap();
            let coef = want[GUARD_COEF];
            if coef > 0.0 {
                let gh: Vec<f32> = g.to_f32_vec().unwrap().iter().map(|x| x * coef).collect();
                reference::adamw_step(&mut ph, &gh, &mut mh, &mut vh, h);
                ph.iter_mut().for_each(|x| *x = dt.round(*x));
            }
            assert_close("scaled adamw param", &p.to_f32_vec().unwrap(), &ph, dt.tol());
            assert_close("scaled adamw exp_avg", &m.to_f32_vec().unwrap(), &mh, Tol::F32);
            assert_close("scaled adamw exp_avg_sq", &v.to_f32_vec().unwrap(), &vh, Tol::F32);
        }
    }

    #[test]
    fn the_guard_clips_and_halts_for_good() {
        let dev = device();
        let t = |v: &[f32]| Tensor::from_f32(&dev, v, &[v.len()], DType::F32).unwrap();
        let halted = t(&[0.0]);
        // Norm 5 clipped to 1; then a NaN loss halts; then a clean step stays halted.
        let out = step_guard(&t(&[9.0, 16.0]), &t(&[2.5]), &halted, 1.0).unwrap().to_f32_vec().unwrap();
        assert_close("clipped", &out, &[1.0 / (5.0 + 1e-6), 5.0, 2.5, 9.0, 16.0], Tol::F32);
        let out = step_guard(&t(&[1.0]), &t(&[f32::NAN]), &halted, 1.0).unwrap().to_f32_vec().unwrap();
        assert_eq!(out[GUARD_COEF], -1.0);
        let out = step_guard(&t(&[0.25]), &t(&[1.0]), &halted, 0.0).unwrap().to_f32_vec().unwrap();
        assert_eq!((out[GUARD_COEF], out[GUARD_NORM]), (-1.0, 0.5));
        let e = step_guard(&t(&[1.0]), &t(&[1.0, 2.0]), &halted, 1.0).unwrap_err().to_string();
        assert!(e.contains("step_guard: loss"), "{e}");
        let e = step_guard(&t(&[1.0]), &t(&[1.0]), &halted, -1.0).unwrap_err().to_string();
        assert!(e.contains("max_norm"), "{e}");
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
