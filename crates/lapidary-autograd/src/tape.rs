//! The tape and its variables. A [`Var`] is a tensor value plus an id on a [`Tape`]; ops record a
//! node (inputs, outputs, backward closure) only when some input requires a gradient and the
//! tape is not in a no-grad scope. Not the backward walk itself (see `grad.rs`).

use lapidary_core::{Error, Result, Tensor};
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

/// Identifies a variable on its tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(pub(crate) usize);

/// Whether a parameter leaf is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trainable {
    /// Gets a gradient; a missing or non-finite one is an error after backward.
    Yes,
    /// Never gets a gradient buffer.
    No,
}

/// The backward of one recorded node: output gradients in (None where an output got none),
/// one optional gradient per input out (computed only for inputs whose flag in `needs` is set).
pub(crate) type BackwardFn = Box<dyn FnOnce(&[Option<Tensor>], &[bool]) -> Result<Vec<Option<Tensor>>>>;

pub(crate) struct Node {
    pub inputs: Vec<VarId>,
    pub needs: Vec<bool>,
    pub outputs: Vec<VarId>,
    pub backward: BackwardFn,
}

pub(crate) struct LeafInfo {
    pub id: VarId,
    pub name: String,
    pub trainable: bool,
    pub value: Tensor,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub next_id: usize,
    pub nodes: Vec<Node>,
    pub leaves: Vec<LeafInfo>,
    pub no_grad_depth: usize,
}

/// A recording of differentiable ops. Cheap to clone (a shared handle); single-threaded.
#[derive(Clone, Default)]
pub struct Tape {
    pub(crate) inner: Rc<RefCell<Inner>>,
}

/// A tensor value on a tape.
#[derive(Clone)]
pub struct Var {
    id: VarId,
    value: Tensor,
    requires_grad: bool,
    tape: Tape,
}

/// Restores recording when dropped (see [`Tape::no_grad`]).
pub struct NoGradGuard {
    tape: Tape,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        self.tape.inner.borrow_mut().no_grad_depth -= 1;
    }
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&self) -> VarId {
        let mut inner = self.inner.borrow_mut();
        inner.next_id += 1;
        VarId(inner.next_id)
    }

    /// A value that needs no gradient (data, masks, tables).
    pub fn input(&self, value: Tensor) -> Var {
        Var { id: self.fresh(), value, requires_grad: false, tape: self.clone() }
    }

    /// A named parameter leaf, trainable or frozen. Names appear in the gradient report.
    pub fn param(&self, name: impl Into<String>, value: Tensor, trainable: Trainable) -> Var {
        let id = self.fresh();
        let trainable = trainable == Trainable::Yes;
        self.inner.borrow_mut().leaves.push(LeafInfo { id, name: name.into(), trainable, value: value.clone() });
        Var { id, value, requires_grad: trainable, tape: self.clone() }
    }

    /// Ops inside the returned guard's lifetime record nothing (their outputs need no gradient).
    pub fn no_grad(&self) -> NoGradGuard {
        self.inner.borrow_mut().no_grad_depth += 1;
        NoGradGuard { tape: self.clone() }
    }

    /// Whether ops are being recorded now.
    pub fn is_recording(&self) -> bool {
        self.inner.borrow().no_grad_depth == 0
    }

    /// Number of recorded nodes (for tests and memory accounting).
    pub fn len(&self) -> usize {
        self.inner.borrow().nodes.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records an op producing `outputs` from `inputs`. When no input requires a gradient (or in
    /// a no-grad scope) nothing is recorded and the outputs need no gradient; `backward` is then
    /// never called.
    pub fn record(&self, inputs: &[&Var], outputs: Vec<Tensor>, backward: BackwardFn) -> Result<Vec<Var>> {
        for v in inputs {
            if !Rc::ptr_eq(&v.tape.inner, &self.inner) {
                return Err(Error::invalid("autograd: an op mixed variables of two different tapes"));
            }
        }
        let needs: Vec<bool> = inputs.iter().map(|v| v.requires_grad).collect();
        let track = self.is_recording() && needs.iter().any(|&n| n);
        let outs: Vec<Var> = outputs
            .into_iter()
            .map(|value| Var { id: self.fresh(), value, requires_grad: track, tape: self.clone() })
            .collect();
        if track {
            self.inner.borrow_mut().nodes.push(Node {
                inputs: inputs.iter().map(|v| v.id).collect(),
                needs,
                outputs: outs.iter().map(|v| v.id).collect(),
                backward,
            });
        }
        Ok(outs)
    }

    /// Records a single-output op.
    pub fn record1(&self, inputs: &[&Var], output: Tensor, backward: BackwardFn) -> Result<Var> {
        Ok(self.record(inputs, vec![output], backward)?.pop().expect("one output"))
    }

    /// The trainable parameter leaves, named, in creation order (what an optimizer updates).
    pub fn trainable_params(&self) -> Vec<(String, Var)> {
        let inner = self.inner.borrow();
        inner
            .leaves
            .iter()
            .filter(|l| l.trainable)
            .map(|l| {
                (l.name.clone(), Var { id: l.id, value: l.value.clone(), requires_grad: true, tape: self.clone() })
            })
            .collect()
    }

    /// Forgets the parameter leaf `id` (its name and value): a frozen weight replaced by a packed
    /// copy frees its memory once nothing else holds it. Variables already made keep working.
    pub fn release_leaf(&self, id: VarId) {
        self.inner.borrow_mut().leaves.retain(|l| l.id != id);
    }

    /// Every parameter leaf, trainable or frozen, named, in creation order.
    pub fn params(&self) -> Vec<(String, Var)> {
        let inner = self.inner.borrow();
        inner
            .leaves
            .iter()
            .map(|l| {
                (
                    l.name.clone(),
                    Var { id: l.id, value: l.value.clone(), requires_grad: l.trainable, tape: self.clone() },
                )
            })
            .collect()
    }

    /// Names of every parameter leaf, in creation order.
    pub fn leaf_names(&self) -> Vec<String> {
        self.inner.borrow().leaves.iter().map(|l| l.name.clone()).collect()
    }

    /// The name of a parameter leaf, if `id` is one.
    pub fn leaf_name(&self, id: VarId) -> Option<String> {
        self.inner.borrow().leaves.iter().find(|l| l.id == id).map(|l| l.name.clone())
    }
}

impl Var {
    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// This variable's id on its tape.
    pub fn id(&self) -> VarId {
        self.id
    }

    /// Whether a gradient flows to this variable.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// The tape this variable lives on.
    pub fn tape(&self) -> &Tape {
        &self.tape
    }

    /// Shape of the value.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Var({:?}, {:?}, grad={})", self.id, self.value, self.requires_grad)
    }
}
