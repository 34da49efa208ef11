//! Builds `jit/fp_builtins.rs` into a small shared library (Linux only) that `lapidary-core`
//! embeds and loads before the first kernel, so the CPU runtime's JIT finds the bf16/f16
//! conversion builtins LLVM calls on CPUs without native conversions. Uses the same `rustc`
//! cargo runs, for the same target; nothing is downloaded.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=jit/fp_builtins.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let lib = out.join("liblapidary_fp_builtins.so");
    let target = env::var("TARGET").expect("TARGET");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        // Nothing to load elsewhere: an empty file tells the loader so.
        std::fs::write(&lib, b"").expect("writing the empty builtins placeholder");
        return;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(&rustc);
    cmd.args(["--edition", "2024", "--crate-type", "cdylib", "--crate-name", "lapidary_fp_builtins"])
        .args(["-C", "opt-level=2", "-C", "panic=abort", "-C", "debuginfo=0", "-C", "strip=symbols"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nodefaultlibs"])
        .args(["--target", &target])
        .arg("-o")
        .arg(&lib)
        .arg("jit/fp_builtins.rs");
    // A linker cargo was told to use for this target applies here too.
    let linker_var = format!("CARGO_TARGET_{}_LINKER", target.to_uppercase().replace('-', "_"));
    if let Ok(linker) = env::var(&linker_var) {
        cmd.arg("-C").arg(format!("linker={linker}"));
    }
    // A target where a shared library cannot be built (static-only targets) gets none: kernels
    // that need a builtin then fail to compile there, and say so (see `kernel_failure.rs`).
    match cmd.status() {
        Ok(status) if status.success() => {}
        outcome => {
            println!(
                "cargo:warning=the CPU runtime's conversion builtins could not be built for {target} ({outcome:?}); \
                 bf16 kernels may fail to compile on CPUs without native bf16 conversion"
            );
            std::fs::write(&lib, b"").expect("writing the empty builtins placeholder");
        }
    }
}
