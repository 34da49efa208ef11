//! The collator: encoded rows to one right-padded batch (pad id, attention mask 0, labels -100,
//! token_type_ids 0 on padding) with the pixel values of every image in row order. Not the
//! model's label shift (the model does it).

use crate::processor::{Example, Processor};
use lapidary_core::{Error, Result};

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
}

impl Collated {
    /// Positions the loss counts (labels other than -100 after the first token of a row).
    pub fn label_count(&self) -> usize {
        (0..self.batch).map(|r| (1..self.seq).filter(|&c| self.labels[r * self.seq + c] != -100).count()).sum()
    }
}

/// Pads `rows` into one batch and loads their images.
pub fn collate(rows: &[&Example], processor: &Processor) -> Result<Collated> {
    if rows.is_empty() {
        return Err(Error::invalid("collate: no rows"));
    }
    let seq = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
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
    };
    for (r, ex) in rows.iter().enumerate() {
        for (i, &id) in ex.input_ids.iter().enumerate() {
            c.input_ids[r * seq + i] = id as i64;
            c.attention_mask[r * seq + i] = 1;
            c.token_type_ids[r * seq + i] = ex.token_type_ids[i] as i64;
            c.labels[r * seq + i] = ex.labels[i];
        }
        for path in &ex.images {
            c.pixel_values.extend(processor.pixels(path)?);
            c.images += 1;
        }
    }
    Ok(c)
}
