//! Turns a runtime [`DType`](lapidary_core::DType) into the generic storage type a kernel is
//! instantiated with. One macro, used by every entry function.

/// `dispatch_float!(dtype, F => launch)`: runs the kernel launch `launch` with the type alias
/// `F` bound to `f32`, `bf16` or `f16` as `dtype` says, through
/// [`lapidary_core::launch::guarded`] (a runtime failure becomes an error at the next read).
macro_rules! dispatch_float {
    ($dtype:expr, $F:ident => $body:expr) => {
        match $dtype {
            lapidary_core::DType::F32 => {
                type $F = f32;
                lapidary_core::launch::guarded(|| {
                    $body;
                })
            }
            lapidary_core::DType::BF16 => {
                type $F = half::bf16;
                lapidary_core::launch::guarded(|| {
                    $body;
                })
            }
            lapidary_core::DType::F16 => {
                type $F = half::f16;
                lapidary_core::launch::guarded(|| {
                    $body;
                })
            }
        }
    };
}
