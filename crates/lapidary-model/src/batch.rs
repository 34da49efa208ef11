//! [`Batch`]: one batch on the device as HF's processor makes it (token ids, masks, token types,
//! labels, pixels, optional packed positions), its checks, the one rule for which positions the
//! loss counts ([`Batch::is_loss_target`]), and where batches come from: a batch file
//! ([`Batch::read`]) or a prompt ([`Batch::prompt`]). Not the collation of a dataset (see
//! lapidary-data; a model turns a `Collated` into its batch) nor the forward pass.

use lapidary_core::{DType, Device, Error, Result, Tensor};
use lapidary_data::Collated;
use lapidary_nn::safetensors::SafetensorsFiles;
use std::path::Path;

/// One batch as HF's processor makes it. Integer fields are row-major `[batch, seq]`.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// 1 on image soft tokens (Gemma 3's `token_type_ids`; from Gemma 4's `mm_token_type_ids`,
    /// 1 where those mark vision).
    pub token_type_ids: Vec<i64>,
    /// Labels (-100 = not counted); `None` for no loss.
    pub labels: Option<Vec<i64>>,
    /// The images in row order, as the family's processor lays them out: `[images, 3, H, W]`
    /// (Gemma 3) or `[images, patches, 3·p·p]` patches padded to the longest (Gemma 4).
    pub pixel_values: Option<Tensor>,
    /// Patch positions `[images, patches, 2]` as (x, y), (-1, -1) on padding patches (Gemma 4's
    /// `image_position_ids`); `None` for images without patches.
    pub image_position_ids: Option<Vec<i64>>,
    /// Soft tokens of each image as the processor counted them (Gemma 4's
    /// `num_soft_tokens_per_image`), checked against the vision tower's; `None` when not given.
    pub soft_tokens_per_image: Option<Vec<i64>>,
    /// Positions of the tokens `[B, T]`; `None` for `0..T` in every row. A packed row holds
    /// several sequences: each starts where its position is 0 (the padding-free collators'
    /// convention), attends only within itself, and its RoPE positions restart there.
    pub position_ids: Option<Vec<i64>>,
}

impl Batch {
    /// Checks what the model would otherwise read wrongly: at least one row and one token, every
    /// field `batch x seq` long, ids within the vocabulary (or the image soft token), masks and
    /// token types 0 or 1, labels -100 or within the vocabulary, positions non-negative and no
    /// sequence starting inside an image. Errors name the field and the (row, position).
    pub fn validate(&self, vocab_size: usize, image_token: usize) -> Result<()> {
        let (b, t) = (self.batch, self.seq);
        if b == 0 || t == 0 {
            return Err(Error::invalid(format!("batch: {b} row(s) of {t} token(s); at least one of each is needed")));
        }
        let vocab = vocab_size as i64;
        let in_vocab = |x: i64| (0..vocab).contains(&x);
        let (ids, binary) = (|x: i64| in_vocab(x) || x == image_token as i64, |x: i64| x == 0 || x == 1);
        let (labels, positions) = (|x: i64| x == -100 || in_vocab(x), |x: i64| x >= 0);
        let fields: [(&str, Option<&Vec<i64>>, &dyn Fn(i64) -> bool, String); 5] = [
            ("input_ids", Some(&self.input_ids), &ids, format!("0 to {} or the image token {image_token}", vocab - 1)),
            ("attention_mask", Some(&self.attention_mask), &binary, "0 or 1".into()),
            ("token_type_ids", Some(&self.token_type_ids), &binary, "0 or 1".into()),
            ("labels", self.labels.as_ref(), &labels, format!("-100 or 0 to {}", vocab - 1)),
            ("position_ids", self.position_ids.as_ref(), &positions, ">= 0".into()),
        ];
        for (name, v, _, _) in &fields {
            if let Some(v) = v.filter(|v| v.len() != b * t) {
                return Err(Error::invalid(format!("batch: {name} has {} values, expected {b} x {t}", v.len())));
            }
        }
        let at = |i: usize| format!("row {}, position {}", i / t, i % t);
        for (name, v, valid, expected) in &fields {
            if let Some((i, x)) = v.and_then(|v| v.iter().enumerate().find(|&(_, &x)| !valid(x))) {
                return Err(Error::invalid(format!("batch: {name} at {} is {x}; expected {expected}", at(i))));
            }
        }
        // A sequence may not start inside an image: its tokens would be split between two.
        let types = &self.token_type_ids;
        if let Some(i) =
            (0..b * t).find(|&i| i % t > 0 && types[i] == 1 && types[i - 1] == 1 && self.starts_sequence(i / t, i % t))
        {
            return Err(Error::invalid(format!(
                "batch: a sequence starts (position_ids 0) at {} inside an image's tokens; \
                 an image must lie within one sequence",
                at(i)
            )));
        }
        Ok(())
    }

    /// The collated rows' ids, masks, token types, labels and positions, as they are (Gemma 4's
    /// patch positions and soft-token counts too), without their pixels (each family gives
    /// those: [`crate::Model::pixel_values`]). The loss counts
    /// the same positions in it as in the whole batch, so its [`Self::label_count`] is known
    /// before any pixel reaches the device.
    pub fn without_images(rows: &Collated) -> Self {
        Batch {
            batch: rows.batch,
            seq: rows.seq,
            input_ids: rows.input_ids.clone(),
            attention_mask: rows.attention_mask.clone(),
            token_type_ids: rows.token_type_ids.clone(),
            labels: Some(rows.labels.clone()),
            pixel_values: None,
            image_position_ids: rows.image_position_ids.clone(),
            soft_tokens_per_image: rows.soft_tokens_per_image.clone(),
            position_ids: rows.position_ids.clone(),
        }
    }

    /// One row of `ids` without labels or padding (a prompt): token_type_ids 1 where an id is
    /// `image_token`, the images' pixels when there are any.
    pub fn prompt(ids: &[u32], image_token: usize, pixel_values: Option<Tensor>) -> Self {
        Batch {
            batch: 1,
            seq: ids.len(),
            input_ids: ids.iter().map(|&i| i as i64).collect(),
            attention_mask: vec![1; ids.len()],
            token_type_ids: ids.iter().map(|&i| i64::from(i as usize == image_token)).collect(),
            labels: None,
            pixel_values,
            image_position_ids: None,
            soft_tokens_per_image: None,
            position_ids: None,
        }
    }

    /// Per token: 0 for text, else the 1-based index of its image within the row (each
    /// contiguous run of image tokens is one block, attended bidirectionally).
    pub fn image_blocks(&self) -> Vec<f32> {
        let t = self.seq;
        let mut blocks = vec![0f32; self.batch * t];
        for (r, types) in self.token_type_ids.chunks(t.max(1)).enumerate() {
            let mut block = 0.0;
            for (c, &ty) in types.iter().enumerate() {
                if ty == 1 {
                    if c == 0 || types[c - 1] != 1 {
                        block += 1.0;
                    }
                    blocks[r * t + c] = block;
                }
            }
        }
        blocks
    }

    /// Whether position `c` of row `r` starts a sequence (position 0 of a packed row).
    pub fn starts_sequence(&self, r: usize, c: usize) -> bool {
        c == 0 || self.position_ids.as_ref().is_some_and(|p| p[r * self.seq + c] == 0)
    }

    /// Whether the label at position `c` of row `r` is a target of the loss — the one rule every
    /// model, the trainer and the collator's accounting share: as HF's causal-LM loss, position
    /// `c - 1` predicts the label at `c`, so it counts when that label is not -100, position `c`
    /// is not padding, and `c` does not start a sequence (the first token of a row or of a
    /// packed conversation has nothing before it to predict it). `false` without labels.
    pub fn is_loss_target(&self, r: usize, c: usize) -> bool {
        let Some(labels) = &self.labels else { return false };
        let i = r * self.seq + c;
        c < self.seq && self.attention_mask[i] != 0 && labels[i] != -100 && !self.starts_sequence(r, c)
    }

    /// Number of positions the loss counts ([`Self::is_loss_target`]).
    pub fn label_count(&self) -> usize {
        (0..self.batch).map(|r| (1..self.seq).filter(|&c| self.is_loss_target(r, c)).count()).sum()
    }

    /// Next-token labels, `[batch * seq]`: at position `c` the label of `c + 1` where that is a
    /// loss target ([`Self::is_loss_target`]), else -100 (each row's last position among them).
    /// `None` without labels.
    pub fn next_token_labels(&self) -> Option<Vec<i64>> {
        let (b, t) = (self.batch, self.seq);
        let labels = self.labels.as_ref()?;
        Some(
            (0..b * t)
                .map(|i| {
                    let (r, c) = (i / t, i % t);
                    if c + 1 < t && self.is_loss_target(r, c + 1) { labels[i + 1] } else { -100 }
                })
                .collect(),
        )
    }

    /// Reads a batch file (safetensors) with the field names HF's processors write:
    /// `input_ids`, `attention_mask`, `token_type_ids` (Gemma 3) or `mm_token_type_ids` (Gemma 4:
    /// 0 text, 1 image, 2 video; audio refused) and `labels` (int64 `[B, T]`); with images
    /// `pixel_values` (f32/bf16/f16, images in row order: `[N, 3, H, W]`, or Gemma 4's
    /// `[N, patches, 3·p·p]` with `image_position_ids` int64 `[N, patches, 2]` and optionally
    /// `num_soft_tokens_per_image` int64 `[N]`); for packed rows `position_ids` (int64 `[B, T]`).
    /// Errors name the file and the tensor.
    pub fn read(path: &Path, device: &Device) -> Result<Batch> {
        let f = SafetensorsFiles::open(path)?;
        let err = |what: String| Error::invalid(format!("{}: {what}", path.display()));
        let missing = |name: &str| err(format!("missing tensor {name} (int64 [B, T])"));
        let (input_ids, shape) = match f.entry("input_ids") {
            Some(_) => f.load_i64("input_ids")?,
            None => return Err(missing("input_ids")),
        };
        if shape.len() != 2 {
            return Err(err(format!("input_ids has shape {shape:?}, expected [B, T]")));
        }
        // Another int64 field, shaped as input_ids; `None` when the file lacks it.
        let int = |name: &str| -> Result<Option<Vec<i64>>> {
            if f.entry(name).is_none() {
                return Ok(None);
            }
            let (v, s) = f.load_i64(name)?;
            if s != shape {
                return Err(err(format!("{name} has shape {s:?}, expected {shape:?} (as input_ids)")));
            }
            Ok(Some(v))
        };
        let required = |name: &str| int(name)?.ok_or_else(|| missing(name));
        let attention_mask = required("attention_mask")?;
        let token_type_ids = match int("mm_token_type_ids")? {
            None => required("token_type_ids")?,
            Some(mm) => vision_token_types(&mm, shape[1]).map_err(err)?,
        };
        let labels = Some(required("labels")?);
        let pixel_values = match f.entry("pixel_values") {
            None => None,
            Some(e) if e.shape.len() != 4 && e.shape.len() != 3 => {
                return Err(err(format!(
                    "pixel_values has shape {:?}, expected [N, 3, H, W] or [N, patches, 3·p·p]",
                    e.shape
                )));
            }
            Some(e) => {
                let dtype = e.dtype.ok_or_else(|| err("pixel_values is not stored as f32, bf16 or f16".into()))?;
                let values = dtype.decode(f.bytes("pixel_values")?);
                Error::check_finite(&format!("{}: pixel_values", path.display()), &values, "pixels must be finite")?;
                Some(Tensor::from_f32(device, &values, &e.shape, DType::F32)?)
            }
        };
        let images = pixel_values.as_ref().map(|p| p.shape()[..2].to_vec());
        let image_position_ids = match (f.entry("image_position_ids"), &images) {
            (None, _) => None,
            (Some(_), None) => return Err(err("image_position_ids without pixel_values".into())),
            (Some(_), Some(np)) => {
                let (v, s) = f.load_i64("image_position_ids")?;
                if s != [np[0], np[1], 2] {
                    return Err(err(format!(
                        "image_position_ids has shape {s:?}, expected [{}, {}, 2] (images and patches of pixel_values)",
                        np[0], np[1]
                    )));
                }
                Some(v)
            }
        };
        let soft_tokens_per_image = match f.entry("num_soft_tokens_per_image") {
            None => None,
            Some(_) => {
                let (v, s) = f.load_i64("num_soft_tokens_per_image")?;
                let n = images.as_ref().map_or(0, |np| np[0]);
                if s != [n] {
                    return Err(err(format!(
                        "num_soft_tokens_per_image has shape {s:?}, expected [{n}] (one per image)"
                    )));
                }
                Some(v)
            }
        };
        let position_ids = int("position_ids")?;
        let (batch, seq) = (shape[0], shape[1]);
        Ok(Batch {
            batch,
            seq,
            input_ids,
            attention_mask,
            token_type_ids,
            labels,
            pixel_values,
            image_position_ids,
            soft_tokens_per_image,
            position_ids,
        })
    }
}

/// Gemma 4's `mm_token_type_ids` (`[B, T]`: 0 text, 1 image, 2 video, 3 audio) as
/// [`Batch::token_type_ids`]: 1 where vision (HF's image blocks), 0 elsewhere. Audio tokens are
/// refused (no audio tower here), as are unknown types; the error names the position.
pub fn vision_token_types(mm_token_type_ids: &[i64], t: usize) -> std::result::Result<Vec<i64>, String> {
    mm_token_type_ids
        .iter()
        .enumerate()
        .map(|(i, &m)| match m {
            0 => Ok(0),
            1 | 2 => Ok(1),
            3 => Err(format!(
                "mm_token_type_ids at row {}, position {} is 3 (audio): audio is not supported",
                i / t,
                i % t
            )),
            _ => Err(format!(
                "mm_token_type_ids at row {}, position {} is {m}; expected 0 (text), 1 (image) or 2 (video)",
                i / t,
                i % t
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Batch;

    fn batch(ids: Vec<i64>, labels: Option<Vec<i64>>) -> Batch {
        let n = ids.len();
        Batch {
            batch: 2,
            seq: n / 2,
            input_ids: ids,
            attention_mask: vec![1; n],
            token_type_ids: vec![0; n],
            labels,
            pixel_values: None,
            image_position_ids: None,
            soft_tokens_per_image: None,
            position_ids: None,
        }
    }

    #[test]
    fn ids_and_labels_outside_the_vocabulary_are_errors_naming_the_position() {
        assert!(batch(vec![1, 2, 3, 200], None).validate(100, 200).is_ok());
        let e = batch(vec![1, 2, 3, 100], None).validate(100, 200).unwrap_err().to_string();
        assert!(e.contains("input_ids at row 1, position 1 is 100"), "{e}");
        let e = batch(vec![1, -1, 3, 4], None).validate(100, 200).unwrap_err().to_string();
        assert!(e.contains("input_ids at row 0, position 1 is -1"), "{e}");
        let e = batch(vec![1, 2, 3, 4], Some(vec![-100, 5, 100, -100])).validate(100, 200).unwrap_err().to_string();
        assert!(e.contains("labels at row 1, position 0 is 100"), "{e}");
        let mut b = batch(vec![1, 2, 3, 4], None);
        b.attention_mask[2] = 2;
        assert!(b.validate(100, 200).unwrap_err().to_string().contains("attention_mask at row 1, position 0 is 2"));
        let empty = Batch { batch: 0, seq: 4, ..batch(vec![], None) };
        assert!(empty.validate(100, 200).unwrap_err().to_string().contains("0 row(s)"));
        let short = Batch { seq: 3, ..batch(vec![1, 2, 3, 4], None) };
        assert!(short.validate(100, 200).unwrap_err().to_string().contains("input_ids has 4 values, expected 2 x 3"));
    }

    #[test]
    fn padding_sequence_starts_and_ignored_labels_are_not_loss_targets() {
        let mut b = batch(vec![5, 6, 7, 8, 9, 10], Some(vec![5, 6, -100, 8, 9, 10]));
        b.attention_mask = vec![1, 1, 1, 1, 1, 0];
        b.position_ids = Some(vec![0, 1, 2, 0, 0, 1]);
        // Row 0: 6 at 1 counts, -100 at 2 does not. Row 1: position 1 starts a sequence (its
        // position id is 0) and position 2 is padding.
        assert_eq!(b.label_count(), 1);
        assert_eq!(b.next_token_labels().unwrap(), vec![6, -100, -100, -100, -100, -100]);
        b.position_ids = None;
        b.attention_mask = vec![1; 6];
        assert_eq!(b.label_count(), 3);
        assert_eq!(b.next_token_labels().unwrap(), vec![6, -100, -100, 9, 10, -100]);
        b.labels = None;
        assert_eq!((b.label_count(), b.next_token_labels()), (0, None));
    }

    #[test]
    fn gemma4_token_types_mark_vision_and_refuse_audio() {
        use super::vision_token_types;
        assert_eq!(vision_token_types(&[0, 1, 1, 0, 2, 0], 3).unwrap(), vec![0, 1, 1, 0, 1, 0]);
        let e = vision_token_types(&[0, 1, 0, 0, 3, 0], 3).unwrap_err();
        assert!(e.contains("row 1, position 1 is 3 (audio)"), "{e}");
        let e = vision_token_types(&[0, 7], 2).unwrap_err();
        assert!(e.contains("row 0, position 1 is 7; expected 0 (text), 1 (image) or 2 (video)"), "{e}");
    }

    #[test]
    fn each_run_of_image_tokens_is_its_own_block() {
        let mut b = batch(vec![1; 12], None);
        b.token_type_ids = vec![0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 0, 1];
        assert_eq!(b.image_blocks(), vec![0., 1., 1., 0., 2., 0., 1., 1., 0., 0., 0., 2.]);
    }
}
