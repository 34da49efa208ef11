//! JPEG decoding with libjpeg (mozjpeg's build of libjpeg-turbo's decoder, plain C), the decoder
//! PIL uses: the same integer IDCT and the same "fancy" chroma upsampling, so an image reads to
//! the very bytes `Image.open(f).convert("RGB")` gives — other decoders differ by up to 3 levels
//! a channel. A file that ends inside the image's data is an error, as in PIL. YCbCr, RGB and
//! grayscale files only: CMYK and YCCK files are left to the caller. Not EXIF orientation.

use crate::image::Rgb8;
use mozjpeg_sys::{J_COLOR_SPACE, JWRN_JPEG_EOF, jpeg_common_struct, jpeg_error_mgr};
use std::os::raw::c_int;

/// Decodes `bytes` to RGB: `Ok(Some(image))`, `Ok(None)` when the file's
/// colour space is one this module leaves to another decoder (CMYK, YCCK), or the decoder's error.
/// An image of more than `max_pixels` pixels is refused before its pixels are allocated.
pub fn decode(bytes: &[u8], max_pixels: usize) -> Result<Option<Rgb8>, String> {
    let decoded = std::panic::catch_unwind(|| -> Result<Option<Rgb8>, String> {
        let decompress = mozjpeg::Decompress::with_err(error_manager()).from_mem(bytes).map_err(|e| e.to_string())?;
        match decompress.color_space() {
            J_COLOR_SPACE::JCS_YCbCr | J_COLOR_SPACE::JCS_RGB | J_COLOR_SPACE::JCS_GRAYSCALE => {}
            _ => return Ok(None),
        }
        let mut started = decompress.rgb().map_err(|e| e.to_string())?;
        let (width, height) = (started.width(), started.height());
        if width * height > max_pixels {
            return Err(format!("the image declares {width}x{height} pixels; at most {max_pixels} are accepted"));
        }
        let pixels = started.read_scanlines::<u8>().map_err(|e| e.to_string())?;
        started.finish().map_err(|e| e.to_string())?;
        if pixels.len() != width * height * 3 {
            return Err(format!("the decoder returned {} bytes for {width}x{height} pixels", pixels.len()));
        }
        Ok(Some(Rgb8 { width, height, data: pixels }))
    });
    match decoded {
        Ok(result) => result,
        // libjpeg reports errors by unwinding out of its handlers, with the message as payload.
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg failed".to_string())),
    }
}

/// libjpeg's standard error manager, with errors (and the warning that the data ended early)
/// turned into unwinding instead of `exit()` and messages on stderr.
fn error_manager() -> jpeg_error_mgr {
    // SAFETY: `jpeg_error_mgr` is a plain C struct; `jpeg_std_error` fills every field.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(fail);
    err.emit_message = Some(on_message);
    err
}

/// libjpeg's text for the message `cinfo` holds.
fn message(cinfo: &mut jpeg_common_struct) -> String {
    let mut buffer = [0u8; 80];
    // SAFETY: `cinfo.err` is the manager set up by `error_manager`, alive for the whole decode.
    // `format_message` writes at most 80 bytes, NUL-terminated, into its buffer: the binding
    // declares that buffer shared, so the function is called through its writing signature.
    unsafe {
        if let Some(format) = cinfo.err.as_ref().and_then(|e| e.format_message) {
            type Declared = unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &[u8; 80]);
            type Writes = unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]);
            let format = std::mem::transmute::<Declared, Writes>(format);
            format(cinfo, &mut buffer);
        }
    }
    let text = buffer.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

extern "C-unwind" fn fail(cinfo: &mut jpeg_common_struct) {
    std::panic::resume_unwind(Box::new(format!("libjpeg: {}", message(cinfo))));
}

/// Warnings (level -1) are ignored as PIL ignores them — except data that ends early, which PIL
/// refuses ("image file is truncated"); trace messages (level ≥ 0) are never printed.
extern "C-unwind" fn on_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: as in `message`.
    let code = unsafe { cinfo.err.as_ref().map(|e| e.msg_code) };
    if level < 0 && code == Some(JWRN_JPEG_EOF as c_int) {
        std::panic::resume_unwind(Box::new("the file ends inside the image's data (truncated)".to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JPEG files written by PIL 13 and the RGB bytes PIL reads back from them
    /// (`Image.open(f).convert("RGB")`, libjpeg-turbo 3.2): 4:2:0 baseline, 4:2:2 progressive,
    /// grayscale progressive, odd sizes (edge blocks, upsampling at the borders), noisy content.
    type Case = (&'static [u8], &'static [u8], (usize, usize));
    const CASES: [Case; 3] = [
        (
            include_bytes!("../tests/jpeg/color-420-19x11.jpg"),
            include_bytes!("../tests/jpeg/color-420-19x11.pil.rgb"),
            (19, 11),
        ),
        (
            include_bytes!("../tests/jpeg/color-422-progressive-15x9.jpg"),
            include_bytes!("../tests/jpeg/color-422-progressive-15x9.pil.rgb"),
            (15, 9),
        ),
        (
            include_bytes!("../tests/jpeg/gray-progressive-13x7.jpg"),
            include_bytes!("../tests/jpeg/gray-progressive-13x7.pil.rgb"),
            (13, 7),
        ),
    ];

    #[test]
    fn decodes_to_the_bytes_pil_reads() {
        for (file, want, size) in CASES {
            let rgb = decode(file, usize::MAX).unwrap().unwrap();
            assert_eq!((rgb.width, rgb.height), size);
            let worst = rgb.data.iter().zip(want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            assert_eq!(worst, 0, "{size:?}: up to {worst} levels from PIL's bytes");
        }
    }

    #[test]
    fn truncated_and_foreign_data_are_errors() {
        let full = CASES[0].0;
        for cut in [2, 20, full.len() / 2, full.len() - 4] {
            assert!(decode(&full[..cut], usize::MAX).is_err(), "cut at {cut} of {}", full.len());
        }
        let e = decode(&full[..full.len() / 2], usize::MAX).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        assert!(decode(full, 19 * 11 - 1).unwrap_err().contains("19x11"));
        assert!(decode(b"\x89PNG\r\n\x1a\n", usize::MAX).is_err());
    }
}
