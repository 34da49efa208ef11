//! Elementwise ops and their backward: GELU (tanh approximation), GeGLU, add, mul (with suffix
//! broadcasting), scale (by a host number or by one on the device), clamp and logit soft-capping. Each kernel is a grid-stride
//! loop over vectors of the storage type, computing in f32. Not for broadcasting ops with
//! different shapes (those live beside the op that needs them).

mod binary;
mod clamp;
mod gelu;
pub mod reference;
mod softcap;

pub use binary::{add, add_backward, geglu, geglu_backward, mul, mul_backward, scale, scale_by, sum_to};
pub use clamp::{clamp, clamp_backward};
pub use gelu::{gelu_tanh, gelu_tanh_backward};
pub use softcap::{softcap, softcap_backward};

use lapidary_core::{Error, Result, Tensor};

/// An error unless `b` has the shape, dtype and device of `a`.
pub(crate) fn same_layout(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            format!("{op}: second operand"),
            format!("{:?} (as the first)", a.shape()),
            b.shape(),
        ));
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            context: format!("{op}: second operand"),
            expected: a.dtype().to_string(),
            got: b.dtype(),
        });
    }
    if a.device() != b.device() {
        return Err(Error::Device(format!("{op}: operands on {} and {}", a.device(), b.device())));
    }
    Ok(())
}
