//! Matmul and the shape ops around it (reshape, transposes).

use super::upstream;
use crate::{FrozenPanels, Var, tape::BackwardFn};
use lapidary_core::Result;
use lapidary_kernels::matmul::{self as mm, Layout, Needs};
use lapidary_kernels::reduce;

/// `op(a) · op(b) (+ bias)`; see `lapidary_kernels::matmul::matmul` for the layouts.
pub fn matmul(a: &Var, b: &Var, bias: Option<&Var>, layout: Layout) -> Result<Var> {
    let out = mm::matmul(a.value(), b.value(), bias.map(Var::value), layout)?;
    let (av, bv) = (a.value().clone(), b.value().clone());
    let has_bias = bias.is_some();
    let backward: BackwardFn = Box::new(move |outs, needs| {
        let need_bias = has_bias && needs[2];
        let g = mm::matmul_backward(
            &av,
            &bv,
            &upstream(outs),
            layout,
            Needs { a: needs[0], b: needs[1], bias: need_bias },
        )?;
        let mut v = vec![g.a, g.b];
        if has_bias {
            v.push(g.bias);
        }
        Ok(v)
    });
    let mut inputs = vec![a, b];
    inputs.extend(bias);
    a.tape().record1(&inputs, out, backward)
}

/// `x · Wᵀ (+ bias)` for a weight `w: [out, in]` (a Linear), served from `panels` while it is
/// frozen on the CPU ([`FrozenPanels`]: packed once, reused by every later call and by the
/// gradient of `x`); a trainable weight, or one on a GPU, is the plain [`matmul`] and gets its
/// gradient. A frozen `w` is not an input of the product: the gradient reaches `x` and the bias.
pub fn matmul_frozen(x: &Var, w: &Var, panels: &FrozenPanels, bias: Option<&Var>) -> Result<Var> {
    if !FrozenPanels::applies_to(w) {
        return matmul(x, w, bias, Layout::ABt);
    }
    let prepared = panels.prepared(w, Layout::ABt)?;
    let out = mm::matmul_prepared(x.value(), &prepared, bias.map(Var::value))?;
    let (wv, panels) = (w.value().clone(), panels.clone());
    let has_bias = bias.is_some();
    let backward: BackwardFn = Box::new(move |outs, needs| {
        let dy = upstream(outs);
        let dx = if needs[0] { Some(mm::matmul_prepared(&dy, &panels.kept(&wv, Layout::AB)?, None)?) } else { None };
        let mut v = vec![dx];
        if has_bias {
            let out_features = wv.dim(0);
            let rows = dy.reshape(&[dy.numel() / out_features.max(1), out_features])?;
            v.push(if needs[1] { Some(reduce::sum_rows(&rows)?) } else { None });
        }
        Ok(v)
    });
    let mut inputs = vec![x];
    inputs.extend(bias);
    x.tape().record1(&inputs, out, backward)
}

/// `addend + op(a) · op(b)` in one pass where the kernel allows it (see
/// `lapidary_kernels::matmul::matmul_add`): a Linear's output plus its low-rank term.
pub fn matmul_add(addend: &Var, a: &Var, b: &Var, layout: Layout) -> Result<Var> {
    let out = mm::matmul_add(addend.value(), a.value(), b.value(), layout)?;
    let (av, bv) = (a.value().clone(), b.value().clone());
    let backward: BackwardFn = Box::new(move |outs, needs| {
        let dy = upstream(outs);
        let g = mm::matmul_backward(&av, &bv, &dy, layout, Needs { a: needs[1], b: needs[2], bias: false })?;
        Ok(vec![needs[0].then_some(dy), g.a, g.b])
    });
    addend.tape().record1(&[addend, a, b], out, backward)
}

/// `x · Wᵀ (+ bias)` with a frozen packed `W` (`[out, in]`, bf16 or NF4), through
/// `lapidary_kernels::quant::matmul_packed`: on the CPU expanded to f32 for the forward product
/// and again in backward for `dx` (the expanded copy never kept between the two, so only the
/// packed form stays in memory); on GPUs bf16 tensor cores with f32 accumulation. No gradient
/// for `W`.
pub fn matmul_packed(
    x: &Var,
    w: &std::rc::Rc<lapidary_kernels::quant::PackedMatrix>,
    bias: Option<&Var>,
) -> Result<Var> {
    use lapidary_kernels::quant;
    let out = quant::matmul_packed(x.value(), w, bias.map(Var::value), Layout::ABt)?;
    let w = w.clone();
    let has_bias = bias.is_some();
    let backward: BackwardFn = Box::new(move |outs, needs| {
        let need_bias = has_bias && needs[1];
        let dy = upstream(outs);
        // dx = dy · W (W read as stored, [out, in]).
        let dx = if needs[0] { Some(quant::matmul_packed(&dy, &w, None, Layout::AB)?) } else { None };
        let mut v = vec![dx];
        if has_bias {
            let n = dy.dim(-1);
            let db = if need_bias {
                Some(lapidary_kernels::reduce::sum_rows(&dy.reshape(&[dy.numel() / n.max(1), n])?)?)
            } else {
                None
            };
            v.push(db);
        }
        Ok(v)
    });
    let mut inputs = vec![x];
    inputs.extend(bias);
    x.tape().record1(&inputs, out, backward)
}

/// The same values with another shape.
pub fn reshape(x: &Var, shape: &[usize]) -> Result<Var> {
    let out = x.value().reshape(shape)?;
    let orig = x.shape().to_vec();
    x.tape().record1(&[x], out, Box::new(move |outs, _| Ok(vec![Some(upstream(outs).reshape(&orig)?)])))
}

/// Swaps the last two dims.
pub fn transpose(x: &Var) -> Result<Var> {
    let out = mm::transpose(x.value())?;
    x.tape().record1(&[x], out, Box::new(move |outs, _| Ok(vec![Some(mm::transpose(&upstream(outs))?)])))
}

/// `[A, R, C, D] -> [A, C, R, D]` (tokens × heads to heads × tokens and back).
pub fn swap_middle(x: &Var) -> Result<Var> {
    let out = mm::swap_middle(x.value())?;
    x.tape().record1(&[x], out, Box::new(move |outs, _| Ok(vec![Some(mm::swap_middle(&upstream(outs))?)])))
}
