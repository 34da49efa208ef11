//! Floating-point conversion builtins for kernels JIT-compiled by CubeCL's CPU runtime.
//!
//! LLVM lowers a conversion to bf16 (and, on CPUs without F16C, to and from f16) into calls to
//! compiler-rt style builtins (`__truncsfbf2`, `__truncsfhf2`, ...) when the CPU has no
//! instruction for it, and the JIT resolves those calls against the process's global symbols.
//! Debian 12's libgcc has no bf16 builtins, so without this library a bf16 kernel fails to link
//! on any CPU without AVX512-BF16. `lapidary-core`'s build script compiles this file into a small
//! shared library which `lapidary-core` loads with global visibility before the first kernel.
//!
//! It is not a general runtime library: only the conversions LLVM emits for kernels live here.
//! Every value is rounded to nearest, ties to even; NaN stays a quiet NaN with its sign.
//! 16-bit values travel in the low bits of a floating-point register, as the x86-64 and AArch64
//! calling conventions pass `__bf16` and `_Float16`; an `f32` carrier gives the same registers.
#![no_std]

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// A 16-bit pattern in the low bits of an f32 register.
fn carry(bits: u16) -> f32 {
    f32::from_bits(bits as u32)
}

/// The 16-bit pattern from the low bits of an f32 register.
fn carried(v: f32) -> u16 {
    v.to_bits() as u16
}

fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

fn f64_to_bf16_bits(x: f64) -> u16 {
    if x.is_nan() {
        let sign = ((x.to_bits() >> 48) as u16) & 0x8000;
        return sign | 0x7fc0;
    }
    // Round once, from f64 straight to 8 significant bits: going through f32 would round twice.
    let bits = x.to_bits();
    let sign = ((bits >> 48) as u16) & 0x8000;
    let abs = bits & 0x7fff_ffff_ffff_ffff;
    let exp = (abs >> 52) as i32;
    if exp == 0x7ff {
        return sign | 0x7f80;
    }
    // Unbiased exponent in bf16 terms (bias 127).
    let e = exp - 1023 + 127;
    let mant = (abs & 0x000f_ffff_ffff_ffff) | if exp == 0 { 0 } else { 1 << 52 };
    if exp == 0 && mant == 0 {
        return sign;
    }
    // Target: 7 stored mantissa bits plus the implicit bit for normals.
    let (shift, biased) = if e >= 1 { (52 - 7, e) } else { (52 - 7 + (1 - e) as u32 as i32, 0) };
    if shift >= 64 {
        return sign;
    }
    let shift = shift as u32;
    let kept = mant >> shift;
    let rest = mant & ((1u64 << shift) - 1);
    let half = 1u64 << (shift - 1);
    let mut q = kept;
    if rest > half || (rest == half && (kept & 1) == 1) {
        q += 1;
    }
    // q holds the implicit bit at 1 << 7 for normals; carrying into it is handled by addition.
    let out = if biased >= 1 {
        let v = ((biased as u64) << 7) + (q - (1 << 7));
        if v >= 0xff << 7 { 0x7f80 } else { v as u16 }
    } else {
        q as u16
    };
    sign | out
}

fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        return sign | 0x7e00 | ((abs >> 13) as u16 & 0x01ff);
    }
    if abs >= 0x4780_0000 {
        // 65536 and above: infinity (65520 up to it rounds there below).
        return sign | 0x7c00;
    }
    if abs < 0x3300_0000 {
        // Below half the smallest subnormal: zero (the tie at exactly 2^-25 rounds to even, 0).
        return sign;
    }
    let exp = (abs >> 23) as i32;
    let mant = (abs & 0x007f_ffff) | 0x0080_0000;
    // f16 exponent bias 15; normal when exp - 127 + 15 >= 1.
    let e = exp - 127 + 15;
    let shift = if e >= 1 { 13 } else { (13 + 1 - e) as u32 };
    let kept = mant >> shift;
    let rest = mant & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let mut q = kept;
    if rest > half || (rest == half && (kept & 1) == 1) {
        q += 1;
    }
    let out = if e >= 1 { ((e as u32) << 10) + (q - (1 << 10)) } else { q };
    sign | out as u16
}

fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x03ff) as u32;
    let bits = if exp == 0x1f {
        sign | 0x7f80_0000 | (mant << 13) | if mant != 0 { 0x0040_0000 } else { 0 }
    } else if exp != 0 {
        sign | ((exp + 127 - 15) << 23) | (mant << 13)
    } else if mant == 0 {
        sign
    } else {
        // Subnormal: exact as an f32.
        let v = mant as f32 * (1.0 / 16_777_216.0);
        return if sign != 0 { -v } else { v };
    };
    f32::from_bits(bits)
}

#[unsafe(no_mangle)]
pub extern "C" fn __truncsfbf2(x: f32) -> f32 {
    carry(f32_to_bf16_bits(x))
}

#[unsafe(no_mangle)]
pub extern "C" fn __truncdfbf2(x: f64) -> f32 {
    carry(f64_to_bf16_bits(x))
}

#[unsafe(no_mangle)]
pub extern "C" fn __extendbfsf2(x: f32) -> f32 {
    f32::from_bits((carried(x) as u32) << 16)
}

#[unsafe(no_mangle)]
pub extern "C" fn __truncsfhf2(x: f32) -> f32 {
    carry(f32_to_f16_bits(x))
}

#[unsafe(no_mangle)]
pub extern "C" fn __truncdfhf2(x: f64) -> f32 {
    // Round to odd into f32 (truncate, then set the last bit when inexact), then to f16: with 13
    // spare bits this rounds exactly once, as a direct f64 -> f16 rounding would.
    let mut f = x as f32;
    if !x.is_nan() && (f as f64) != x {
        if (f as f64).abs() > x.abs() {
            f = f32::from_bits(f.to_bits() - 1);
        }
        f = f32::from_bits(f.to_bits() | 1);
    }
    carry(f32_to_f16_bits(f))
}

#[unsafe(no_mangle)]
pub extern "C" fn __extendhfsf2(x: f32) -> f32 {
    f16_bits_to_f32(carried(x))
}

#[unsafe(no_mangle)]
pub extern "C" fn __extendhfdf2(x: f32) -> f64 {
    f16_bits_to_f32(carried(x)) as f64
}
