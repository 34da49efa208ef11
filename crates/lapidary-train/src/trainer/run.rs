//! [`Trainer::run`]: the loop to the end — progress bar, `metrics.jsonl` (and TensorBoard event
//! files when asked), held-out loss, checkpoints, the final adapter or weights swapped in whole,
//! and `loss.png`; a fresh run refuses (or with overwrite clears) an output directory holding an
//! earlier run. Not a step (`step`).

use super::Trainer;
use crate::metrics;
use crate::tensorboard::EventWriter;
use indicatif::ProgressDrawTarget;
use lapidary_core::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

impl Trainer {
    /// Runs to the end: progress bar, metrics (`metrics.jsonl`), held-out loss, checkpoints,
    /// and at the end the adapter (or weights) in `output_dir/final` and `loss.png`.
    pub fn run(&mut self, show_progress: bool) -> Result<RunSummary> {
        let out = self.cfg.output_dir.clone();
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        let metrics_path = out.join("metrics.jsonl");
        if self.state.step == 0 {
            clear_earlier_run(&out, self.cfg.overwrite_output_dir)?;
        } else {
            metrics::truncate_after(&metrics_path, self.state.step)?;
        }
        let mut events = match self.cfg.report_to {
            crate::ReportTo::Tensorboard => {
                Some(EventWriter::create(&out.join("runs"), (self.state.step > 0).then_some(self.state.step + 1))?)
            }
            crate::ReportTo::None => None,
        };
        let eval_before = if self.state.step == 0 && !self.eval.is_empty() {
            let l = self.eval_loss()?;
            metrics::append(&metrics_path, &serde_json::json!({"step": 0, "eval_loss": l}))?;
            if let Some(w) = events.as_mut() {
                w.scalars(0, &[("eval/loss", l)])?;
            }
            Some(l)
        } else {
            None
        };
        let target = if show_progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = indicatif::ProgressBar::with_draw_target(Some(self.total_steps as u64), target);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("a valid template"),
        );
        bar.set_position(self.state.step as u64);
        let started = Instant::now();
        // Tokens and time since the figures were last read: a step's own time is not known
        // until the device has finished it.
        let (mut since, mut tokens_since) = (Instant::now(), 0usize);
        while self.state.step < self.total_steps {
            let step = self.step_unread()?;
            bar.set_position(step as u64);
            let last = step == self.total_steps;
            let log = step % self.cfg.log_every.max(1) == 0 || last;
            let eval = !self.eval.is_empty() && ((self.cfg.eval_every > 0 && step % self.cfg.eval_every == 0) || last);
            let save = (self.cfg.save_every > 0 && step % self.cfg.save_every == 0) || last;
            if !(log || eval || save) {
                continue;
            }
            let read = self.read_steps()?;
            let s = read.last().expect("the step just done");
            tokens_since += read.iter().map(|s| s.tokens).sum::<usize>();
            let tps = tokens_since as f64 / since.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", s.loss, s.lr, tps));
            if log {
                let rss_mib = metrics::resident_mib();
                metrics::append(
                    &metrics_path,
                    &serde_json::json!({
                        "step": s.step, "epoch": self.state.epoch, "loss": s.loss, "lr": s.lr,
                        "grad_norm": s.grad_norm, "label_tokens": s.label_tokens, "tokens": s.tokens,
                        "padding": s.padding_fraction(), "tokens_per_s": tps,
                        "elapsed_s": started.elapsed().as_secs_f64(),
                        "rss_mib": rss_mib,
                    }),
                )?;
                if let Some(w) = events.as_mut() {
                    let mut scalars = vec![
                        ("train/loss", s.loss),
                        ("train/learning_rate", s.lr as f64),
                        ("train/grad_norm", s.grad_norm as f64),
                        ("train/epoch", self.state.epoch as f64),
                        ("train/tokens_per_s", tps),
                        ("train/padding", s.padding_fraction()),
                        ("train/label_tokens", s.label_tokens as f64),
                    ];
                    scalars.extend(rss_mib.map(|m| ("train/memory_mib", m)));
                    w.scalars(s.step, &scalars)?;
                }
            }
            if eval {
                let l = self.eval_loss()?;
                metrics::append(&metrics_path, &serde_json::json!({"step": step, "eval_loss": l}))?;
                if let Some(w) = events.as_mut() {
                    w.scalars(step, &[("eval/loss", l)])?;
                }
                bar.println(format!("step {step}: held-out loss {l:.4}"));
            }
            if save {
                self.save_checkpoint()?;
            }
            (since, tokens_since) = (Instant::now(), 0);
        }
        bar.finish();
        let final_dir = out.join("final");
        // Staged whole and swapped in, so the adapter's files appear together.
        lapidary_core::fsio::write_dir(&final_dir, |staged| self.save_weights(staged))?;
        let recs = metrics::read(&metrics_path)?;
        let (train_pts, eval_pts) = (metrics::series(&recs, "loss"), metrics::series(&recs, "eval_loss"));
        metrics::plot_loss(&out.join("loss.png"), &train_pts, &eval_pts)?;
        Ok(RunSummary {
            steps: self.state.step,
            first_loss: train_pts.first().map_or(f64::NAN, |p| p.1),
            last_loss: train_pts.last().map_or(f64::NAN, |p| p.1),
            eval_before,
            eval_after: eval_pts.last().map(|p| p.1),
            seconds: started.elapsed().as_secs_f64(),
            output: final_dir,
        })
    }
}

/// What [`Trainer::run`] reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Steps done in all.
    pub steps: usize,
    /// Loss of the first logged step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Held-out loss before training (when the run started from step 0).
    pub eval_before: Option<f64>,
    /// Held-out loss at the end.
    pub eval_after: Option<f64>,
    /// Wall time of the loop.
    pub seconds: f64,
    /// The adapter or weights directory.
    pub output: PathBuf,
}

/// What an earlier run leaves in an output directory: checkpoints, the final weights, metrics
/// (TensorBoard's event files included).
fn earlier_run_files(out: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(found) };
    for e in entries {
        let e = e.map_err(|err| Error::io(out, err))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let prefixes = ["checkpoint-", ".checkpoint-", ".final."];
        if ["final", "metrics.jsonl", "loss.png", "runs"].contains(&name.as_str())
            || prefixes.iter().any(|p| name.starts_with(p))
        {
            found.push(e.path());
        }
    }
    found.sort();
    Ok(found)
}

/// A fresh run refuses an output directory holding an earlier run (a later `--resume` would
/// mix the two), or with `overwrite` removes what that run left.
fn clear_earlier_run(out: &Path, overwrite: bool) -> Result<()> {
    let found = earlier_run_files(out)?;
    if found.is_empty() {
        return Ok(());
    }
    if !overwrite {
        let names: Vec<String> =
            found.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        return Err(Error::invalid(format!(
            "{} holds an earlier run ({}); continue it with --resume, or start afresh with \
             --overwrite-output-dir true (which removes those)",
            out.display(),
            names.join(", ")
        )));
    }
    for p in found {
        let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        removed.map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}
