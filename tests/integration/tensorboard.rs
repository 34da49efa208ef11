//! `report_to = tensorboard`: the event files a run writes, read back by TensorBoard's own loader
//! (tools/tensorboard/read_events.py in the venv tools/tensorboard/venv.sh makes): every logged
//! figure at its step with metrics.jsonl's value, held-out loss at each evaluation, and after a
//! resume one curve (the interrupted run's later points dropped, as metrics.jsonl cuts them).
//! Skipped with a message when the reader is absent, a failure under `CI=true`.

use crate::training::config;
use lapidary::core::Device;
use lapidary::demo::write_dataset;
use lapidary::train::{ReportTo, TrainConfig, Trainer, metrics};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The venv's Python with TensorBoard, if present (absent: skip, except under `CI=true`).
fn reader_python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tensorboard-venv/bin/python");
    crate::fetched_input(python, "tools/tensorboard/venv.sh")
}

/// Every scalar TensorBoard reads from a run directory: tag -> [(step, value)].
fn read_scalars(python: &Path, runs: &Path) -> serde_json::Map<String, Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/tensorboard/read_events.py");
    let out = std::process::Command::new(python).arg(&script).arg(runs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_object().unwrap().clone()
}

fn points(scalars: &serde_json::Map<String, Value>, tag: &str) -> Vec<(u64, f64)> {
    let Some(list) = scalars.get(tag) else { panic!("no {tag} in {:?}", scalars.keys().collect::<Vec<_>>()) };
    list.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect()
}

#[test]
fn tensorboard_reads_the_runs_figures_and_one_curve_after_a_resume() {
    let Some(python) = reader_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), "train", 12, 5).unwrap();
    let dev = Device::from_env_or_cpu().unwrap();
    let cfg = TrainConfig {
        report_to: ReportTo::Tensorboard,
        eval_fraction: 0.25,
        eval_every: 2,
        save_every: 3,
        ..config(dir.path())
    };
    Trainer::new(cfg.clone(), &dev).unwrap().run(false).unwrap();
    let out = dir.path().join("out");
    let scalars = read_scalars(&python, &out.join("runs"));
    let recs = metrics::read(&out.join("metrics.jsonl")).unwrap();
    let want = |key: &str| -> Vec<(u64, f64)> {
        recs.iter().filter_map(|r| Some((r["step"].as_u64()?, r[key].as_f64()?))).collect()
    };
    // Stored as f32, as TensorBoard's simple_value is.
    let close = |got: &[(u64, f64)], want: &[(u64, f64)], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.0 == w.0 && (g.1 - w.1).abs() <= 1e-6 * w.1.abs().max(1.0), "{what}: {got:?} vs {want:?}");
        }
    };
    for (tag, key) in [
        ("train/loss", "loss"),
        ("train/learning_rate", "lr"),
        ("train/grad_norm", "grad_norm"),
        ("train/padding", "padding"),
        ("train/label_tokens", "label_tokens"),
        ("eval/loss", "eval_loss"),
    ] {
        close(&points(&scalars, tag), &want(key), tag);
    }
    assert_eq!(points(&scalars, "train/loss").len(), 6);
    assert_eq!(points(&scalars, "eval/loss").iter().map(|p| p.0).collect::<Vec<_>>(), [0, 2, 4, 6]);
    for tag in ["train/tokens_per_s", "train/memory_mib", "train/epoch"] {
        assert_eq!(points(&scalars, tag).len(), 6, "{tag}");
    }
    let first_run_loss = points(&scalars, "train/loss");

    // Resumed from step 3: a second event file; TensorBoard shows one curve of 6 points, the
    // resumed run's from step 4 (equal to the first run's: resuming is exact).
    let mut resumed = Trainer::new(cfg, &dev).unwrap();
    resumed.resume(&out.join("checkpoint-000003")).unwrap();
    resumed.run(false).unwrap();
    let files = std::fs::read_dir(out.join("runs")).unwrap().count();
    assert_eq!(files, 2, "one event file per run");
    let scalars = read_scalars(&python, &out.join("runs"));
    let loss = points(&scalars, "train/loss");
    assert_eq!(loss.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6], "{loss:?}");
    close(&loss, &first_run_loss, "train/loss after the resume");
    assert_eq!(points(&scalars, "eval/loss").iter().map(|p| p.0).collect::<Vec<_>>(), [0, 2, 4, 6]);
}
