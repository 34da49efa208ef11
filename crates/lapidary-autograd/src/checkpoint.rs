//! Gradient checkpointing. A segment (e.g. one transformer layer) runs once without recording,
//! keeping only its outputs; during backward it is recomputed on a private tape and
//! differentiated there. Its trainable parameters are explicit inputs of the recorded node, so a
//! segment whose activation input needs no gradient (a frozen patch embedding feeding vision
//! adapters) still passes gradients to its parameters. Recomputation runs the same kernels on
//! the same values, so results equal the non-checkpointed ones bit for bit on deterministic
//! kernels.

use crate::tape::{BackwardFn, Tape, Trainable, Var};
use lapidary_core::{Error, Result};
use std::rc::Rc;

/// Runs `segment(tape, inputs, params)` checkpointed. `inputs` are activations, `params` every
/// parameter the segment uses (trainable or frozen); the segment must compute only from these
/// two lists. Returns the segment's outputs on the caller's tape.
pub fn checkpoint<F>(inputs: &[&Var], params: &[&Var], segment: F) -> Result<Vec<Var>>
where
    F: Fn(&Tape, &[Var], &[Var]) -> Result<Vec<Var>> + 'static,
{
    let outer = inputs
        .first()
        .or(params.first())
        .map(|v| v.tape().clone())
        .ok_or_else(|| Error::invalid("checkpoint: a segment needs at least one input or parameter"))?;
    let segment = Rc::new(segment);
    // Forward: nothing on the private tape requires a gradient, so nothing is kept.
    let values: Vec<Vec<lapidary_core::Tensor>> = {
        let fwd = Tape::new();
        let ins: Vec<Var> = inputs.iter().map(|v| fwd.input(v.value().clone())).collect();
        let ps: Vec<Var> = params.iter().map(|v| fwd.input(v.value().clone())).collect();
        vec![segment(&fwd, &ins, &ps)?.iter().map(|v| v.value().clone()).collect()]
    };
    let out_values = values.into_iter().next().expect("one forward");
    let n_out = out_values.len();
    let in_values: Vec<_> = inputs.iter().map(|v| v.value().clone()).collect();
    let param_values: Vec<_> = params.iter().map(|v| v.value().clone()).collect();
    let param_names: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, v)| outer.leaf_name(v.id()).unwrap_or_else(|| format!("checkpoint param {i}")))
        .collect();
    let backward: BackwardFn = Box::new(move |outs, needs| {
        let tape = Tape::new();
        let (need_in, need_p) = needs.split_at(in_values.len());
        let ins: Vec<Var> = in_values
            .iter()
            .zip(need_in)
            .enumerate()
            .map(|(i, (v, &n))| {
                if n {
                    tape.param(format!("checkpoint input {i}"), v.clone(), Trainable::Yes)
                } else {
                    tape.input(v.clone())
                }
            })
            .collect();
        let ps: Vec<Var> = param_values
            .iter()
            .zip(need_p)
            .zip(&param_names)
            .map(|((v, &n), name)| tape.param(name.clone(), v.clone(), if n { Trainable::Yes } else { Trainable::No }))
            .collect();
        let recomputed = segment(&tape, &ins, &ps)?;
        if recomputed.len() != n_out {
            return Err(Error::invalid(format!(
                "checkpoint: the segment returned {} outputs on recompute, {n_out} before",
                recomputed.len()
            )));
        }
        let seeds: Vec<_> = recomputed.into_iter().zip(outs).filter_map(|(v, g)| g.clone().map(|g| (v, g))).collect();
        let store = tape.backward_seeded(&seeds)?;
        Ok(ins
            .iter()
            .chain(&ps)
            .zip(needs)
            .map(|(v, &n)| if n { store.by_id(v.id()).cloned() } else { None })
            .collect())
    });
    let mut all: Vec<&Var> = inputs.to_vec();
    all.extend_from_slice(params);
    outer.record(&all, out_values, backward)
}
