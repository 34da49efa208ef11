//! Elementwise ops: add and mul (with suffix broadcasting), scale, GELU-tanh, GeGLU, clamp.

use super::upstream;
use crate::Var;
use lapidary_core::Result;
use lapidary_kernels::elementwise as ew;

/// `a + b`, `b` broadcast over `a`'s leading dims.
pub fn add(a: &Var, b: &Var) -> Result<Var> {
    let out = ew::add(a.value(), b.value())?;
    let b_shape = b.shape().to_vec();
    a.tape().record1(
        &[a, b],
        out,
        Box::new(move |outs, needs| {
            let g = upstream(outs);
            let gb = if needs[1] { Some(ew::sum_to(&g, &b_shape)?) } else { None };
            Ok(vec![needs[0].then_some(g), gb])
        }),
    )
}

/// `a * b`, `b` broadcast over `a`'s leading dims.
pub fn mul(a: &Var, b: &Var) -> Result<Var> {
    let out = ew::mul(a.value(), b.value())?;
    let (av, bv) = (a.value().clone(), b.value().clone());
    a.tape().record1(
        &[a, b],
        out,
        Box::new(move |outs, needs| {
            let g = upstream(outs);
            let ga = if needs[0] { Some(ew::mul(&g, &bv)?) } else { None };
            let gb = if needs[1] { Some(ew::sum_to(&ew::mul(&g, &av)?, bv.shape())?) } else { None };
            Ok(vec![ga, gb])
        }),
    )
}

/// `s * x`.
pub fn scale(x: &Var, s: f32) -> Result<Var> {
    let out = ew::scale(x.value(), s)?;
    x.tape().record1(&[x], out, Box::new(move |outs, _| Ok(vec![Some(ew::scale(&upstream(outs), s)?)])))
}

/// `x` clamped to `[lo, hi]`; the gradient passes where `lo <= x <= hi` (as `torch.clamp`).
pub fn clamp(x: &Var, lo: f32, hi: f32) -> Result<Var> {
    let out = ew::clamp(x.value(), lo, hi)?;
    let xv = x.value().clone();
    x.tape().record1(
        &[x],
        out,
        Box::new(move |outs, _| Ok(vec![Some(ew::clamp_backward(&xv, &upstream(outs), lo, hi)?)])),
    )
}

/// `cap · tanh(x / cap)` (logit soft-capping).
pub fn softcap(x: &Var, cap: f32) -> Result<Var> {
    let out = ew::softcap(x.value(), cap)?;
    let yv = out.clone();
    x.tape().record1(
        &[x],
        out,
        Box::new(move |outs, _| Ok(vec![Some(ew::softcap_backward(&yv, &upstream(outs), cap)?)])),
    )
}

/// GELU, tanh approximation.
pub fn gelu_tanh(x: &Var) -> Result<Var> {
    let out = ew::gelu_tanh(x.value())?;
    let xv = x.value().clone();
    x.tape().record1(&[x], out, Box::new(move |outs, _| Ok(vec![Some(ew::gelu_tanh_backward(&xv, &upstream(outs))?)])))
}

/// `gelu_tanh(gate) * up`.
pub fn geglu(gate: &Var, up: &Var) -> Result<Var> {
    let out = ew::geglu(gate.value(), up.value())?;
    let (gv, uv) = (gate.value().clone(), up.value().clone());
    gate.tape().record1(
        &[gate, up],
        out,
        Box::new(move |outs, needs| {
            let (dg, du) = ew::geglu_backward(&gv, &uv, &upstream(outs))?;
            Ok(vec![needs[0].then_some(dg), needs[1].then_some(du)])
        }),
    )
}
