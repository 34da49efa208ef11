//! The collator: encoded rows to one right-padded batch (pad id, attention mask 0, labels -100,
//! token_type_ids 0 on padding) with the pixel values of every image in row order; or packed
//! rows, several conversations each, with position ids that restart at 0 where each begins.
//! Not the model's label shift (the model does it), not the choice of what to pack (`pack.rs`).

use crate::processor::{Example, Processor};
use lapidary_io::{Error, Result};

/// A padded batch, host side. Integer fields are row-major `[batch, seq]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Collated {
    /// Rows.
    pub batch: usize,
    /// Tokens per row (the longest row).
    pub seq: usize,
    /// Token ids (padding: the pad id).
    pub input_ids: Vec<i64>,
    /// 1 on real tokens.
    pub attention_mask: Vec<i64>,
    /// 1 on image soft tokens.
    pub token_type_ids: Vec<i64>,
    /// Labels, -100 where not trained on.
    pub labels: Vec<i64>,
    /// `[images, 3, H, W]` values, images in row order.
    pub pixel_values: Vec<f32>,
    /// Number of images.
    pub images: usize,
    /// Positions `[batch, seq]` of packed rows (each sequence restarts at 0); `None` when every
    /// row holds one sequence.
    pub position_ids: Option<Vec<i64>>,
}

impl Collated {
    /// Positions the loss counts (labels other than -100 after the first token of each
    /// sequence: of a row, or of a conversation in a packed row).
    pub fn label_count(&self) -> usize {
        let starts = |i: usize| self.position_ids.as_ref().is_some_and(|p| p[i] == 0);
        (0..self.batch)
            .map(|r| {
                (1..self.seq).filter(|&c| self.labels[r * self.seq + c] != -100 && !starts(r * self.seq + c)).count()
            })
            .sum()
    }
}

/// Pads `rows` into one batch and loads their images.
pub fn collate(rows: &[&Example], processor: &Processor) -> Result<Collated> {
    let rows: Vec<Vec<&Example>> = rows.iter().map(|&r| vec![r]).collect();
    collate_rows(&rows, processor, false)
}

/// Packs each group of `rows` into one row (its conversations one after another, each with
/// positions from 0), pads the rows into one batch and loads their images in order.
pub fn collate_packed(rows: &[Vec<&Example>], processor: &Processor) -> Result<Collated> {
    collate_rows(rows, processor, true)
}

fn collate_rows(rows: &[Vec<&Example>], processor: &Processor, packed: bool) -> Result<Collated> {
    if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
        return Err(Error::invalid("collate: no rows, or a packed row without a conversation"));
    }
    let len = |r: &Vec<&Example>| r.iter().map(|e| e.input_ids.len()).sum::<usize>();
    let seq = rows.iter().map(len).max().unwrap_or(0);
    let pad = processor.tokenizer.pad_id as i64;
    let n = rows.len() * seq;
    let mut c = Collated {
        batch: rows.len(),
        seq,
        input_ids: vec![pad; n],
        attention_mask: vec![0; n],
        token_type_ids: vec![0; n],
        labels: vec![-100; n],
        pixel_values: Vec::new(),
        images: 0,
        position_ids: packed.then(|| vec![0; n]),
    };
    for (r, group) in rows.iter().enumerate() {
        let mut at = r * seq;
        for ex in group {
            for (i, &id) in ex.input_ids.iter().enumerate() {
                c.input_ids[at + i] = id as i64;
                c.attention_mask[at + i] = 1;
                c.token_type_ids[at + i] = ex.token_type_ids[i] as i64;
                c.labels[at + i] = ex.labels[i];
                if let Some(p) = &mut c.position_ids {
                    p[at + i] = i as i64;
                }
            }
            at += ex.input_ids.len();
            for path in &ex.images {
                c.pixel_values.extend(processor.pixels(path)?);
                c.images += 1;
            }
        }
    }
    Ok(c)
}
