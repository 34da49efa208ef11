//! The check that a lapidary crate is usable from a project outside this workspace, as a user
//! would depend on it: a fresh Cargo project in the system's temporary directory (so none of this
//! workspace's `.cargo/config.toml` applies) that depends on `lapidary-core` and
//! `lapidary-kernels` by path (with the workspace's patched CPU runtime, as vendor/README.md
//! tells such a project to), is built offline with only what `cargo xtask setup --user` lays
//! (the LLVM shim in the user's data directory; here a data directory of its own, so the user's
//! is not touched) and runs a kernel against its host reference. Not a test of the kernels.

use std::path::Path;
use std::process::Command;

const MAIN: &str = r#"//! A project outside the lapidary workspace: GELU on the CPU runtime against its reference.
use lapidary_core::{DType, Device, Tensor};
use lapidary_kernels::elementwise;

fn main() {
    let dev = Device::cpu().expect("the CPU runtime");
    let x = [-2.0f32, -0.5, 0.0, 0.75, 3.0];
    let t = Tensor::from_f32(&dev, &x, &[x.len()], DType::F32).expect("upload");
    let got = elementwise::gelu_tanh(&t).expect("gelu").to_f32_vec().expect("download");
    let want = elementwise::reference::gelu_tanh(&x);
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "gelu_tanh differs from its reference by {worst}");
    println!("gelu_tanh on {dev}: {got:?} (worst difference from the reference {worst:e})");
}
"#;

pub fn run() -> Result<(), String> {
    let root = crate::workspace_root();
    let dir = std::env::temp_dir().join("lapidary-outside-project");
    let _ = std::fs::remove_dir_all(dir.join("src"));
    std::fs::create_dir_all(dir.join("src")).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let crates = root.join("crates");
    let manifest = format!(
        r#"[package]
name = "uses-lapidary-kernels"
version = "0.1.0"
edition = "2024"

[workspace]

[dependencies]
lapidary-core = {{ path = "{core}" }}
lapidary-kernels = {{ path = "{kernels}" }}

# As vendor/README.md advises a program outside the workspace: CubeCL's CPU runtime as the
# workspace builds it (the lock file below names that copy; the published crate need not be in
# the local registry for an offline build).
[patch.crates-io]
cubecl-cpu = {{ path = "{vendor}" }}

# The README asks for `opt-level = 3` here (kernels crawl without it); this check is of the
# build's setup (offline, the user-level shim), and unoptimized dependencies build 3x faster:
# 2 min 45 s against 8 min 49 s on 2 cores.
[profile.dev.package."*"]
opt-level = 0
debug = false
debug-assertions = false
overflow-checks = false
"#,
        core = crates.join("lapidary-core").display(),
        kernels = crates.join("lapidary-kernels").display(),
        vendor = root.join("vendor/cubecl-cpu").display()
    );
    write(&dir.join("Cargo.toml"), &manifest)?;
    write(&dir.join("src/main.rs"), MAIN)?;
    // The versions this workspace is tested with, and its toolchain.
    copy(&root.join("Cargo.lock"), &dir.join("Cargo.lock"))?;
    copy(&root.join("rust-toolchain.toml"), &dir.join("rust-toolchain.toml"))?;
    // `cargo xtask setup --user`, with a data directory of the check's own.
    let data = dir.join("data");
    crate::setup::lay_shim(&data)?;
    eprintln!("$ (in {}) cargo run --offline", dir.display());
    let status = Command::new(crate::cargo_program())
        .args(["run", "--offline", "--quiet"])
        .current_dir(&dir)
        .env("XDG_DATA_HOME", &data)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "a project outside the workspace depending on lapidary-kernels did not build or run offline ({status}); it is in {}",
            dir.display()
        ));
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to).map(|_| ()).map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}
