//! The collator: encoded rows to one right-padded batch (pad id, attention mask 0, labels -100,
//! token_type_ids 0 on padding) with the pixel values of every image in row order; or packed
//! rows, several conversations each, with position ids that restart at 0 where each begins.
//! Not the model's label shift nor which labels the loss counts (the model's batch decides), not
//! the choice of what to pack (`pack.rs`).

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
    /// `[images, ..image_shape]` values, images in row order.
    pub pixel_values: Vec<f32>,
    /// Number of images.
    pub images: usize,
    /// The shape of one image's pixel values as the processor lays them out (`[3, H, W]`).
    pub image_shape: Vec<usize>,
    /// Positions `[batch, seq]` of packed rows (each sequence restarts at 0); `None` when every
    /// row holds one sequence.
    pub position_ids: Option<Vec<i64>>,
}

impl Collated {
    /// One row of `ids` without labels or padding, with its images (a prompt for generation):
    /// `token_type_ids` 1 where an id is `image_token`.
    pub fn prompt(
        ids: &[u32],
        image_token: u32,
        pixel_values: Vec<f32>,
        images: usize,
        image_shape: Vec<usize>,
    ) -> Self {
        let n = ids.len();
        Collated {
            batch: 1,
            seq: n,
            input_ids: ids.iter().map(|&i| i as i64).collect(),
            attention_mask: vec![1; n],
            token_type_ids: ids.iter().map(|&i| i64::from(i == image_token)).collect(),
            labels: vec![-100; n],
            pixel_values,
            images,
            image_shape,
            position_ids: None,
        }
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
        image_shape: vec![3, processor.image.height, processor.image.width],
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
