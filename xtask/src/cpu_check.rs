//! `cargo xtask cpu-check`: the CPU runtime's kernels on CPUs other than this machine's.
//!
//! LLVM JIT-compiles every kernel for the CPU it runs on, so what a kernel calls (native bf16
//! conversion, or a builtin function the JIT has to find) depends on that CPU. This task runs
//! the kernel tests and the bf16 parity tests under `qemu-x86_64` (Debian's `qemu-user`, installed
//! with apt-get as root when missing) emulating CPUs without AVX-512, and checks that a kernel
//! which cannot be compiled is reported as an error naming it. x86-64 hosts only. Not a
//! performance check: emulated time says nothing about native speed.

use crate::Artifact;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// Emulated CPU models and what they lack compared with a Zen 4 / Sapphire Rapids host.
const CPUS: [(&str, &str); 2] = [
    ("Haswell-v4", "x86-64-v3: AVX2, FMA, F16C; no AVX-512, no native bf16 (like AMD EPYC Rome/Milan)"),
    ("Nehalem", "x86-64-v2: SSE4.2; no AVX, no F16C (f16 conversions are calls too)"),
];

/// Random cases per kernel property test under emulation (each costs ~100x its native time).
const PROPTEST_CASES: &str = "6";

/// Integration tests run under emulation (a filter of test names): the bf16 model paths.
const INTEGRATION_FILTER: &str = "bf16";

pub fn run() -> Result<(), String> {
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("cpu-check: x86-64 hosts only (this one is {}); nothing to do", std::env::consts::ARCH);
        return Ok(());
    }
    let qemu = find_or_install_qemu()?;
    // The executables of the workspace's test build, as `cargo xtask test` made them.
    let built = crate::test_executables(crate::TEST_FEATURES)?;
    let core = pick(&built, "lapidary_core", "lib")?;
    let kernels = pick(&built, "lapidary_kernels", "lib")?;
    let integration = pick(&built, "integration", "test")?;

    let mut rows = Vec::new();
    for (cpu, what) in CPUS {
        eprintln!("cpu-check: {cpu} ({what})");
        for (name, exe, filter) in [
            ("lapidary-core", &core, None),
            ("lapidary-kernels", &kernels, None),
            ("bf16 model tests", &integration, Some(INTEGRATION_FILTER)),
        ] {
            let (ok, secs, summary) = run_emulated(&qemu, cpu, exe, filter, &[])?;
            let counts = summary.split(". ").nth(1).and_then(|r| r.split("; 0 ignored").next()).unwrap_or(&summary);
            rows.push(format!("| {cpu} | {name} | {} | {secs:.0} s |", if ok { counts } else { "FAILED" }));
            if !ok {
                print_table(&rows);
                return Err(format!("{name} failed on an emulated {cpu} ({what})"));
            }
        }
    }

    // Without the conversion builtins a bf16 kernel cannot be linked on a CPU without native bf16
    // conversion: that must surface as an error naming the kernel, never as unwritten output.
    let (cpu, _) = CPUS[0];
    let filter = "matmul::kernel::tests::wide_vectors_and_edges";
    let (passed, _, output) = run_emulated(&qemu, cpu, &kernels, Some(filter), &[("LAPIDARY_JIT_BUILTINS", "off")])?;
    let reported = output.contains("a kernel failed to compile or run") && output.contains("kernel symbol '");
    rows.push(format!(
        "| {cpu}, builtins off | a bf16 kernel | {} |  |",
        if !passed && reported { "error naming the kernel (expected)" } else { "NOT REPORTED" }
    ));
    print_table(&rows);
    if passed || !reported {
        return Err(format!(
            "with LAPIDARY_JIT_BUILTINS=off on an emulated {cpu}, `{filter}` should fail with an error naming \
             the kernel; it {}",
            if passed { "passed" } else { "failed without that error" }
        ));
    }
    Ok(())
}

fn print_table(rows: &[String]) {
    println!("| emulated CPU | tests | result | time |\n| --- | --- | --- | --- |");
    for r in rows {
        println!("{r}");
    }
}

/// Runs a test binary under qemu; (passed, seconds, the result line or the whole output).
fn run_emulated(
    qemu: &PathBuf,
    cpu: &str,
    exe: &PathBuf,
    filter: Option<&str>,
    env: &[(&str, &str)],
) -> Result<(bool, f64, String), String> {
    let start = Instant::now();
    let mut cmd = Command::new(qemu);
    cmd.args(["-cpu", cpu]).arg(exe).arg("--test-threads=2");
    // The GPU matmul route (cubek's routines) never runs on the CPU runtime outside its own
    // tests, which compile large kernels: too slow under emulation, and not what this checks.
    cmd.args(["--skip", "matmul::accelerated"]);
    // Likewise the attention kernels in the GPU's shape (their tests: `tiled` in the name): the
    // CPU runs the CPU-shaped ones, and their barriers, a spinning thread per unit, crawl under
    // emulation (90 s for two tests).
    cmd.args(["--skip", "tiled"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    // What differs between CPUs is how each kernel is compiled, which a few random cases of
    // every test exercise; the native run keeps each test's full count.
    cmd.env("LAPIDARY_PROPTEST_CASES", PROPTEST_CASES);
    cmd.envs(env.iter().copied()).env("LAPIDARY_DEVICE", "cpu").current_dir(crate::workspace_root());
    let out = cmd.output().map_err(|e| format!("running {}: {e}", qemu.display()))?;
    let secs = start.elapsed().as_secs_f64();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && env.is_empty() {
        eprintln!("{text}");
    }
    let summary = text.lines().rev().find(|l| l.starts_with("test result:")).unwrap_or("").to_string();
    let ran = summary.contains(" passed;") && !summary.contains(" 0 passed;");
    if out.status.success() && !ran {
        return Err(format!("{} under {cpu} ran no test: {summary}", exe.display()));
    }
    Ok((out.status.success(), secs, if env.is_empty() { summary } else { text }))
}

/// The executable among `built` of target `name` and kind `kind` (`lib` for a library's tests).
fn pick(built: &[Artifact], name: &str, kind: &str) -> Result<PathBuf, String> {
    built
        .iter()
        .find(|a| a.target == name && a.kind == kind)
        .map(|a| a.exe.clone())
        .ok_or_else(|| format!("the test build produced no {kind} executable {name}"))
}

/// `qemu-x86_64`, installed with apt-get (as root) when missing.
fn find_or_install_qemu() -> Result<PathBuf, String> {
    let found = || {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("qemu-x86_64")).find(|p| p.is_file()))
    };
    if let Some(p) = found() {
        return Ok(p);
    }
    let install = "apt-get update && apt-get install -y --no-install-recommends qemu-user";
    if !crate::setup::is_root() {
        return Err(format!("cpu-check needs qemu-x86_64; run as root:\n  {install}"));
    }
    eprintln!("cpu-check: installing qemu-user: {install}");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(install)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("running apt-get: {e}"))?
        .success();
    match found() {
        Some(p) if ok => Ok(p),
        _ => Err(format!("installing qemu-user failed; the command was:\n  {install}")),
    }
}
