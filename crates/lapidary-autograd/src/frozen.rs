//! The packed forms of a frozen weight, kept between steps: `W` prepared for the product
//! `x · Wᵀ` and for the gradient `dy · W` (`lapidary_kernels::matmul::PreparedB`, panels on the
//! CPU), each made at its first use and reused by every later forward, checkpointed recompute
//! and backward. A weight that is trained, on a GPU, or not the very tensor the panels were made
//! from (another storage) is never served from them. Not a cache of activations.

use crate::Var;
use lapidary_core::{Result, Tensor};
use lapidary_kernels::matmul::{Layout, PreparedB};
use std::cell::RefCell;
use std::rc::Rc;

/// A frozen weight's prepared forms, shared by the clones of the layer that holds it (a
/// checkpointed segment's copy included). Costs one more copy of the weight per form in use.
#[derive(Clone, Default)]
pub struct FrozenPanels(Rc<RefCell<Slots>>);

#[derive(Default)]
struct Slots {
    product: Option<PreparedB>,
    gradient: Option<PreparedB>,
}

impl FrozenPanels {
    /// Whether `w` can be served from kept panels: frozen and on the CPU.
    pub fn applies_to(w: &Var) -> bool {
        !w.requires_grad() && w.value().device().is_cpu()
    }

    /// `w` (`[out, in]`) prepared for `x · wᵀ` ([`Layout::ABt`]) or for `dy · w` ([`Layout::AB`],
    /// the gradient of `x`): the kept form when [`Self::applies_to`] holds (the gradient's made at
    /// the first backward, so a model that never trains never holds it), else prepared for this
    /// call only.
    pub fn prepared(&self, w: &Var, layout: Layout) -> Result<PreparedB> {
        if Self::applies_to(w) { self.kept(w.value(), layout) } else { PreparedB::new(w.value(), layout) }
    }

    /// The kept form of `w` in one layout, made now when missing or made from another tensor.
    /// For a `w` that [`Self::applies_to`].
    pub(crate) fn kept(&self, w: &Tensor, layout: Layout) -> Result<PreparedB> {
        let mut slots = self.0.borrow_mut();
        let slot = if layout.b_transposed_only("FrozenPanels")? { &mut slots.product } else { &mut slots.gradient };
        if let Some(p) = slot.as_ref().filter(|p| p.tensor().same_storage(w)) {
            return Ok(p.clone());
        }
        let prepared = PreparedB::kept(w, layout)?;
        *slot = Some(prepared.clone());
        Ok(prepared)
    }

    /// Which forms are held now: `(product, gradient)`.
    pub fn held(&self) -> (bool, bool) {
        let slots = self.0.borrow();
        (slots.product.is_some(), slots.gradient.is_some())
    }
}
