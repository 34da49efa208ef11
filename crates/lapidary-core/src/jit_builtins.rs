//! Makes the bf16/f16 conversion builtins that LLVM may call from JIT-compiled CPU kernels
//! resolvable in this process (see `jit/fp_builtins.rs`). The shared library is embedded at
//! build time and loaded once, with global visibility, before the CPU runtime compiles a kernel.
//! Not a loader for anything else.

use std::sync::OnceLock;

/// The library `build.rs` compiled (empty where there is nothing to load).
static LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/liblapidary_fp_builtins.so"));

/// Set to `off` to skip loading the builtins: kernels then fail to compile on CPUs without
/// native bf16 conversion, which is what the test of the failure report needs.
pub const DISABLE_VAR: &str = "LAPIDARY_JIT_BUILTINS";

static STATE: OnceLock<Result<(), String>> = OnceLock::new();

/// Loads the builtins once; later calls return the first outcome. `Err` says why they could not
/// be loaded (kernels that need them will then fail to compile, and say so).
pub fn ensure_loaded() -> Result<(), String> {
    STATE.get_or_init(load).clone()
}

/// Why the builtins are not available, if they are not (for error messages).
pub(crate) fn problem() -> Option<String> {
    match STATE.get() {
        Some(Err(e)) => Some(e.clone()),
        _ => None,
    }
}

fn load() -> Result<(), String> {
    if std::env::var(DISABLE_VAR).is_ok_and(|v| v.trim() == "off") {
        return Err(format!("not loaded: {DISABLE_VAR}=off"));
    }
    if LIBRARY.is_empty() {
        return Ok(());
    }
    platform::load(LIBRARY)
}

#[cfg(target_os = "linux")]
mod platform {
    use std::ffi::{CStr, CString};
    use std::io::Write;
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The handle of the loaded library (0 before it is loaded); it is never closed.
    static HANDLE: AtomicUsize = AtomicUsize::new(0);

    /// The address of `name` in the loaded library itself.
    #[cfg(test)]
    pub(super) fn symbol(name: &str) -> Option<usize> {
        let handle = HANDLE.load(Ordering::SeqCst);
        let c = CString::new(name).ok()?;
        // SAFETY: a handle from dlopen that is never closed, and a valid C string.
        let p = unsafe { libc::dlsym(handle as *mut libc::c_void, c.as_ptr()) };
        (handle != 0 && !p.is_null()).then_some(p as usize)
    }

    /// Writes the library to an anonymous memory file and opens it from there; a file in the
    /// temporary directory where memory files are not available.
    pub(super) fn load(bytes: &[u8]) -> Result<(), String> {
        // SAFETY: a valid C string name and flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"lapidary-fp-builtins".as_ptr(), libc::MFD_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: `fd` is a fresh descriptor owned from here on.
            let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
            file.write_all(bytes).map_err(|e| format!("writing the builtins to a memory file: {e}"))?;
            let opened = open(&format!("/proc/self/fd/{fd}"));
            drop(file);
            if opened.is_ok() {
                return opened;
            }
        }
        let dir = tempfile_dir()?;
        let path = dir.join("liblapidary_fp_builtins.so");
        std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let opened = open(&path.to_string_lossy());
        let _ = std::fs::remove_dir_all(&dir);
        opened
    }

    fn tempfile_dir() -> Result<std::path::PathBuf, String> {
        let dir = std::env::temp_dir().join(format!("lapidary-fp-builtins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(dir)
    }

    fn open(path: &str) -> Result<(), String> {
        let c = CString::new(path).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; the library has no initializers, and the handle is kept open
        // for the life of the process (never closed), so its symbols stay valid.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a thread-local C string or null.
            let msg = unsafe { libc::dlerror() };
            let msg = if msg.is_null() {
                "unknown error".to_string()
            } else {
                // SAFETY: non-null C string from dlerror.
                unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
            };
            return Err(format!("dlopen {path}: {msg}"));
        }
        HANDLE.store(handle as usize, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    pub(super) fn load(_bytes: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    //! The library's builtins against the `half` crate's conversions, bit for bit, on special
    //! values and random bit patterns. Looked up in the library itself: libgcc's f16 builtins,
    //! where present, come first in the process's scope.
    use half::{bf16, f16};
    use proptest::prelude::*;

    fn own<T: Copy>(name: &str) -> T {
        super::ensure_loaded().expect("builtins load");
        let p = super::platform::symbol(name).unwrap_or_else(|| panic!("{name} not in the library"));
        // SAFETY: `T` is the function pointer type of the builtin named.
        unsafe { std::mem::transmute_copy::<usize, T>(&p) }
    }

    fn low16(v: f32) -> u16 {
        v.to_bits() as u16
    }

    fn same_bf16(got: u16, want: bf16) -> bool {
        got == want.to_bits() || (want.is_nan() && bf16::from_bits(got).is_nan())
    }

    fn same_f16(got: u16, want: f16) -> bool {
        got == want.to_bits() || (want.is_nan() && f16::from_bits(got).is_nan())
    }

    /// f64 to f32 rounded to odd: exact for a later rounding to 16 bits.
    fn to_f32_odd(x: f64) -> f32 {
        let mut f = x as f32;
        if !x.is_nan() && f as f64 != x {
            if (f as f64).abs() > x.abs() {
                f = f32::from_bits(f.to_bits() - 1);
            }
            f = f32::from_bits(f.to_bits() | 1);
        }
        f
    }

    fn check(x: f32, d: f64, h: u16) -> Result<(), TestCaseError> {
        let trunc_bf: extern "C" fn(f32) -> f32 = own("__truncsfbf2");
        let trunc_hf: extern "C" fn(f32) -> f32 = own("__truncsfhf2");
        let trunc_dbf: extern "C" fn(f64) -> f32 = own("__truncdfbf2");
        let trunc_dhf: extern "C" fn(f64) -> f32 = own("__truncdfhf2");
        let ext_hf: extern "C" fn(f32) -> f32 = own("__extendhfsf2");
        let ext_bf: extern "C" fn(f32) -> f32 = own("__extendbfsf2");
        prop_assert!(same_bf16(low16(trunc_bf(x)), bf16::from_f32(x)), "bf16 of {:e}", x);
        prop_assert!(same_f16(low16(trunc_hf(x)), f16::from_f32(x)), "f16 of {:e}", x);
        prop_assert!(same_bf16(low16(trunc_dbf(d)), bf16::from_f32(to_f32_odd(d))), "bf16 of f64 {:e}", d);
        prop_assert!(same_f16(low16(trunc_dhf(d)), f16::from_f32(to_f32_odd(d))), "f16 of f64 {:e}", d);
        let want = f16::from_bits(h).to_f32();
        let got = ext_hf(f32::from_bits(h as u32 | 0xabcd_0000));
        prop_assert!(got.to_bits() == want.to_bits() || (want.is_nan() && got.is_nan()), "f32 of f16 {:#x}", h);
        let want = bf16::from_bits(h).to_f32();
        let got = ext_bf(f32::from_bits(h as u32));
        prop_assert!(got.to_bits() == want.to_bits() || (want.is_nan() && got.is_nan()), "f32 of bf16 {:#x}", h);
        Ok(())
    }

    #[test]
    fn conversions_match_half_on_special_values() {
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-45,
            65504.0,
            65519.99,
            65520.0,
            65536.0,
            5.960_464_5e-8,
            2.980_232_2e-8,
            2.980_233e-8,
            6.097_555e-5,
            3.389_531_4e38,
            1.003_906_2,
            1.011_718_8,
        ];
        for (i, &x) in specials.iter().enumerate() {
            let d = x as f64 * (1.0 + f64::EPSILON * i as f64);
            check(x, d, x.to_bits() as u16).unwrap();
            check(-x, 1e300 * d, (x.to_bits() >> 16) as u16).unwrap();
        }
    }

    proptest! {
        #[test]
        fn conversions_match_half_on_random_bits(bits in any::<u32>(), wide in any::<u64>(), h in any::<u16>()) {
            check(f32::from_bits(bits), f64::from_bits(wide), h)?;
        }

        #[test]
        fn conversions_match_half_near_rounding_ties(upper in 0u32..1 << 16, pick in 0usize..3, low in 0u64..4) {
            // Dropped bits exactly at a tie or one step either side, where rounding goes wrong
            // first: for bf16 the low 16 bits of an f32, for f16 (normal range) the low 13.
            let bf = [0x8000u32, 0x7fff, 0x8001][pick];
            check(f32::from_bits((upper << 16) | bf), f64::from_bits(((upper as u64) << 48) | ((bf as u64) << 32) | low), upper as u16)?;
            let hf = [0x1000u32, 0x0fff, 0x1001][pick];
            let x = f32::from_bits(((upper % 30 + 113) << 23) | ((upper & 0x3ff) << 13) | hf);
            check(x, x as f64, upper as u16)?;
        }
    }
}
