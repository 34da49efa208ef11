//! `cargo xtask cuda-check`: every kernel lapidary launches, compiled for real NVIDIA GPUs on a
//! machine without one, through both CUDA code paths, and assembled to machine code by `ptxas`.
//!
//! How: the kernel tests, the model tests and the `lapidary` binary of the workspace's test build
//! ([`crate::TEST_FEATURES`], CUDA's runtime compiled in; again with CUDA C++'s code path) run
//! against a stand-in CUDA driver
//! (`xtask/fake_cuda_driver.rs`, built here with rustc) that describes an sm_80 or sm_90 card,
//! keeps every PTX module CubeCL hands it and records every launch, but runs nothing. CubeCL
//! itself does the real work: it expands each kernel the code launches, with the vector widths
//! and storage types the code picks for that card, and compiles it with LLVM's NVPTX back end
//! (feature `cuda`, needing CUDA's libdevice) or to CUDA C++ for the real NVRTC (`cuda-cpp`).
//! `ptxas` then assembles every module for its architecture. NVRTC, ptxas, libdevice and CUDA's
//! headers come from PyPI (`nvidia-cuda-*-cu12`), installed into `target/cuda-tools`.
//!
//! Fails on: a kernel that does not compile (in any workload's output), a module `ptxas`
//! rejects, a launch past the card's limits (threads per block, grid, shared memory), and a
//! configuration that captured no kernel. A negative check withholds libdevice and requires the
//! LLVM path's failure to be caught. Prints one row per kernel: launches, registers, spills,
//! shared memory; writes the table to `target/cuda-check/report.md`.
//!
//! Not a test of results: no kernel runs, so the test binaries' own verdicts mean nothing here
//! (they fail on the zeros they read back) and are ignored; `tools/gpu/run.sh` on a GPU checks
//! results. Coverage is what the workloads reach: the model and trainer paths completely (the
//! model tests: every base format, checkpointing on and off, eval, training, generation; and
//! bench-step for the attention paths only they do not take), the kernel tests up to each
//! test's first comparison.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// PyPI packages providing NVRTC, ptxas + libdevice, CUDA's headers, and CCCL's headers.
const CUDA_TOOLS: &[&str] = &[
    "nvidia-cuda-nvrtc-cu12==12.9.86",
    "nvidia-cuda-nvcc-cu12==12.9.86",
    "nvidia-cuda-runtime-cu12==12.9.79",
    "nvidia-cuda-cccl-cu12==12.9.27",
];
/// Compute capabilities compiled for: A100 (sm_80) and H100/H200 (sm_90).
const ARCHS: [u32; 2] = [80, 90];
/// What CubeCL prints when a kernel fails to compile, load or launch.
const FAILURE_MARKERS: &[&str] = &[
    "A compilation error happened",
    "Too many resources were requested",
    "A launch error happened",
    "The device was poisoned",
    "the kernel could not be loaded",
    // lapidary's own report of a kernel whose expansion or compilation panicked inside CubeCL.
    "a kernel failed to compile or run",
];

/// The CUDA tools installed from PyPI.
pub struct CudaTools {
    /// Directory holding `libnvrtc.so.12`.
    pub nvrtc_lib: PathBuf,
    pub ptxas: PathBuf,
    /// A CUDA_PATH: `include/` (CUDA and CCCL headers) and `nvvm/libdevice`.
    pub cuda_path: PathBuf,
}

/// One kernel (PTX entry) as one configuration compiled and launched it.
#[derive(Default, Clone)]
struct KernelRow {
    launches: u64,
    max_threads: u64,
    max_dynamic_shared: u64,
    registers: u64,
    spill_stores: u64,
    spill_loads: u64,
    stack: u64,
    static_shared: u64,
    assembled: bool,
}

pub fn run() -> Result<(), String> {
    let root = crate::workspace_root();
    let out = root.join("target/cuda-check");
    let tools = cuda_tools(&root.join("target/cuda-tools"))?;
    let driver = build_fake_driver(&out.join("driver"))?;
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut report = String::new();
    let mut summary = Vec::new();
    for (backend, feature) in crate::gpu_bundle::BACKENDS {
        let bins = test_build(feature)?;
        // The two architectures side by side: each workload is mostly one compiling thread.
        let results: Vec<Result<Config, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ARCHS
                .iter()
                .map(|&sm| {
                    let (root, tools, driver, out, bins) = (&root, &tools, driver.as_path(), &out, &bins);
                    scope.spawn(move || check_config(root, tools, driver, out, backend, bins, sm))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a check thread panicked".into()))).collect()
        });
        for r in results {
            let c = r?;
            eprintln!("cuda-check: {}", c.summary);
            summary.push(c.summary);
            report.push_str(&c.table);
            failures.extend(c.failures);
        }
    }
    negative_check(&tools, &driver, &out, &mut failures)?;
    let text = format!(
        "# cuda-check\n\n{}\n\n{}",
        summary.iter().map(|l| format!("- {l}")).collect::<Vec<_>>().join("\n"),
        report
    );
    std::fs::write(out.join("report.md"), &text).map_err(|e| format!("writing report.md: {e}"))?;
    println!("{text}");
    println!("cuda-check: {:.0} s; report in {}", started.elapsed().as_secs_f64(), out.join("report.md").display());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} failure(s):\n  {}", failures.len(), failures.join("\n  ")))
    }
}

/// The executables the workloads run for the code path of cargo feature `feature`: the
/// workspace's test build (`cuda`: the very build `cargo xtask test` runs; `cuda-cpp`: the same
/// with CUDA C++'s code path), by their names in the GPU bundle.
fn test_build(feature: &str) -> Result<HashMap<&'static str, PathBuf>, String> {
    let built = crate::test_executables(&format!("lapidary/{feature}"))?;
    Ok(built.into_iter().filter_map(|a| Some((crate::gpu_bundle::bundle_name(&a)?, a.exe))).collect())
}

/// What one configuration (code path × architecture) found.
struct Config {
    summary: String,
    table: String,
    failures: Vec<String>,
}

/// Runs every workload of one code path for one architecture and assembles what it compiled.
fn check_config(
    root: &Path,
    tools: &CudaTools,
    driver: &Path,
    out: &Path,
    backend: &str,
    bins: &HashMap<&str, PathBuf>,
    sm: u32,
) -> Result<Config, String> {
    let mut failures = Vec::new();
    let dir = out.join(format!("{backend}-sm{sm}"));
    reset_dir(&dir)?;
    let env = Env { tools, driver, sm, dir: &dir, cuda_path: tools.cuda_path.clone() };
    let t0 = Instant::now();
    let launch_log = dir.join("launch.log");
    let logged = || std::fs::metadata(&launch_log).map_or(0, |m| m.len());
    for (name, cmd, limit) in workloads(root, bins)? {
        let log = dir.join(format!("{name}.log"));
        let before = logged();
        run_workload(&env, cmd, &log, limit)?;
        // A workload that launched nothing checked nothing (e.g. it refused its arguments).
        if logged() == before {
            failures.push(format!("{backend} sm_{sm} {name}: launched no kernel (see {})", log.display()));
        }
        for marker in scan_failures(&log)? {
            failures.push(format!("{backend} sm_{sm} {name}: {marker} (see {})", log.display()));
        }
    }
    let (mut rows, launch_errors) = read_launch_log(&launch_log)?;
    for e in launch_errors {
        failures.push(format!("{backend} sm_{sm}: launch past the card's limits: {e}"));
    }
    let modules = assemble(&tools.ptxas, &dir, &mut rows, &mut failures, backend, sm)?;
    if rows.is_empty() {
        failures.push(format!("{backend} sm_{sm}: no kernel was compiled: the stand-in driver was not used"));
    }
    let spilling = rows.values().filter(|r| r.spill_stores > 0).count();
    let summary = format!(
        "{backend} sm_{sm}: {} kernels ({} modules assembled by ptxas), {} launches, {spilling} spilling, {:.0} s",
        rows.len(),
        modules,
        rows.values().map(|r| r.launches).sum::<u64>(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Config { summary, table: table(backend, sm, &rows), failures })
}

/// What the stand-in driver and CubeCL read from the environment for one configuration.
struct Env<'a> {
    tools: &'a CudaTools,
    driver: &'a Path,
    sm: u32,
    dir: &'a Path,
    cuda_path: PathBuf,
}

/// The programs run per configuration: (name, command, time limit).
fn workloads(root: &Path, bins: &HashMap<&str, PathBuf>) -> Result<Vec<(String, Command, Duration)>, String> {
    let bin = |name: &str| bins.get(name).cloned().ok_or_else(|| format!("the build produced no {name}"));
    let lapidary = bin("lapidary")?;
    let tiny = root.join("tests/fixtures/tiny-gemma3");
    let model = tiny.join("model");
    let batch = tiny.join("cases/two_images_and_padded_text_row.safetensors");
    let mut list = Vec::new();
    let step = |format: &str| {
        let mut c = Command::new(&lapidary);
        c.args(["bench-step", "--steps", "1", "--warmup", "0", "--base-format", format])
            .arg("--model")
            .arg(&model)
            .arg("--batch")
            .arg(&batch);
        c
    };
    let minute = Duration::from_secs(60);
    // The model tests launch the model's and trainer's kernels for every base format, with and
    // without checkpointing, eval and generation (measured 2026-12-02, NVPTX sm_90: bench-step
    // with a bf16, f32, NF4 or NF4-dq base or without checkpointing, eval with and without an
    // adapter and a 2-step demo compiled no kernel the model tests and the two attention
    // workloads below did not; they took 50 s of each NVPTX and 130 s of each CUDA C++
    // configuration). The binary keeps four cheap workloads: a QLoRA step; attention's
    // tensor-core instances (bf16 products, as tools/gpu/run.sh runs the step) and materialized
    // path, forward and backward, which nothing else launches; sampled generation.
    list.push(("bench-step-nf4".to_string(), step("nf4"), minute));
    let mut products = step("bf16");
    products.env("LAPIDARY_ATTENTION_PRODUCTS", "bf16");
    list.push(("bench-step-attention-bf16-products".to_string(), products, minute));
    let mut materialized = step("bf16");
    materialized.env("LAPIDARY_ATTENTION", "materialized");
    list.push(("bench-step-attention-materialized".to_string(), materialized, minute));
    let mut sample = Command::new(&lapidary);
    sample
        .args(["generate", "--prompt", "Describe the image.", "--max-new-tokens", "4", "--temperature", "0.8"])
        .args(["--top-k", "20", "--top-p", "0.9", "--model"])
        .arg(root.join("assets/tiny-vlm"));
    list.push(("generate-sampled".to_string(), sample, minute));
    let mut kernels = Command::new(bin("kernel-tests")?);
    kernels.arg("--test-threads=2");
    list.push(("kernel-tests".to_string(), kernels, 3 * minute));
    let mut models = Command::new(bin("model-tests")?);
    models.arg("--test-threads=2");
    list.push(("model-tests".to_string(), models, 8 * minute));
    Ok(list)
}

/// Runs `cmd` under the stand-in driver with its output in `log`; a time-out is an error, a
/// non-zero exit is not (kernels never run, so results are wrong by design).
fn run_workload(env: &Env<'_>, mut cmd: Command, log: &Path, limit: Duration) -> Result<(), String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let ld = format!(
        "{}:{}{}",
        env.driver.display(),
        env.tools.nvrtc_lib.display(),
        std::env::var("LD_LIBRARY_PATH").map(|p| format!(":{p}")).unwrap_or_default()
    );
    cmd.current_dir(env.dir)
        .env("LD_LIBRARY_PATH", ld)
        .env("CUDA_PATH", &env.cuda_path)
        .env("LAPIDARY_DEVICE", "cuda")
        .env("LAPIDARY_REPO_DIR", crate::workspace_root())
        .env("LAPIDARY_FAKE_CUDA_SM", env.sm.to_string())
        .env("LAPIDARY_FAKE_CUDA_LOG", env.dir.join("launch.log"))
        .env("LAPIDARY_FAKE_CUDA_PTX_DIR", env.dir.join("ptx"))
        // A failed property test would otherwise shrink, relaunching the same kernels for long.
        .env("PROPTEST_MAX_SHRINK_ITERS", "0")
        // Those failures are expected here: never recorded as regressions for the real runs.
        .env("PROPTEST_DISABLE_FAILURE_PERSISTENCE", "1")
        .env_remove("CUBECL_CUDA_DUMP_PTX")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err);
    let mut child = cmd.spawn().map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
    let t0 = Instant::now();
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Ok(());
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} ran past {} s under the stand-in driver", log.display(), limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `log` reports of kernels failing to compile, load or launch: for each report, the
/// innermost cause (CubeCL's `compiling '<kernel>' for sm_XX: …` where it names one), deduplicated.
fn scan_failures(log: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !FAILURE_MARKERS.iter().any(|m| line.contains(m)) {
            continue;
        }
        // Errors print as one line with escaped newlines, or over several lines.
        let window = lines[i..lines.len().min(i + 12)].join("\n");
        let cause = match window.find("compiling '") {
            Some(at) => window[at..].split("\\n").next().unwrap_or("").split("\n").next().unwrap_or(""),
            None => line.trim(),
        };
        let cause: String = cause.chars().take(400).collect();
        if !found.contains(&cause) {
            found.push(cause);
        }
    }
    Ok(found)
}

/// Kernels by PTX entry name with their launches, and the launches the driver refused.
fn read_launch_log(path: &Path) -> Result<(BTreeMap<String, KernelRow>, Vec<String>), String> {
    let mut rows: BTreeMap<String, KernelRow> = BTreeMap::new();
    let mut errors = Vec::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first().copied() {
            Some("module") if f.len() == 3 => {
                rows.entry(f[2].to_string()).or_default();
            }
            Some("launch") if f.len() >= 8 => {
                let row = rows.entry(f[1].to_string()).or_default();
                row.launches += 1;
                let threads: u64 = f[5].split('x').filter_map(|v| v.parse::<u64>().ok()).product();
                row.max_threads = row.max_threads.max(threads);
                row.max_dynamic_shared = row.max_dynamic_shared.max(f[7].parse().unwrap_or(0));
            }
            Some("error") => errors.push(line.trim_start_matches("error ").to_string()),
            _ => {}
        }
    }
    Ok((rows, errors))
}

/// Assembles every distinct PTX module of `dir/ptx` with ptxas for the target it declares and
/// fills the rows' register, spill and shared-memory figures. Returns the modules assembled.
fn assemble(
    ptxas: &Path,
    dir: &Path,
    rows: &mut BTreeMap<String, KernelRow>,
    failures: &mut Vec<String>,
    backend: &str,
    sm: u32,
) -> Result<usize, String> {
    let mut seen = std::collections::HashSet::new();
    let mut count = 0;
    let entries = std::fs::read_dir(dir.join("ptx")).map(|it| it.flatten().map(|e| e.path()).collect::<Vec<_>>());
    let mut files = entries.unwrap_or_default();
    files.sort();
    for file in files {
        let ptx = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        if !seen.insert(ptx.clone()) {
            continue;
        }
        let Some(target) = ptx
            .lines()
            .find_map(|l| l.trim().strip_prefix(".target "))
            .map(|t| t.split(',').next().unwrap_or(t).trim().to_string())
        else {
            failures.push(format!("{backend} sm_{sm}: {} declares no .target", file.display()));
            continue;
        };
        if !target.starts_with(&format!("sm_{sm}")) {
            failures.push(format!("{backend} sm_{sm}: {} targets {target}, not the card's sm_{sm}", file.display()));
        }
        let out = Command::new(ptxas)
            .args(["-v", "-O3", "-arch", &target, "-o", "/dev/null"])
            .arg(&file)
            .output()
            .map_err(|e| format!("running {}: {e}", ptxas.display()))?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let first = log
                .lines()
                .filter(|l| l.contains("error") || l.contains("fatal"))
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            failures.push(format!("{backend} sm_{sm}: ptxas rejected {}: {first}", file.display()));
            continue;
        }
        count += 1;
        parse_ptxas(&log, rows);
    }
    Ok(count)
}

/// Reads `ptxas -v` output: per entry function, registers, spills, stack and static shared memory.
fn parse_ptxas(log: &str, rows: &mut BTreeMap<String, KernelRow>) {
    let mut current: Option<String> = None;
    let number_before = |line: &str, unit: &str| -> Option<u64> {
        let at = line.find(unit)?;
        line[..at].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().map(str::to_string);
            continue;
        }
        let Some(name) = current.as_ref() else { continue };
        let row = rows.entry(name.clone()).or_default();
        row.assembled = true;
        if line.contains("spill stores") {
            row.stack = row.stack.max(number_before(line, "bytes stack frame").unwrap_or(0));
            row.spill_stores = row.spill_stores.max(number_before(line, "bytes spill stores").unwrap_or(0));
            row.spill_loads = row.spill_loads.max(number_before(line, "bytes spill loads").unwrap_or(0));
        }
        if line.contains("Used") && line.contains("registers") {
            row.registers = row.registers.max(number_before(line, "registers").unwrap_or(0));
            row.static_shared = row.static_shared.max(number_before(line, "bytes smem").unwrap_or(0));
        }
    }
}

fn table(backend: &str, sm: u32, rows: &BTreeMap<String, KernelRow>) -> String {
    let mut t = format!(
        "\n## {backend}, sm_{sm}\n\n| kernel | launches | threads/cube | registers | spill st/ld (B) | stack (B) | shared static/dynamic (B) |\n|---|---:|---:|---:|---:|---:|---:|\n"
    );
    for (name, r) in rows {
        let regs = if r.assembled { r.registers.to_string() } else { "not assembled".to_string() };
        t.push_str(&format!(
            "| {name} | {} | {} | {regs} | {}/{} | {} | {}/{} |\n",
            r.launches, r.max_threads, r.spill_stores, r.spill_loads, r.stack, r.static_shared, r.max_dynamic_shared
        ));
    }
    t
}

/// The LLVM path without libdevice must fail loudly on a kernel that calls `exp` (softmax):
/// proof that a compile failure is seen here, not read back as zeros.
fn negative_check(tools: &CudaTools, driver: &Path, out: &Path, failures: &mut Vec<String>) -> Result<(), String> {
    let bins = test_build("cuda")?;
    let dir = out.join("negative");
    reset_dir(&dir)?;
    let bare = dir.join("cuda-without-libdevice");
    std::fs::create_dir_all(&bare).map_err(|e| e.to_string())?;
    symlink(&tools.cuda_path.join("include"), &bare.join("include"))?;
    let env = Env { tools, driver, sm: 90, dir: &dir, cuda_path: bare };
    let exe = bins.get("kernel-tests").ok_or("the build produced no kernel-tests")?;
    let mut cmd = Command::new(exe);
    cmd.args(["--test-threads=1", "attention::tests"]);
    let log = dir.join("kernel-tests.log");
    run_workload(&env, cmd, &log, Duration::from_secs(120))?;
    let found = scan_failures(&log)?;
    if found.iter().any(|f| f.contains("libdevice")) {
        eprintln!("cuda-check: negative check: without libdevice the LLVM path's failure is reported ({})", found[0]);
    } else {
        failures.push(format!(
            "negative check: withholding libdevice did not produce a reported compile failure (see {})",
            log.display()
        ));
    }
    Ok(())
}

/// Installs the CUDA tools from PyPI into `dir` (once) and lays out a CUDA_PATH there.
pub fn cuda_tools(dir: &Path) -> Result<CudaTools, String> {
    let site = dir.join("site");
    let stamp = dir.join("installed");
    let wanted = CUDA_TOOLS.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!("cuda-check: installing {wanted} from PyPI into {}", site.display());
        let _ = std::fs::remove_dir_all(&site);
        let python = ["python3", "python"].into_iter().find(|p| Command::new(p).arg("--version").output().is_ok());
        let python = python.ok_or("cuda-check needs python3 with pip, to install NVRTC and ptxas from PyPI")?;
        let status = Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target"])
            .arg(&site)
            .args(CUDA_TOOLS)
            .status()
            .map_err(|e| format!("pip: {e}"))?;
        if !status.success() {
            return Err(format!("pip could not install {wanted}"));
        }
        std::fs::write(&stamp, &wanted).map_err(|e| e.to_string())?;
    }
    let nv = site.join("nvidia");
    let cuda_path = dir.join("cuda");
    let _ = std::fs::remove_dir_all(&cuda_path);
    let include = cuda_path.join("include");
    std::fs::create_dir_all(&include).map_err(|e| e.to_string())?;
    // CUDA's headers (the runtime's, and the compiler's `crt/` that `mma.h` includes), and CCCL's
    // both where CUDA 12 keeps them and where CubeCL also looks.
    for src in [nv.join("cuda_runtime/include"), nv.join("cuda_nvcc/include"), nv.join("cuda_cccl/include")] {
        for e in std::fs::read_dir(&src).map_err(|e| format!("{}: {e}", src.display()))?.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("__") || include.join(&name).exists() {
                continue;
            }
            symlink(&e.path(), &include.join(&name))?;
        }
    }
    symlink(&nv.join("cuda_cccl/include"), &include.join("cccl"))?;
    symlink(&nv.join("cuda_nvcc/nvvm"), &cuda_path.join("nvvm"))?;
    let tools = CudaTools { nvrtc_lib: nv.join("cuda_nvrtc/lib"), ptxas: nv.join("cuda_nvcc/bin/ptxas"), cuda_path };
    for p in [
        tools.nvrtc_lib.join("libnvrtc.so.12"),
        tools.ptxas.clone(),
        tools.cuda_path.join("nvvm/libdevice/libdevice.10.bc"),
    ] {
        if !p.exists() {
            return Err(format!("{} is missing after installing {wanted}", p.display()));
        }
    }
    Ok(tools)
}

/// Builds the stand-in driver as `dir/libcuda.so.1` (and `libcuda.so`) with this toolchain's rustc.
fn build_fake_driver(dir: &Path) -> Result<PathBuf, String> {
    let src = crate::workspace_root().join("xtask/fake_cuda_driver.rs");
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let lib = dir.join("libcuda.so.1");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args(["--edition", "2024", "--crate-type", "cdylib", "-C", "opt-level=2", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .map_err(|e| format!("rustc: {e}"))?;
    if !status.success() {
        return Err(format!("building {} failed", src.display()));
    }
    let link = dir.join("libcuda.so");
    let _ = std::fs::remove_file(&link);
    symlink(Path::new("libcuda.so.1"), &link)?;
    Ok(dir.to_path_buf())
}

fn reset_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
}

fn symlink(target: &Path, link: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).map_err(|e| format!("linking {}: {e}", link.display()))
}
