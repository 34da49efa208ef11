//! Metrics a person can read and plot: one JSON object a line (`metrics.jsonl`: step, loss, lr,
//! grad_norm, padding fraction, tokens/s since the figures were last read; eval lines with eval_loss), and one run's loss-curve PNG
//! (training and held-out loss, drawn by [`crate::plot`]). Not a plotting library.

use lapidary_core::{Error, Result};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// This process's resident memory in MiB (Linux; `None` elsewhere). On the CPU runtime it holds
/// the device memory too.
pub fn resident_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

/// Appends one JSON object as a line.
pub fn append(path: &Path, record: &Value) -> Result<()> {
    // One write of the whole line, so that lines never interleave or split.
    let line = format!("{record}\n");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(line.as_bytes()).map_err(|e| Error::io(path, e))
}

/// Every record of a metrics file (a missing file has none).
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(l) {
            Ok(v) => records.push(v),
            // A last line cut short by a crash (no newline after it) is dropped, not an error.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => return Err(Error::invalid(format!("{}:{}: {e}", path.display(), i + 1))),
        }
    }
    Ok(records)
}

/// Keeps the records with `step <= step` (after a resume, what the interrupted run wrote later
/// is replaced by the resumed run's own records). Written to a temporary file and renamed.
pub fn truncate_after(path: &Path, step: usize) -> Result<()> {
    let kept: Vec<Value> =
        read(path)?.into_iter().filter(|r| r["step"].as_u64().is_some_and(|s| s as usize <= step)).collect();
    let text: String = kept.iter().map(|r| format!("{r}\n")).collect();
    lapidary_core::fsio::write_atomic(path, text.as_bytes())
}

/// The (step, value) points of `key` in metrics records (lines without it are skipped).
pub fn series(records: &[Value], key: &str) -> Vec<(f64, f64)> {
    records.iter().filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?))).collect()
}

/// Draws one run's training and held-out loss into a PNG (see [`crate::plot`]).
pub fn plot_loss(path: &Path, train: &[(f64, f64)], eval: &[(f64, f64)]) -> Result<()> {
    let curve = |label: &str, points: &[(f64, f64)], colour, markers| crate::plot::Curve {
        label: label.into(),
        points: points.to_vec(),
        colour,
        markers,
    };
    crate::plot::loss_curves(
        path,
        "Loss",
        &[
            curve("training", train, crate::plot::PALETTE[0], false),
            curve("held-out", eval, crate::plot::PALETTE[1], true),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_truncate_and_plot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        for s in 1..=5 {
            append(&path, &serde_json::json!({"step": s, "loss": 3.0 / s as f64})).unwrap();
        }
        truncate_after(&path, 3).unwrap();
        let recs = read(&path).unwrap();
        assert_eq!(recs.len(), 3);
        append(&path, &serde_json::json!({"step": 3, "eval_loss": 1.5})).unwrap();
        let recs = read(&path).unwrap();
        let pts = series(&recs, "loss");
        assert_eq!(pts, vec![(1.0, 3.0), (2.0, 1.5), (3.0, 1.0)]);
        assert_eq!(series(&recs, "eval_loss"), vec![(3.0, 1.5)]);
        let png = dir.path().join("loss.png");
        plot_loss(&png, &pts, &series(&recs, "eval_loss")).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        let has = |c: (u8, u8, u8)| img.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(crate::plot::PALETTE[0]) && has(crate::plot::PALETTE[1]));
    }

    #[test]
    fn a_line_cut_short_at_the_end_is_dropped_and_one_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        append(&path, &serde_json::json!({"step": 1, "loss": 2.0})).unwrap();
        append(&path, &serde_json::json!({"step": 2, "loss": 1.5})).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\": 3, \"lo");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        truncate_after(&path, 2).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        std::fs::write(&path, "{\"step\": 1}\n{broken\n{\"step\": 3}\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl:2"), "{e}");
    }
}
