//! The backward walk, the gradient store and the gradient-flow report. After every backward,
//! each trainable leaf is checked by name: it must have received a gradient, all finite. Frozen
//! leaves never appear in the store. Not the ops' own backward formulas (see `ops`).

use crate::tape::{Tape, Var, VarId};
use lapidary_core::{Error, Result, Tensor};
use lapidary_kernels::{elementwise, gather, reduce};
use std::collections::HashMap;
use std::fmt;

/// Gradients of the leaves, by variable id and by name.
#[derive(Default, Debug)]
pub struct GradStore {
    grads: HashMap<VarId, Tensor>,
    names: HashMap<String, VarId>,
}

impl GradStore {
    /// The gradient of a leaf, if it got one.
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.grads.get(&v.id())
    }

    /// The gradient of a named parameter leaf.
    pub fn by_name(&self, name: &str) -> Option<&Tensor> {
        self.names.get(name).and_then(|id| self.grads.get(id))
    }

    /// Gradients by leaf id (inputs of a checkpointed segment included).
    pub fn by_id(&self, id: VarId) -> Option<&Tensor> {
        self.grads.get(&id)
    }

    /// `(name, gradient)` of every named leaf that got one, sorted by name.
    pub fn named(&self) -> Vec<(&str, &Tensor)> {
        let mut v: Vec<_> =
            self.names.iter().filter_map(|(n, id)| self.grads.get(id).map(|g| (n.as_str(), g))).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// Whether no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }
}

/// One trainable leaf's line in the report.
#[derive(Clone, Debug, PartialEq)]
pub struct LeafReport {
    /// Parameter name.
    pub name: String,
    /// Whether a gradient reached it.
    pub has_grad: bool,
    /// Whether every element of the gradient is finite.
    pub finite: bool,
    /// L2 norm of the gradient (0 when none).
    pub norm: f64,
}

/// What reached each trainable leaf, plus the frozen leaves a gradient touched (always an error).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GradReport {
    /// One row per trainable leaf, in creation order.
    pub rows: Vec<LeafReport>,
    /// Frozen leaves that got a gradient (none, by construction; checked anyway).
    pub frozen_touched: Vec<String>,
}

impl GradReport {
    /// Trainable leaves without a finite gradient.
    pub fn failures(&self) -> Vec<&LeafReport> {
        self.rows.iter().filter(|r| !r.has_grad || !r.finite).collect()
    }

    /// Trainable leaves whose gradient is finite and non-zero.
    pub fn nonzero(&self) -> usize {
        self.rows.iter().filter(|r| r.has_grad && r.finite && r.norm > 0.0).count()
    }
}

impl fmt::Display for GradReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<48} {:>5} {:>7} {:>12}", "trainable leaf", "grad", "finite", "norm")?;
        for r in &self.rows {
            writeln!(f, "{:<48} {:>5} {:>7} {:>12.4e}", r.name, r.has_grad, r.finite, r.norm)?;
        }
        for n in &self.frozen_touched {
            writeln!(f, "frozen leaf touched by a gradient: {n}")?;
        }
        Ok(())
    }
}

/// Options of a backward pass.
#[derive(Clone, Debug, Default)]
pub struct BackwardOptions {
    /// Names of trainable leaves allowed to end without a gradient (explicit opt-out; e.g. a
    /// vision adapter on a text-only batch).
    pub allow_missing: Vec<String>,
}

impl Tape {
    /// Backward from a scalar (`[1]`) loss, seeded with 1. Errors if a trainable leaf got no
    /// gradient or a non-finite one, naming it.
    pub fn backward(&self, loss: &Var) -> Result<(GradStore, GradReport)> {
        self.backward_with(loss, &BackwardOptions::default())
    }

    /// [`Tape::backward`] with options. Reads every trainable gradient's sum of squares back
    /// from the device, in one buffer.
    pub fn backward_with(&self, loss: &Var, opts: &BackwardOptions) -> Result<(GradStore, GradReport)> {
        let store = self.backward_unread(loss, opts)?;
        let report = self.report(&store)?;
        let non_finite: Vec<String> = report
            .rows
            .iter()
            .filter(|r| r.has_grad && !r.finite)
            .map(|r| format!("{} (non-finite gradient)", r.name))
            .collect();
        if !non_finite.is_empty() {
            return Err(flow_error(&non_finite, &[]));
        }
        Ok((store, report))
    }

    /// Backward from a scalar loss with the half of [`Tape::backward_with`]'s check that needs
    /// nothing from the device: every trainable leaf (but those in `allow_missing`) got a
    /// gradient, and no frozen one did. Reads nothing back, so a GPU is never waited for;
    /// whether the gradients are finite is the caller's to check later (the trainer reads every
    /// gradient's sum of squares with the step's other figures, once per logged step).
    pub fn backward_unread(&self, loss: &Var, opts: &BackwardOptions) -> Result<GradStore> {
        if loss.value().numel() != 1 {
            return Err(Error::shape("backward: loss", "a single value", loss.shape()));
        }
        let seed = gather::fill(loss.value().device(), loss.shape(), 1.0, loss.value().dtype())?;
        let store = self.backward_seeded(&[(loss.clone(), seed)])?;
        let (mut missing, mut frozen_touched) = (Vec::new(), Vec::new());
        for leaf in &self.inner.borrow().leaves {
            let has_grad = store.grads.contains_key(&leaf.id);
            if leaf.trainable && !has_grad && !opts.allow_missing.contains(&leaf.name) {
                missing.push(format!("{} (no gradient)", leaf.name));
            } else if !leaf.trainable && has_grad {
                frozen_touched.push(leaf.name.clone());
            }
        }
        if !missing.is_empty() || !frozen_touched.is_empty() {
            return Err(flow_error(&missing, &frozen_touched));
        }
        Ok(store)
    }

    /// Backward from several outputs with given upstream gradients; returns the gradients of
    /// every leaf (named parameters and inputs) that requires one. No report, no check.
    pub fn backward_seeded(&self, seeds: &[(Var, Tensor)]) -> Result<GradStore> {
        let mut grads: HashMap<VarId, Tensor> = HashMap::new();
        for (v, g) in seeds {
            g.expect_shape("backward: seed gradient", v.shape())?;
            if v.requires_grad() {
                accumulate(&mut grads, v.id(), g.clone())?;
            }
        }
        let nodes = std::mem::take(&mut self.inner.borrow_mut().nodes);
        for node in nodes.into_iter().rev() {
            let outs: Vec<Option<Tensor>> = node.outputs.iter().map(|id| grads.remove(id)).collect();
            if outs.iter().all(Option::is_none) {
                continue;
            }
            let ins = (node.backward)(&outs, &node.needs)?;
            for ((id, need), g) in node.inputs.iter().zip(&node.needs).zip(ins) {
                if let (true, Some(g)) = (*need, g) {
                    accumulate(&mut grads, *id, g)?;
                }
            }
        }
        let inner = self.inner.borrow();
        let names = inner.leaves.iter().map(|l| (l.name.clone(), l.id)).collect();
        Ok(GradStore { grads, names })
    }

    /// The gradient-flow report of `store` against this tape's leaves.
    pub fn report(&self, store: &GradStore) -> Result<GradReport> {
        let inner = self.inner.borrow();
        let mut report = GradReport::default();
        // Every trainable gradient's sum of squares in one buffer, read back once.
        let trained: Vec<&Tensor> =
            inner.leaves.iter().filter(|l| l.trainable).filter_map(|l| store.grads.get(&l.id)).collect();
        let sums = if trained.is_empty() { Vec::new() } else { reduce::sum_sq_each(&trained)?.to_f32_vec()? };
        let mut sums = sums.into_iter();
        for leaf in &inner.leaves {
            let g = store.grads.get(&leaf.id);
            if !leaf.trainable {
                if g.is_some() {
                    report.frozen_touched.push(leaf.name.clone());
                }
                continue;
            }
            let (has_grad, finite, norm) = match g {
                None => (false, false, 0.0),
                Some(_) => {
                    let ss = sums.next().expect("one sum per trained gradient") as f64;
                    (true, ss.is_finite(), if ss.is_finite() { ss.sqrt() } else { f64::NAN })
                }
            };
            report.rows.push(LeafReport { name: leaf.name.clone(), has_grad, finite, norm });
        }
        Ok(report)
    }
}

/// The gradient-flow check's error: trainable leaves (with what is wrong) and frozen leaves
/// that got a gradient.
fn flow_error(trainable: &[String], frozen_touched: &[String]) -> Error {
    let mut msg = String::from("gradient flow check failed:");
    for m in trainable {
        msg.push_str(&format!("\n  trainable {m}"));
    }
    for n in frozen_touched {
        msg.push_str(&format!("\n  frozen {n} received a gradient"));
    }
    Error::Invalid(msg)
}

fn accumulate(grads: &mut HashMap<VarId, Tensor>, id: VarId, g: Tensor) -> Result<()> {
    let g = match grads.remove(&id) {
        Some(prev) => elementwise::add(&prev, &g)?,
        None => g,
    };
    grads.insert(id, g);
    Ok(())
}
