//! The collator: encoded rows to one right-padded batch (pad id, attention mask 0, labels -100,
//! token_type_ids 0 on padding) with the pixel values of every image in row order (and Gemma 4's
//! patch positions and soft-token counts); or packed
//! rows, several conversations each, with position ids that restart at 0 where each begins.
//! Not the model's label shift nor which labels the loss counts (the model's batch decides), not
//! the choice of what to pack (`pack.rs`).

use crate::processor::{Example, ImagePixels, Processor};
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
    /// The shape of one image's pixel values as the processor lays them out (`[3, H, W]`, or
    /// Gemma 4's `[patches, 3·p·p]`).
    pub image_shape: Vec<usize>,
    /// `[images, patches, 2]` (x, y) patch positions, -1 on padding (Gemma 4's
    /// `image_position_ids`); `None` for fixed-size images.
    pub image_position_ids: Option<Vec<i64>>,
    /// Soft tokens of each image (Gemma 4's `num_soft_tokens_per_image`); `None` for fixed-size
    /// images.
    pub soft_tokens_per_image: Option<Vec<i64>>,
    /// Positions `[batch, seq]` of packed rows (each sequence restarts at 0); `None` when every
    /// row holds one sequence.
    pub position_ids: Option<Vec<i64>>,
}

impl Collated {
    /// One row of `ids` without labels or padding (a prompt for generation), its images to be
    /// added with [`Self::push_image`]: `token_type_ids` 1 where an id is `image_token`.
    pub fn prompt(ids: &[u32], image_token: u32, image_shape: Vec<usize>) -> Self {
        let n = ids.len();
        Collated {
            batch: 1,
            seq: n,
            input_ids: ids.iter().map(|&i| i as i64).collect(),
            attention_mask: vec![1; n],
            token_type_ids: ids.iter().map(|&i| i64::from(i == image_token)).collect(),
            labels: vec![-100; n],
            pixel_values: Vec::new(),
            images: 0,
            image_shape,
            image_position_ids: None,
            soft_tokens_per_image: None,
            position_ids: None,
        }
    }

    /// Appends one image (after those already there): its pixels, and its patch positions and
    /// soft-token count when it has patches.
    pub fn push_image(&mut self, image: &ImagePixels) {
        self.pixel_values.extend_from_slice(&image.values);
        if let Some(p) = &image.positions {
            self.image_position_ids.get_or_insert_with(Vec::new).extend_from_slice(p);
            self.soft_tokens_per_image.get_or_insert_with(Vec::new).push(image.soft_tokens as i64);
        }
        self.images += 1;
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
        image_shape: processor.image_shape(),
        image_position_ids: None,
        soft_tokens_per_image: None,
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
            for source in &ex.images {
                c.push_image(&*processor.image_from(source)?);
            }
        }
    }
    Ok(c)
}
