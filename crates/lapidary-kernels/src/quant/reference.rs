//! Host references of NF4 quantization (QLoRA's 4-bit NormalFloat): blocks of 64 values scaled by
//! their absolute maximum, each value the nearest of 16 normal-quantile codes; optionally the
//! block scales themselves quantized to 8 bits (blocks of 256, around their mean).

/// The 16 NF4 code values (QLoRA paper, appendix E).
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Values per NF4 block.
pub const NF4_BLOCK: usize = 64;
/// Block scales per double-quantization block.
pub const SCALE_BLOCK: usize = 256;

/// The index of the code nearest to `x` (in [-1, 1]); ties go to the lower code.
pub fn nearest_code(x: f32) -> u8 {
    let mut k = 0;
    while k < 15 && x > 0.5 * (NF4_CODE[k] + NF4_CODE[k + 1]) {
        k += 1;
    }
    k as u8
}

/// Codes (one per value) and absmax (one per block of 64).
pub fn quantize(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(NF4_BLOCK));
    for block in values.chunks(NF4_BLOCK) {
        let m = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        absmax.push(m);
        codes.extend(block.iter().map(|&v| nearest_code(if m > 0.0 { v / m } else { 0.0 })));
    }
    (codes, absmax)
}

/// Values back from codes and absmax.
pub fn dequantize(codes: &[u8], absmax: &[f32]) -> Vec<f32> {
    codes.iter().enumerate().map(|(i, &c)| NF4_CODE[c as usize] * absmax[i / NF4_BLOCK]).collect()
}

/// Double quantization of the scales: `(int8 codes, per-256-block scale, offset)`;
/// `scale = code / 127 * block_scale + offset`.
pub fn quantize_scales(absmax: &[f32]) -> (Vec<i8>, Vec<f32>, f32) {
    let offset = absmax.iter().sum::<f32>() / absmax.len().max(1) as f32;
    let mut codes = Vec::with_capacity(absmax.len());
    let mut scales = Vec::with_capacity(absmax.len().div_ceil(SCALE_BLOCK));
    for block in absmax.chunks(SCALE_BLOCK) {
        let s = block.iter().fold(0f32, |a, v| a.max((v - offset).abs()));
        scales.push(s);
        codes.extend(block.iter().map(|&v| if s > 0.0 { ((v - offset) / s * 127.0).round() as i8 } else { 0 }));
    }
    (codes, scales, offset)
}

/// Scales back from [`quantize_scales`].
pub fn dequantize_scales(codes: &[i8], scales: &[f32], offset: f32) -> Vec<f32> {
    codes.iter().enumerate().map(|(i, &c)| c as f32 / 127.0 * scales[i / SCALE_BLOCK] + offset).collect()
}
