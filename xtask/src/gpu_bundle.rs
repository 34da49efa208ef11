//! `cargo xtask gpu-bundle`: builds here, for a GPU machine that has no Rust toolchain and no
//! network, everything `tools/gpu/run.sh` runs there — for each CUDA code path (LLVM's NVPTX back
//! end, feature `cuda`; CUDA C++ through NVRTC, feature `cuda-cpp`) the kernel tests, the model
//! tests, the kernel benchmarks and the `lapidary` binary — and packs them with the test fixtures,
//! the PyTorch scripts, CUDA's headers and libdevice (from PyPI) into one archive,
//! `target/gpu-bundle/lapidary-gpu.tar.xz`.
//!
//! The binaries link everything statically (LLVM, libstdc++, libgcc, zlib, zstd) except glibc;
//! the CUDA driver and NVRTC are loaded at run time. Each carries its own copy of LLVM, so the
//! archive is compressed as one xz stream with a dictionary larger than all of them together:
//! the copies after the first cost little. Builds in `target/gpu-bundle/build` (its own flags,
//! so the main target directory is not rebuilt). Does not run anything on a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The archive may not exceed this (what one transfer to a GPU machine carries, with the
/// repository beside it).
const MAX_ARCHIVE_BYTES: u64 = 64 << 20;
/// Shared objects a bundled binary may still need: glibc's.
const ALLOWED_NEEDED: &[&str] =
    &["libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "ld-linux-x86-64.so.2"];

/// One CUDA code path: its directory in the archive and the cargo feature selecting it.
pub const BACKENDS: &[(&str, &str)] = &[("llvm", "cuda"), ("cpp", "cuda-cpp")];

/// `--no-archive`: build the bundle's tests and binary and check that glibc's are their only
/// shared objects, without the kernel benchmarks and without staging and compressing the
/// archive, which takes minutes and is only needed to carry it.
pub const NO_ARCHIVE: &str = "--no-archive";

pub fn run(args: &[String]) -> Result<(), String> {
    let root = crate::workspace_root();
    let out = root.join("target/gpu-bundle");
    let stage = out.join("stage");
    let top = stage.join("lapidary-gpu");
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| format!("removing {}: {e}", stage.display()))?;
    }
    let extra: Vec<String> = args.iter().filter(|a| *a != NO_ARCHIVE).cloned().collect();
    if extra.len() < args.len() {
        for (dir, feature) in BACKENDS {
            for (name, exe) in build_backend(feature, &extra, false)? {
                check_needed(&exe)?;
                println!("{dir}/{name}: built, needs only glibc's shared objects");
            }
        }
        return Ok(());
    }
    let extra = &extra[..];
    let mut manifest = format!("lapidary {} ({})\n", git(&root, &["describe", "--always", "--dirty"]), date());
    for (dir, feature) in BACKENDS {
        for (name, exe) in build_backend(feature, extra, true)? {
            let dest = top.join(dir).join(name);
            copy(&exe, &dest)?;
            check_needed(&dest)?;
            let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
            manifest.push_str(&format!("{dir}/{name} {:.1} MiB\n", size as f64 / 1048576.0));
        }
    }
    // The fixtures the bundled tests read. Gemma 4's (7 MiB, random values that do not
    // compress) stay out until tests that read them run on the card.
    for e in std::fs::read_dir(root.join("tests/fixtures")).map_err(|e| e.to_string())?.flatten() {
        let dest = top.join("repo/tests/fixtures").join(e.file_name());
        if e.file_name().to_string_lossy().starts_with("tiny-gemma4") {
            continue;
        }
        if e.path().is_dir() { copy_tree(&e.path(), &dest)? } else { copy(&e.path(), &dest)? }
    }
    copy_tree(&root.join("assets/tiny-vlm"), &top.join("repo/assets/tiny-vlm"))?;
    for f in ["torch_bench.py", "table.py", "run.sh"] {
        copy(&root.join("tools/gpu").join(f), &top.join("tools").join(f))?;
    }
    // What a GPU machine with only a driver and PyTorch's wheels may lack: CUDA's headers (NVRTC
    // reads them) and libdevice (the NVPTX path links it for exp, tanh, …). run.sh uses these
    // where the machine has no CUDA toolkit of its own.
    let tools = crate::cuda_check::cuda_tools(&root.join("target/cuda-tools"))?;
    for e in std::fs::read_dir(tools.cuda_path.join("include")).map_err(|e| e.to_string())?.flatten() {
        if e.file_name() == "cccl" {
            continue; // the same headers as those laid beside it, for CUDA 13's layout
        }
        let dest = top.join("cuda/include").join(e.file_name());
        if e.path().is_dir() { copy_tree(&e.path(), &dest)? } else { copy(&e.path(), &dest)? }
    }
    copy_tree(&tools.cuda_path.join("nvvm/libdevice"), &top.join("cuda/nvvm/libdevice"))?;
    let raw = dir_size(&top);
    manifest.push_str(&format!("uncompressed {:.1} MiB\n", raw as f64 / 1048576.0));
    std::fs::write(top.join("MANIFEST"), &manifest).map_err(|e| format!("writing MANIFEST: {e}"))?;
    let archive = out.join("lapidary-gpu.tar.xz");
    let t0 = std::time::Instant::now();
    compress(&stage, &archive)?;
    manifest.push_str(&format!("compressed in {:.0} s\n", t0.elapsed().as_secs_f64()));
    // The staged copy is 10x the archive; the archive is what travels.
    std::fs::remove_dir_all(&stage).map_err(|e| format!("removing {}: {e}", stage.display()))?;
    let size = std::fs::metadata(&archive).map_err(|e| format!("{}: {e}", archive.display()))?.len();
    print!("{manifest}");
    println!(
        "archive {} {:.1} MiB (limit {} MiB)",
        archive.display(),
        size as f64 / 1048576.0,
        MAX_ARCHIVE_BYTES >> 20
    );
    if size > MAX_ARCHIVE_BYTES {
        return Err(format!("the archive is {size} bytes, over the {MAX_ARCHIVE_BYTES}-byte limit"));
    }
    Ok(())
}

/// Builds, for the CUDA code path of cargo feature `feature` (see [`BACKENDS`]), the kernel tests,
/// the model tests, the `lapidary` binary and (`bench`) the kernel benchmarks, statically
/// linked, in `target/gpu-bundle/build`; returns them by their bundle names (`kernel-tests`,
/// `model-tests`, `lapidary`, `bench-kernels`). `extra` goes to cargo.
pub fn build_backend(feature: &str, extra: &[String], bench: bool) -> Result<Vec<(&'static str, PathBuf)>, String> {
    let root = crate::workspace_root();
    let out = root.join("target/gpu-bundle");
    let build_dir = out.join("build");
    let static_dir = out.join("static-libs");
    lay_static_libs(&static_dir)?;
    let rustflags = format!("-L native={} -C link-arg=-static-libgcc", static_dir.display());
    // One cargo invocation for all of them: cargo resolves features once, so CubeCL and LLVM's
    // bindings compile once. Built separately, `--package lapidary-kernels` alone unifies
    // features differently from the root package and compiles them all a second time.
    let mut args = vec![
        "test",
        "--no-run",
        "--package",
        "lapidary-kernels",
        "--package",
        "lapidary",
        "--lib",
        "--test",
        "integration",
        "--profile",
        "gpu-bundle",
        "--features",
        feature,
        "--message-format=json-render-diagnostics",
    ];
    if bench {
        args.extend(["--bench", "kernels"]);
    }
    args.extend(extra.iter().map(String::as_str));
    eprintln!(
        "gpu-bundle: {feature}: building the kernel tests, the model tests, lapidary{}",
        if bench { " and the kernel benchmarks" } else { "" }
    );
    let mut found: Vec<(&'static str, PathBuf)> = Vec::new();
    let env = [("CARGO_TARGET_DIR", build_dir.as_os_str()), ("RUSTFLAGS", rustflags.as_ref())];
    for artifact in crate::cargo_executables(&args, &env)? {
        if let Some(name) = bundle_name(&artifact)
            && !found.iter().any(|(n, _)| *n == name)
        {
            found.push((name, artifact.exe));
        }
    }
    for wanted in ["kernel-tests", "model-tests", "lapidary"].into_iter().chain(bench.then_some("bench-kernels")) {
        if !found.iter().any(|(n, _)| *n == wanted) {
            return Err(format!("the {feature} build produced no {wanted} executable"));
        }
    }
    Ok(found)
}

/// The name an executable of a build goes by in the bundle (and in `cargo xtask cuda-check`'s
/// workloads): the kernel tests, the model tests, the kernel benchmarks and the `lapidary`
/// binary itself (not its unit tests, a `bin` too); `None` for any other.
pub fn bundle_name(a: &crate::Artifact) -> Option<&'static str> {
    match (a.target.as_str(), a.kind.as_str()) {
        ("lapidary_kernels", "lib") => Some("kernel-tests"),
        ("integration", "test") => Some("model-tests"),
        ("kernels", "bench") => Some("bench-kernels"),
        ("lapidary", "bin") if !a.harness => Some("lapidary"),
        _ => None,
    }
}

/// A directory holding only static archives of the C/C++ libraries LLVM and Rust's std would
/// otherwise take as shared objects; searched first, so the linker finds the `.a` there. Rust's
/// std asks for `gcc_s` by name: its static counterpart is `libgcc_eh.a`.
fn lay_static_libs(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let libs = [
        ("libstdc++.a", gcc_file("libstdc++.a")?),
        ("libgcc_s.a", gcc_file("libgcc_eh.a")?),
        ("libz.a", system_lib("libz.a")?),
        ("libzstd.a", system_lib("libzstd.a")?),
    ];
    for (name, target) in libs {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(|e| format!("linking {}: {e}", link.display()))?;
    }
    Ok(())
}

fn gcc_file(name: &str) -> Result<PathBuf, String> {
    let out = Command::new("gcc").arg(format!("-print-file-name={name}")).output().map_err(|e| format!("gcc: {e}"))?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if p.is_absolute() && p.exists() {
        Ok(p)
    } else {
        Err(format!("gcc does not know {name} (install build-essential)"))
    }
}

fn system_lib(name: &str) -> Result<PathBuf, String> {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or_else(|| format!("{name} not found (Debian: zlib1g-dev, libzstd-dev; `cargo xtask setup` installs them)"))
}

/// Fails when `bin` needs a shared object other than glibc's.
fn check_needed(bin: &Path) -> Result<(), String> {
    let out = Command::new("readelf").arg("-d").arg(bin).output().map_err(|e| format!("readelf: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    let extra: Vec<&&str> = needed.iter().filter(|n| !ALLOWED_NEEDED.contains(n)).collect();
    if extra.is_empty() {
        Ok(())
    } else {
        Err(format!("{} needs shared objects beyond glibc: {extra:?}", bin.display()))
    }
}

fn compress(stage: &Path, archive: &Path) -> Result<(), String> {
    let tmp = archive.with_extension("xz.tmp");
    // One xz stream, one thread, a dictionary larger than the input: the LLVM inside every
    // binary after the first is found as a long match. Preset 3 (on the 822 MiB of binaries
    // today): 62.1 MiB in 114 s, against 63.4 MiB in 62 s at preset 1 and 56.0 MiB in 589 s at
    // preset 6; an x86 branch filter makes it larger (80 MB), since it breaks those matches.
    let script = format!(
        "tar -C '{}' -cf - lapidary-gpu | xz -T1 --lzma2=preset=3,dict=1GiB > '{}'",
        stage.display(),
        tmp.display()
    );
    eprintln!("gpu-bundle: compressing");
    let ok = Command::new("sh").arg("-c").arg(&script).status().map_err(|e| format!("sh: {e}"))?.success();
    if !ok {
        return Err(format!("compressing failed: {script}"));
    }
    std::fs::rename(&tmp, archive).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::copy(from, to).map(|_| ()).map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() { copy_tree(&p, &dest)? } else { copy(&p, &dest)? }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { dir_size(&p) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn git(root: &Path, args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown commit".into())
}

fn date() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
