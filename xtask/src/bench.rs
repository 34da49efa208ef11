//! `cargo xtask bench`: runs the criterion benches of the root package, then prints one table of
//! what this run measured, read back from `target/criterion`. Convention of the benches: a
//! throughput in elements counts floating-point operations (shown as GFLOP/s), one in bytes counts
//! bytes moved (GB/s). Then the training step next to HF transformers + PEFT on this CPU
//! ([`crate::step_bench`]). `--no-step` runs the kernels alone, `--step-only` the step alone.
//! Not a benchmark itself.

use serde_json::Value;
use std::path::Path;
use std::time::SystemTime;

pub fn run(extra: &[String]) -> Result<(), String> {
    let (no_step, step_only) = (extra.iter().any(|a| a == "--no-step"), extra.iter().any(|a| a == "--step-only"));
    let extra: Vec<String> = extra.iter().filter(|a| *a != "--no-step" && *a != "--step-only").cloned().collect();
    if !step_only {
        kernels(&extra)?;
    }
    if !no_step { crate::step_bench::run() } else { Ok(()) }
}

fn kernels(extra: &[String]) -> Result<(), String> {
    let started = SystemTime::now();
    let mut args = vec!["bench", "--package", "lapidary", "--benches", "--features", "cubek-peer", "--"];
    args.extend(extra.iter().map(String::as_str));
    crate::cargo(&args)?;
    let root = crate::workspace_root().join("target/criterion");
    let mut rows = Vec::new();
    collect(&root, started, &mut rows);
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    println!("\n{:<56} {:>12} {:>14}", "benchmark", "median", "throughput");
    for (id, median_ns, thr) in &rows {
        println!("{id:<56} {:>12} {thr:>14}", fmt_time(*median_ns));
    }
    Ok(())
}

fn collect(dir: &Path, since: SystemTime, rows: &mut Vec<(String, f64, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "new") {
                if let Some(row) = read_row(&p, since) {
                    rows.push(row);
                }
            } else {
                collect(&p, since, rows);
            }
        }
    }
}

fn read_row(new_dir: &Path, since: SystemTime) -> Option<(String, f64, String)> {
    let est_path = new_dir.join("estimates.json");
    if std::fs::metadata(&est_path).ok()?.modified().ok()? < since {
        return None;
    }
    let est: Value = serde_json::from_str(&std::fs::read_to_string(&est_path).ok()?).ok()?;
    let bench: Value = serde_json::from_str(&std::fs::read_to_string(new_dir.join("benchmark.json")).ok()?).ok()?;
    let median = est["median"]["point_estimate"].as_f64()?;
    let id = bench["full_id"].as_str()?.to_string();
    let thr = &bench["throughput"];
    let per_s = |n: f64| n / (median * 1e-9);
    let thr = if let Some(n) = thr["Elements"].as_f64() {
        format!("{:.2} GFLOP/s", per_s(n) / 1e9)
    } else if let Some(n) = thr["Bytes"].as_f64() {
        format!("{:.2} GB/s", per_s(n) / 1e9)
    } else {
        String::new()
    };
    Some((id, median, thr))
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}
