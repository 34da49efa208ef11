//! Metrics a person can read and plot: one JSON object a line (`metrics.jsonl`: step, loss, lr,
//! grad_norm, padding fraction, tokens/s; eval lines with eval_loss), and a loss-curve PNG drawn
//! here (training loss in blue, held-out loss in red, axes with the step and loss ranges printed
//! in a small built-in digit font). Not a plotting library.

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

const W: u32 = 800;
const H: u32 = 480;
const LEFT: u32 = 70;
const BOTTOM: u32 = 40;
const TOP: u32 = 20;
const RIGHT: u32 = 20;

/// Draws `train` and `eval` (step, loss) series into a PNG.
pub fn plot_loss(path: &Path, train: &[(f64, f64)], eval: &[(f64, f64)]) -> Result<()> {
    let mut img = image::RgbImage::from_pixel(W, H, image::Rgb([255, 255, 255]));
    let all: Vec<&(f64, f64)> = train.iter().chain(eval).filter(|p| p.1.is_finite()).collect();
    if !all.is_empty() {
        let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (x1, y1) = (if x1 > x0 { x1 } else { x0 + 1.0 }, if y1 > y0 { y1 } else { y0 + 1.0 });
        let px = |x: f64| LEFT as f64 + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT) as f64;
        let py = |y: f64| (H - BOTTOM) as f64 - (y - y0) / (y1 - y0) * (H - BOTTOM - TOP) as f64;
        let grey = image::Rgb([120, 120, 120]);
        line(&mut img, LEFT as f64, TOP as f64, LEFT as f64, (H - BOTTOM) as f64, grey);
        line(&mut img, LEFT as f64, (H - BOTTOM) as f64, (W - RIGHT) as f64, (H - BOTTOM) as f64, grey);
        text(&mut img, 4, TOP, &format!("{y1:.3}"));
        text(&mut img, 4, H - BOTTOM - 10, &format!("{y0:.3}"));
        text(&mut img, LEFT, H - BOTTOM + 10, &format!("{x0:.0}"));
        text(&mut img, W - RIGHT - 60, H - BOTTOM + 10, &format!("{x1:.0}"));
        for (series, colour) in [(train, image::Rgb([30, 90, 200])), (eval, image::Rgb([210, 40, 40]))] {
            let pts: Vec<(f64, f64)> = series.iter().filter(|p| p.1.is_finite()).map(|p| (px(p.0), py(p.1))).collect();
            for w in pts.windows(2) {
                line(&mut img, w[0].0, w[0].1, w[1].0, w[1].1, colour);
            }
            for p in &pts {
                for d in -1i32..=1 {
                    put(&mut img, p.0 as i32 + d, p.1 as i32, colour);
                    put(&mut img, p.0 as i32, p.1 as i32 + d, colour);
                }
            }
        }
    }
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::invalid(format!("{}: cannot write the plot: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn put(img: &mut image::RgbImage, x: i32, y: i32, c: image::Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut image::RgbImage, x0: f64, y0: f64, x1: f64, y1: f64, c: image::Rgb<u8>) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
    for i in 0..=n {
        let t = i as f64 / n as f64;
        put(img, (x0 + t * (x1 - x0)).round() as i32, (y0 + t * (y1 - y0)).round() as i32, c);
    }
}

/// 3x5 glyphs for digits, '.', '-' and 'e', scaled 2x.
fn text(img: &mut image::RgbImage, x: u32, y: u32, s: &str) {
    const GLYPHS: [(char, [u8; 5]); 13] = [
        ('0', [7, 5, 5, 5, 7]),
        ('1', [2, 6, 2, 2, 7]),
        ('2', [7, 1, 7, 4, 7]),
        ('3', [7, 1, 7, 1, 7]),
        ('4', [5, 5, 7, 1, 1]),
        ('5', [7, 4, 7, 1, 7]),
        ('6', [7, 4, 7, 5, 7]),
        ('7', [7, 1, 1, 1, 1]),
        ('8', [7, 5, 7, 5, 7]),
        ('9', [7, 5, 7, 1, 7]),
        ('.', [0, 0, 0, 0, 2]),
        ('-', [0, 0, 7, 0, 0]),
        ('e', [0, 7, 7, 4, 7]),
    ];
    let black = image::Rgb([0, 0, 0]);
    for (k, ch) in s.chars().enumerate() {
        let Some((_, rows)) = GLYPHS.iter().find(|(c, _)| *c == ch) else { continue };
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        put(img, (x + k as u32 * 8 + col * 2 + dx) as i32, (y + r as u32 * 2 + dy) as i32, black);
                    }
                }
            }
        }
    }
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
        let pts: Vec<(f64, f64)> =
            recs.iter().map(|r| (r["step"].as_f64().unwrap(), r["loss"].as_f64().unwrap())).collect();
        let png = dir.path().join("loss.png");
        plot_loss(&png, &pts, &[(3.0, 1.5)]).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (W, H));
        assert!(img.pixels().any(|p| p.0 == [30, 90, 200]) && img.pixels().any(|p| p.0 == [210, 40, 40]));
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
