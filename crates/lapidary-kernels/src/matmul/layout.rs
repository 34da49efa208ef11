//! The options of a matmul, named: [`Layout`] (which operands are read transposed) and
//! [`Needs`] (which gradients a backward computes). Not the kernels.

/// Which operands a matmul reads transposed (over their last two dims). A Linear's forward is
/// [`Layout::ABt`]: its weight is stored `[out, in]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `A · B`: `a` is `[..., M, K]`, `b` is `[..., K, N]`.
    AB,
    /// `A · Bᵀ`: `b` is stored `[..., N, K]`.
    ABt,
    /// `Aᵀ · B`: `a` is stored `[..., K, M]`.
    AtB,
    /// `Aᵀ · Bᵀ`: both stored transposed.
    AtBt,
}

impl Layout {
    /// The layout that transposes `a` and/or `b` as given.
    pub fn new(transpose_a: bool, transpose_b: bool) -> Self {
        match (transpose_a, transpose_b) {
            (false, false) => Layout::AB,
            (false, true) => Layout::ABt,
            (true, false) => Layout::AtB,
            (true, true) => Layout::AtBt,
        }
    }

    /// Whether `a` is read transposed.
    pub fn transposes_a(self) -> bool {
        matches!(self, Layout::AtB | Layout::AtBt)
    }

    /// Whether `b` is read transposed.
    pub fn transposes_b(self) -> bool {
        matches!(self, Layout::ABt | Layout::AtBt)
    }

    /// For an op that reads `a` as stored and may read `b` transposed ([`Layout::AB`] or
    /// [`Layout::ABt`]): whether `b` is transposed; an error naming `op` for the other layouts.
    pub fn b_transposed_only(self, op: &str) -> lapidary_core::Result<bool> {
        if self.transposes_a() {
            return Err(lapidary_core::Error::invalid(format!(
                "{op}: layout {self:?} transposes a, which {op} reads as stored (AB or ABt)"
            )));
        }
        Ok(self.transposes_b())
    }
}

/// Which gradients a matmul's backward computes; the others are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The gradient of `a`.
    pub a: bool,
    /// The gradient of `b`.
    pub b: bool,
    /// The gradient of the bias.
    pub bias: bool,
}

impl Needs {
    /// Every gradient: `a`, `b` and the bias.
    pub const ALL: Needs = Needs { a: true, b: true, bias: true };
    /// The two operands' gradients, no bias.
    pub const OPERANDS: Needs = Needs { a: true, b: true, bias: false };
}

#[cfg(test)]
mod tests {
    use super::Layout;

    #[test]
    fn layouts_round_trip_through_their_flags() {
        for l in [Layout::AB, Layout::ABt, Layout::AtB, Layout::AtBt] {
            assert_eq!(Layout::new(l.transposes_a(), l.transposes_b()), l);
        }
        assert!(Layout::ABt.transposes_b() && !Layout::ABt.transposes_a());
    }
}
