//! Gemma 4's image preprocessing (Gemma4ImageProcessor, PIL backend): each image resized with
//! its aspect ratio kept to the largest size whose sides are multiples of `pooling · patch` and
//! whose patches fit the soft-token budget (PIL's bicubic filter, antialiased), rescaled to
//! [0, 1] (normalized only when asked), cut into `patch × patch` squares row by row (each
//! flattened as (row, column, channel)), with each patch's (x, y) position; the patches and
//! positions padded to the budget's patch count with zeros and (-1, -1). Not decoding (see
//! `image.rs`) nor the vision tower.

use crate::image::{self, Filter, Rgb8};

/// The soft-token budgets Gemma4ImageProcessor accepts (`max_soft_tokens`).
pub const SOFT_TOKEN_BUDGETS: [usize; 5] = [70, 140, 280, 560, 1120];

/// Gemma4ImageProcessor's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchConfig {
    /// Side of a patch in pixels (`patch_size`).
    pub patch_size: usize,
    /// Side of the square of patches pooled into one soft token (`pooling_kernel_size`).
    pub pooling_kernel: usize,
    /// Most soft tokens an image becomes (`max_soft_tokens`, one of [`SOFT_TOKEN_BUDGETS`]).
    pub max_soft_tokens: usize,
    /// Multiplier applied to 8-bit values (1/255; 1 when `do_rescale` is false).
    pub rescale_factor: f32,
    /// Per-channel mean subtracted after rescaling (0 unless `do_normalize`).
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by (1 unless `do_normalize`).
    pub std: [f32; 3],
}

/// One image as the vision tower takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchedImage {
    /// `[max_patches, 3 · patch²]` values, the image's patches first, zeros after.
    pub values: Vec<f32>,
    /// `[max_patches, 2]` (x, y) patch positions, (-1, -1) on padding.
    pub positions: Vec<i64>,
    /// Soft tokens the image becomes: its patches / pooling².
    pub soft_tokens: usize,
}

impl PatchConfig {
    /// Gemma 4's defaults for the given geometry: pixels rescaled to [0, 1], not normalized. An
    /// error when the budget is not one HF accepts.
    pub fn gemma4(patch_size: usize, pooling_kernel: usize, max_soft_tokens: usize) -> Result<Self, String> {
        if !SOFT_TOKEN_BUDGETS.contains(&max_soft_tokens) {
            return Err(format!("max_soft_tokens is {max_soft_tokens}; expected one of {SOFT_TOKEN_BUDGETS:?}"));
        }
        if patch_size == 0 || pooling_kernel == 0 {
            return Err(format!("patch_size {patch_size} and pooling_kernel_size {pooling_kernel} must be above 0"));
        }
        Ok(PatchConfig {
            patch_size,
            pooling_kernel,
            max_soft_tokens,
            rescale_factor: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        })
    }

    /// Patch slots per image: the budget times pooling².
    pub fn max_patches(&self) -> usize {
        self.max_soft_tokens * self.pooling_kernel * self.pooling_kernel
    }

    /// Values per patch: 3 · patch².
    pub fn patch_len(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }

    /// The size `(height, width)` an image of `height × width` pixels is resized to
    /// (`get_aspect_ratio_preserving_size`): scaled to the budget's pixel count, each side
    /// rounded down to a multiple of pooling · patch; a side that rounds to 0 becomes one
    /// multiple and the other the sides' integer ratio of multiples, at most the budget's side.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize), String> {
        let max_patches = self.max_patches();
        let target_px = (max_patches * self.patch_size * self.patch_size) as f64;
        let factor = (target_px / (height * width) as f64).sqrt();
        let side = self.pooling_kernel * self.patch_size;
        let round_down = |ideal: f64| (ideal / side as f64).floor() as usize * side;
        let (mut th, mut tw) = (round_down(factor * height as f64), round_down(factor * width as f64));
        if th == 0 && tw == 0 {
            return Err(format!(
                "a {height}x{width} image would be resized to 0x0: its sides must allow multiples of {side} pixels"
            ));
        }
        let max_side = (max_patches / (self.pooling_kernel * self.pooling_kernel)) * side;
        if th == 0 {
            th = side;
            tw = ((width as f64 / height as f64).floor() as usize * side).min(max_side);
        } else if tw == 0 {
            tw = side;
            th = ((height as f64 / width as f64).floor() as usize * side).min(max_side);
        }
        if (th * tw) as f64 > target_px {
            return Err(format!(
                "a {height}x{width} image resized to {th}x{tw} exceeds {max_patches} patches of {} pixels",
                self.patch_size
            ));
        }
        Ok((th, tw))
    }

    /// Resizes, rescales, cuts into patches and pads one image.
    pub fn preprocess(&self, img: &Rgb8) -> Result<PatchedImage, String> {
        let (th, tw) = self.target_size(img.height, img.width)?;
        let img = image::resize(img, tw, th, Filter::Bicubic);
        let p = self.patch_size;
        let (rows, cols) = (th / p, tw / p);
        let (max_patches, len) = (self.max_patches(), self.patch_len());
        let mut values = vec![0f32; max_patches * len];
        let mut positions = vec![-1i64; max_patches * 2];
        for (py, px) in (0..rows).flat_map(|py| (0..cols).map(move |px| (py, px))) {
            let patch = py * cols + px;
            for (dy, dx, c) in (0..p).flat_map(|dy| (0..p).flat_map(move |dx| (0..3).map(move |c| (dy, dx, c)))) {
                let v = img.data[((py * p + dy) * tw + px * p + dx) * 3 + c] as f32;
                values[patch * len + (dy * p + dx) * 3 + c] = (v * self.rescale_factor - self.mean[c]) / self.std[c];
            }
            positions[2 * patch] = px as i64;
            positions[2 * patch + 1] = py as i64;
        }
        let pool = self.pooling_kernel * self.pooling_kernel;
        Ok(PatchedImage { values, positions, soft_tokens: rows * cols / pool })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_budget_and_edge_cases_fall_back() {
        let c = PatchConfig::gemma4(16, 3, 280).unwrap();
        // 280 soft tokens = 2520 patches of 16 px; sides multiples of 48.
        assert_eq!(c.target_size(768, 768).unwrap(), (768, 768));
        let (h, w) = c.target_size(480, 640).unwrap();
        assert!(h % 48 == 0 && w % 48 == 0 && h * w <= 2520 * 256 && w > h, "{h}x{w}");
        // Too thin for a multiple: one multiple high, the ratio wide (capped by the budget's side).
        assert_eq!(c.target_size(1, 8000).unwrap(), (48, 280 * 48));
        assert!(PatchConfig::gemma4(16, 3, 100).unwrap_err().contains("70, 140"));
    }

    #[test]
    fn patches_are_row_major_with_xy_positions_and_padding() {
        let c = PatchConfig { rescale_factor: 1.0, ..PatchConfig::gemma4(1, 1, 70).unwrap() };
        // A 2x3 image at 1-pixel patches needs no resize when it is its own target: check the
        // layout on a 7x10 image (70 patches, the budget exactly).
        let (h, w) = (7, 10);
        assert_eq!(c.target_size(h, w).unwrap(), (7, 10));
        let data: Vec<u8> = (0..h * w * 3).map(|i| (i % 251) as u8).collect();
        let out = c.preprocess(&Rgb8 { width: w, height: h, data: data.clone() }).unwrap();
        assert_eq!(out.soft_tokens, 70);
        // Patch (row 2, col 3) is patch 23 at (x 3, y 2) holding pixel (2, 3)'s channels.
        assert_eq!(&out.positions[46..48], &[3, 2]);
        let px = (2 * w + 3) * 3;
        assert_eq!(&out.values[23 * 3..24 * 3], &[data[px] as f32, data[px + 1] as f32, data[px + 2] as f32]);
    }
}
