//! `lapidary data inspect`: a dataset as training would see it, before training — rows, tokens,
//! image and trained tokens, the length histogram, padding against packing in the trainer's own
//! order, the rows that would be skipped or cut and why, and one row with its trained tokens
//! marked. Not training, and nothing is written.

use crate::core::Result;
use crate::data::stats::{dataset_stats, render_trained};
use crate::data::{Dataset, EncodeOptions, OnBadRow};
use crate::train::TrainConfig;
use std::fmt::Write;
use std::path::Path;

/// Rows of skipped-row reasons printed before "… and N more".
const SKIPPED_SHOWN: usize = 20;

/// The report on the dataset `data` for the model `model`, with the settings of `cfg` that
/// shape rows and batches (`max_len`, `responses_only`, `packing`, `micro_batch_size`, `seed`).
pub fn run(model: &Path, data: &Path, cfg: &TrainConfig) -> Result<String> {
    let processor = crate::registry::processor(model)?;
    let enc = EncodeOptions { max_len: cfg.max_len, responses_only: cfg.responses_only };
    // Every row is looked at: the unusable ones are listed, never a reason to stop.
    let ds = Dataset::load(data, &processor, &enc, OnBadRow::Skip)?;
    let stats = dataset_stats(&ds, cfg.max_len, cfg.micro_batch_size, &|n| crate::train::epoch_order(n, cfg.seed, 0));
    let mut out = String::new();
    let files = ds.files.len();
    writeln!(
        out,
        "{} ({} file{}; responses only: {}; training {})",
        data.display(),
        files,
        if files == 1 { "" } else { "s" },
        cfg.responses_only,
        if cfg.packing { "packs rows" } else { "pads rows" }
    )
    .expect("writing to a String");
    out.push_str(&stats.to_string());
    if !ds.skipped.is_empty() {
        writeln!(out, "skipped rows (training stops at the first unless --skip-bad-rows):").expect("a String");
        for s in ds.skipped.iter().take(SKIPPED_SHOWN) {
            writeln!(out, "  {}: {}", ds.at(s.at), s.reason).expect("a String");
        }
        if ds.skipped.len() > SKIPPED_SHOWN {
            writeln!(out, "  … and {} more", ds.skipped.len() - SKIPPED_SHOWN).expect("a String");
        }
    }
    out.push_str(&ds.cut_report(cfg.max_len));
    // The first row with an image shows the most; else the first row.
    let k = ds.examples.iter().position(|e| !e.images.is_empty()).unwrap_or(0);
    writeln!(out, "{} as the model sees it (« » marks the tokens trained on):", ds.at(ds.rows[k])).expect("a String");
    out.push_str(&render_trained(&processor, &ds.examples[k])?);
    out.push('\n');
    Ok(out)
}
