//! Image preprocessing as Gemma3ImageProcessor does it on image files (PIL backend): decode (JPEG
//! through libjpeg as PIL does, PNG, WebP, GIF, BMP), apply the EXIF orientation, convert to RGB
//! (alpha dropped, as `load_image` does), resize with PIL's bilinear filter (antialiased when
//! shrinking; 8-bit fixed point, horizontal pass then vertical; the bicubic filter Gemma 4 uses
//! too), rescale by 1/255 and normalize per channel. Output is `[3, H, W]` f32, channel-major.
//! Not pan-and-scan, nor Gemma 4's patches (`patches.rs`).

use lapidary_io::{Error, Result};
use std::path::Path;

/// How images are turned into pixel values (HF's `image_processor` settings).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageConfig {
    /// Output height.
    pub height: usize,
    /// Output width.
    pub width: usize,
    /// Multiplier applied to 8-bit values (1/255).
    pub rescale_factor: f32,
    /// Per-channel mean subtracted after rescaling.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
}

impl ImageConfig {
    /// Gemma 3's settings for a square image of `size` pixels: rescale 1/255, mean = std = 0.5.
    pub fn gemma3(size: usize) -> Self {
        ImageConfig { height: size, width: size, rescale_factor: 1.0 / 255.0, mean: [0.5; 3], std: [0.5; 3] }
    }
}

/// An 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

/// Decodes an image file into RGB as transformers' `load_image` does: EXIF orientation applied,
/// then converted to RGB (an alpha channel is dropped, not composited: `Image.convert("RGB")`).
pub fn load_rgb(path: &Path) -> Result<Rgb8> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes).map_err(|e| Error::invalid(format!("{}: cannot decode the image: {e}", path.display())))
}

/// Largest image side accepted (pixels).
pub const MAX_SIDE: usize = 16_384;
/// Most pixels an image may have (what a 8192 x 8192 photo has).
pub const MAX_PIXELS: usize = 8192 * 8192;
/// Most bytes a decoder may allocate for one image.
const MAX_DECODE_BYTES: u64 = 1 << 30;

/// [`load_rgb`] on bytes in memory. Images larger than [`MAX_SIDE`] a side or [`MAX_PIXELS`] in
/// all are refused from their header, before decoding.
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<Rgb8, String> {
    use image::ImageDecoder;
    let reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let format = reader.format();
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    // The size comes from the file's header: refuse absurd ones before anything is allocated.
    let (w, h) = decoder.dimensions();
    if w as usize > MAX_SIDE || h as usize > MAX_SIDE || (w as usize) * (h as usize) > MAX_PIXELS {
        return Err(format!(
            "the image declares {w}x{h} pixels; at most {MAX_SIDE} a side and {MAX_PIXELS} pixels are accepted"
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE as u32);
    limits.max_image_height = Some(MAX_SIDE as u32);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    decoder.set_limits(limits).map_err(|e| e.to_string())?;
    let orientation = decoder.orientation().map_err(|e| e.to_string())?;
    // JPEG through libjpeg, PIL's decoder, for PIL's exact bytes (CMYK files excepted).
    let jpeg = match format {
        Some(image::ImageFormat::Jpeg) => crate::jpeg::decode(bytes, MAX_PIXELS)?,
        _ => None,
    };
    let mut img = match jpeg {
        Some(rgb) => image::DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data)
                .ok_or("the JPEG decoder's output has the wrong size")?,
        ),
        None => image::DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?,
    };
    img.apply_orientation(orientation);
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err("the image is empty".into());
    }
    Ok(Rgb8 { width, height, data: to_rgb8(img) })
}

/// RGB bytes of a decoded image. 16-bit channels keep their high byte, as PIL reads 16-bit
/// RGB(A) and gray-alpha PNGs (rounding, `image`'s own conversion, can differ by one level). A
/// 16-bit gray PNG is read the same way, where PIL clips its values to 255 (a white image).
fn to_rgb8(img: image::DynamicImage) -> Vec<u8> {
    use image::DynamicImage as D;
    let high = |v: &[u16]| v.iter().map(|&x| (x >> 8) as u8).collect::<Vec<u8>>();
    let (w, h) = (img.width(), img.height());
    let eight = match &img {
        D::ImageRgb16(b) => D::ImageRgb8(image::RgbImage::from_raw(w, h, high(b.as_raw())).expect("same size")),
        D::ImageRgba16(b) => D::ImageRgba8(image::RgbaImage::from_raw(w, h, high(b.as_raw())).expect("same size")),
        D::ImageLuma16(b) => D::ImageLuma8(image::GrayImage::from_raw(w, h, high(b.as_raw())).expect("same size")),
        D::ImageLumaA16(b) => {
            D::ImageLumaA8(image::GrayAlphaImage::from_raw(w, h, high(b.as_raw())).expect("same size"))
        }
        _ => img,
    };
    eight.to_rgb8().into_raw()
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's resampling filters that lapidary's processors use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (Gemma 3): a triangle of support 1.
    Bilinear,
    /// `Image.BICUBIC` (Gemma 4): Keys' cubic with a = -0.5, support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point weights of a PIL filter for one axis: per output index, the first input index and
/// the weights (the filter widened by the scale when shrinking: antialiased).
fn filter_coeffs(filter: Filter, in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> =
                (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) / filterscale)).collect();
            let sum: f64 = w.iter().sum();
            if sum != 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            let one = (1u32 << PRECISION_BITS) as f64;
            let fixed = w.iter().map(|&v| (v * one + if v < 0.0 { -0.5 } else { 0.5 }) as i32).collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes with PIL's bilinear filter (`Image.resize(..., BILINEAR)` on an RGB image).
pub fn resize_bilinear(img: &Rgb8, width: usize, height: usize) -> Rgb8 {
    resize(img, width, height, Filter::Bilinear)
}

/// Resizes as PIL's `Image.resize(..., filter)` does an RGB image: 8-bit fixed point, the
/// horizontal pass first, as Pillow up to 12 always does. Pillow 13 runs the vertical pass first
/// for some images much taller than wide (those results can differ by one level).
pub fn resize(img: &Rgb8, width: usize, height: usize, filter: Filter) -> Rgb8 {
    let mut cur = img.clone();
    if width != cur.width {
        let coeffs = filter_coeffs(filter, cur.width, width);
        let mut out = vec![0u8; cur.height * width * 3];
        for y in 0..cur.height {
            let row = &cur.data[y * cur.width * 3..(y + 1) * cur.width * 3];
            for (x, (xmin, w)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                    for (k, wk) in w.iter().enumerate() {
                        acc += row[(xmin + k) * 3 + c] as i32 * wk;
                    }
                    out[(y * width + x) * 3 + c] = clip8(acc);
                }
            }
        }
        cur = Rgb8 { width, height: cur.height, data: out };
    }
    if height != cur.height {
        let coeffs = filter_coeffs(filter, cur.height, height);
        let mut out = vec![0u8; height * cur.width * 3];
        for (y, (ymin, w)) in coeffs.iter().enumerate() {
            for i in 0..cur.width * 3 {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (k, wk) in w.iter().enumerate() {
                    acc += cur.data[(ymin + k) * cur.width * 3 + i] as i32 * wk;
                }
                out[y * cur.width * 3 + i] = clip8(acc);
            }
        }
        cur = Rgb8 { width: cur.width, height, data: out };
    }
    cur
}

/// Resizes, rescales and normalizes: `[3, H, W]` f32 values.
pub fn preprocess(img: &Rgb8, cfg: &ImageConfig) -> Vec<f32> {
    let img = resize_bilinear(img, cfg.width, cfg.height);
    let plane = cfg.height * cfg.width;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 * cfg.rescale_factor - cfg.mean[c]) / cfg.std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_untouched_and_constant_stays_constant() {
        let data: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let img = Rgb8 { width: 5, height: 4, data };
        assert_eq!(resize_bilinear(&img, 5, 4), img);
        let flat = Rgb8 { width: 7, height: 3, data: vec![200; 7 * 3 * 3] };
        assert!(resize_bilinear(&flat, 4, 5).data.iter().all(|&v| v == 200));
    }

    #[test]
    fn halving_averages_pairs() {
        // Shrinking by 2 with PIL's bilinear: each output is a triangle-weighted mean of 4 inputs
        // (weights 1/8, 3/8, 3/8, 1/8; at the borders renormalized).
        let row = [0u8, 80, 160, 240];
        let data: Vec<u8> = row.iter().flat_map(|&v| [v, v, v]).collect();
        let out = resize_bilinear(&Rgb8 { width: 4, height: 1, data }, 2, 1);
        // first: (0*3 + 80*3 + 160*1)/7 = 57.1; second: (80*1 + 160*3 + 240*3)/7 = 182.9
        assert_eq!(out.data, vec![57, 57, 57, 183, 183, 183]);
    }

    #[test]
    fn undecodable_bytes_are_an_error() {
        assert!(decode_rgb(b"not an image").is_err());
        // A PNG header declaring 60000 x 60000 pixels and no data: refused from the header.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend(60_000u32.to_be_bytes());
        png.extend(60_000u32.to_be_bytes());
        png.extend([8, 2, 0, 0, 0]);
        png.extend(crc32(&png[12..]).to_be_bytes());
        // An empty IDAT chunk: the decoder reads the header up to the first one.
        png.extend(0u32.to_be_bytes());
        png.extend(b"IDAT");
        png.extend(crc32(b"IDAT").to_be_bytes());
        let e = decode_rgb(&png).unwrap_err();
        assert!(e.contains("60000x60000"), "{e}");
    }

    #[test]
    fn sixteen_bit_channels_keep_their_high_byte_and_bmp_gif_decode() {
        // 0x12ff rounds to 0x13 but PIL reads 0x12.
        let values: Vec<u16> = (0..4 * 3 * 3).map(|i| 0x12ff + (i as u16) * 0x0301).collect();
        let img = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_raw(4, 3, values.clone()).unwrap());
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let want: Vec<u8> = values.iter().map(|v| (v >> 8) as u8).collect();
        assert_eq!(decode_rgb(&png).unwrap().data, want);

        let rgb: Vec<u8> = (0..5 * 2 * 3).map(|i| (i * 41 % 256) as u8).collect();
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(5, 2, rgb.clone()).unwrap());
        for format in [image::ImageFormat::Bmp, image::ImageFormat::Gif] {
            let mut file = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut file), format).unwrap();
            let back = decode_rgb(&file).unwrap();
            assert_eq!((back.width, back.height), (5, 2), "{format:?}");
            if format == image::ImageFormat::Bmp {
                assert_eq!(back.data, rgb);
            }
        }
    }

    /// PNG's CRC-32 (so the header above is otherwise valid).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
}
