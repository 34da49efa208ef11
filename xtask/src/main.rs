//! xtask: the project's tasks, run as `cargo xtask <task>`. It depends on none of the lapidary
//! crates (so it builds in seconds, before LLVM is set up) and only drives cargo and the system.
//!
//! Tasks: `setup` (LLVM for CubeCL, offline), `test`, `bench`, `demo`, `gpu-bundle`, `check-grad`,
//! `cpu-check`, `cuda-check`.

mod bench;
mod cpu_check;
mod cuda_check;
mod gpu_bundle;
mod outside;
mod setup;
mod step_bench;

use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  setup        install the system LLVM CubeCL links against (Debian packages) and lay the
               offline shim CubeCL's build looks for; idempotent. --user: the shim in the
               user's data directory, so projects outside this workspace that depend on a
               lapidary crate build offline too
  test [args]  setup, then a check that lapidary-io and lapidary-data build without CubeCL
               and that a project outside the workspace builds on lapidary-kernels and runs
               offline, every test of the workspace (CUDA's runtime compiled in, the CPU's
               running; extra args go to `cargo test`), the doc examples, the HF parity
               tests again with attention materialized and tiled, and cpu-check
  bench [args] setup, then the criterion benchmarks and a table of the results (extra
               args go to criterion, e.g. a name filter), then a LoRA training step timed
               against HF transformers + PEFT on this CPU (a small VLM and the 270M GGUF;
               the peer's Python packages from tools/reference/requirements.txt + gguf, in
               .venv or LAPIDARY_PYTHON); --no-step / --step-only run one half
  demo [args]  setup, then the main job on the CPU, release build (extra args go to
               `lapidary demo`)
  gpu-bundle   setup, then build the CUDA test, benchmark and lapidary binaries (both CUDA
               code paths, statically linked) into target/gpu-bundle/lapidary-gpu.tar.xz for
               tools/gpu/run.sh on a GPU machine (extra args go to cargo; --no-archive
               builds and checks the binaries without packing them)
  check-grad   setup, then the gradient-flow check: finite differences for every
               differentiable op and the adapter chain with checkpointing off and on,
               printed as one table; fails on any failure
  cuda-check   setup, then every kernel the model, the trainer and the tests launch, compiled
               for sm_80 and sm_90 through both CUDA code paths (LLVM NVPTX; CUDA C++ by
               NVRTC) and assembled by ptxas, without a GPU (NVRTC and ptxas from PyPI), by
               the test build's executables; one row per kernel: registers, spills, shared
               memory
  cpu-check    setup, then the kernel tests and the bf16 model tests under qemu-x86_64 on
               CPUs without AVX-512 (Haswell) and without AVX (Nehalem), and a check that
               a kernel that cannot be compiled is an error naming it (x86-64 hosts)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match task.as_str() {
        "setup" if rest.iter().any(|a| a == "--user") => setup::run_user(),
        "setup" => setup::run(),
        "test" => setup::run().and_then(|_| test(rest)),
        "bench" => setup::run().and_then(|_| bench::run(rest)),
        "demo" => setup::run().and_then(|_| demo(rest)),
        "gpu-bundle" => setup::run().and_then(|_| gpu_bundle::run(rest)),
        "cpu-check" => setup::run().and_then(|_| cpu_check::run()),
        "cuda-check" => setup::run().and_then(|_| cuda_check::run()),
        "check-grad" => setup::run().and_then(|_| {
            cargo(&[
                "test",
                "--package",
                "lapidary",
                "--test",
                "integration",
                "check_grad",
                "--",
                "--nocapture",
                "--test-threads=1",
            ])
        }),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task '{other}'\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The features of the workspace's test build: CUDA's runtime compiled in (LLVM's NVPTX code
/// path) beside the CPU's. The device stays the CPU unless `LAPIDARY_DEVICE` names another, so
/// the tests run as without it; `cargo xtask cuda-check` runs the same executables against its
/// stand-in driver, and `cpu-check` under emulation, so the dependencies compile once for all
/// three.
pub const TEST_FEATURES: &str = "lapidary/cuda";

/// `cargo test` over every crate, test, benchmark and binary of the workspace with `features`.
fn test_build_args(features: &str) -> Vec<&str> {
    vec!["test", "--workspace", "--all-targets", "--features", features]
}

/// The executables of the workspace's test build with `features` ([`TEST_FEATURES`]: the test
/// build itself, nothing rebuilt after `cargo xtask test`; `lapidary/cuda-cpp`: CUDA C++'s code
/// path), built when not yet.
pub fn test_executables(features: &str) -> Result<Vec<Artifact>, String> {
    let mut args = test_build_args(features);
    args.extend(["--no-run", "--message-format=json-render-diagnostics"]);
    eprintln!("$ cargo {}", args.join(" "));
    cargo_executables(&args, &[])
}

fn test(extra: &[String]) -> Result<(), String> {
    kernel_free_crates()?;
    outside::run()?;
    let mut args = test_build_args(TEST_FEATURES);
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;
    // Doc examples are part of each crate's promise to its users.
    cargo(&["test", "--workspace", "--doc", "--features", TEST_FEATURES])?;
    // Attention runs fused in the CPU's shape on the CPU: run the HF parity and packing tests
    // again with the scores materialized (the reference path) and fused in the GPU's shape (the
    // GPUs' default, here without tensor cores).
    for path in ["materialized", "tiled"] {
        cargo_env(
            &[
                "test",
                "--workspace",
                "--features",
                TEST_FEATURES,
                "--test",
                "integration",
                "--",
                "hf_parity",
                "packing",
            ],
            &[("LAPIDARY_ATTENTION", path)],
        )?;
    }
    // Kernels are JIT-compiled for the CPU they run on: check CPUs other than this one.
    cpu_check::run()
}

/// The crates that promise to build without CubeCL (and so without LLVM): none of them may
/// reach it through any normal dependency.
const KERNEL_FREE: [&str; 2] = ["lapidary-io", "lapidary-data"];

/// Fails when a [`KERNEL_FREE`] crate's dependency tree holds a `cubecl` crate.
fn kernel_free_crates() -> Result<(), String> {
    for krate in KERNEL_FREE {
        let out = Command::new(cargo_program())
            .args(["tree", "--offline", "--edges", "normal", "--prefix", "none", "--package", krate])
            .current_dir(workspace_root())
            .output()
            .map_err(|e| format!("could not run cargo tree: {e}"))?;
        if !out.status.success() {
            return Err(format!("`cargo tree --package {krate}` failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        let kernels: Vec<&str> = tree.lines().filter(|l| l.starts_with("cubecl")).collect();
        if !kernels.is_empty() {
            return Err(format!("{krate} must build without CubeCL, but depends on {}", kernels.join(", ")));
        }
        let crates: std::collections::BTreeSet<&str> = tree.lines().map(|l| l.trim_end_matches(" (*)")).collect();
        eprintln!("{krate}: kernel-free ({} crates in its tree, no cubecl)", crates.len());
    }
    Ok(())
}

fn demo(extra: &[String]) -> Result<(), String> {
    // Release: what a user gets from `cargo install`; the build's progress is shown.
    let mut args = vec!["run", "--release", "--package", "lapidary", "--bin", "lapidary", "--", "demo"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

/// The cargo that runs this task (`$CARGO`), else the one on the PATH.
pub fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs cargo with `args` in the workspace root; an error when it fails.
pub fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_env(args, &[])
}

/// [`cargo`] with extra environment variables.
pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let cargo = cargo_program();
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    eprintln!("$ {}cargo {}", shown.concat(), args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`cargo {}` failed ({status})", args.join(" "))) }
}

/// An executable cargo produced: its target's name (`-` as `_`), the target's first kind
/// (`lib`, `bin`, `test`, `bench`), whether it is a test harness (a binary's own unit tests are
/// a `bin` too) and its path.
pub struct Artifact {
    pub target: String,
    pub kind: String,
    pub harness: bool,
    pub exe: std::path::PathBuf,
}

/// Runs cargo with `args` (which must ask for `--message-format=json…`) and `env` in the
/// workspace root, and returns every executable it produced.
pub fn cargo_executables(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<Vec<Artifact>, String> {
    let out = Command::new(cargo_program())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("`cargo {}` failed ({})", args.join(" "), out.status));
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] == "compiler-artifact"
            && let (Some(exe), Some(name), Some(kind)) =
                (msg["executable"].as_str(), msg["target"]["name"].as_str(), msg["target"]["kind"][0].as_str())
        {
            let (target, kind, harness) = (name.replace('-', "_"), kind.to_string(), msg["profile"]["test"] == true);
            exes.push(Artifact { target, kind, harness, exe: std::path::PathBuf::from(exe) });
        }
    }
    Ok(exes)
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}
