//! Frozen base weights stored compactly and expanded to f32 for the matmul: bf16 (2 bytes a
//! value) or NF4 (QLoRA: 4 bits a value + one absmax per 64 values, optionally the absmax
//! double-quantized to 8 bits). [`PackedMatrix::to_f32`] expands on the device with a kernel, per
//! use; the packed form is what stays in memory. Host references in [`mod@reference`]. Not
//! trainable storage (gradients never flow into a packed weight).

pub mod reference;
#[cfg(test)]
mod tests;

use crate::matmul::Layout;
use cubecl::prelude::*;
use lapidary_core::{DType, Device, Error, Result, Tensor, launch};

/// How a frozen weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackFormat {
    /// bfloat16.
    Bf16,
    /// NF4 with f32 block scales (4.5 bits a value).
    Nf4,
    /// NF4 with 8-bit double-quantized block scales (about 4.13 bits a value).
    Nf4DoubleQuant,
}

// One value per weight matrix: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Packed {
    Bf16(Tensor),
    Nf4 {
        /// Eight 4-bit codes a 32-bit word (value `i` in bits `4 (i % 8)..`), carried in a
        /// 4-byte-element tensor.
        codes: Tensor,
        absmax: Scales,
    },
}

#[allow(clippy::large_enum_variant)]
enum Scales {
    F32(Tensor),
    /// Four int8 codes a word, one f32 scale per 256 codes, and the offset.
    Double {
        codes: Tensor,
        scales: Tensor,
        offset: f32,
        count: usize,
    },
}

/// A frozen matrix in a compact format.
pub struct PackedMatrix {
    shape: Vec<usize>,
    format: PackFormat,
    data: Packed,
    lut: Tensor,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({:?}, {:?}, {} bytes)", self.shape, self.format, self.size_bytes())
    }
}

fn words_tensor(device: &Device, words: &[u32]) -> Result<Tensor> {
    Tensor::from_bytes(device, bytemuck::cast_slice(words), &[words.len()], DType::F32)
}

impl PackedMatrix {
    /// Packs `values` (row-major, `shape`) on `device`.
    pub fn pack(device: &Device, values: &[f32], shape: &[usize], format: PackFormat) -> Result<Self> {
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(Error::invalid(format!("PackedMatrix::pack: {} values for shape {shape:?}", values.len())));
        }
        let lut = Tensor::from_f32(device, &reference::NF4_CODE, &[16], DType::F32)?;
        let data = match format {
            PackFormat::Bf16 => Packed::Bf16(Tensor::from_f32(device, values, shape, DType::BF16)?),
            PackFormat::Nf4 | PackFormat::Nf4DoubleQuant => {
                let (codes, absmax) = reference::quantize(values);
                let mut words = vec![0u32; n.div_ceil(8)];
                for (i, &c) in codes.iter().enumerate() {
                    words[i / 8] |= (c as u32) << (4 * (i % 8));
                }
                let absmax = if format == PackFormat::Nf4 {
                    Scales::F32(Tensor::from_f32(device, &absmax, &[absmax.len()], DType::F32)?)
                } else {
                    let (c8, scales, offset) = reference::quantize_scales(&absmax);
                    let mut w = vec![0u32; c8.len().div_ceil(4)];
                    for (i, &c) in c8.iter().enumerate() {
                        w[i / 4] |= (c as u8 as u32) << (8 * (i % 4));
                    }
                    Scales::Double {
                        codes: words_tensor(device, &w)?,
                        scales: Tensor::from_f32(device, &scales, &[scales.len()], DType::F32)?,
                        offset,
                        count: c8.len(),
                    }
                };
                Packed::Nf4 { codes: words_tensor(device, &words)?, absmax }
            }
        };
        Ok(PackedMatrix { shape: shape.to_vec(), format, data, lut })
    }

    /// Packs a tensor (read back to the host once).
    pub fn from_tensor(t: &Tensor, format: PackFormat) -> Result<Self> {
        Self::pack(t.device(), &t.to_f32_vec()?, t.shape(), format)
    }

    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The storage format.
    pub fn format(&self) -> PackFormat {
        self.format
    }

    /// Bytes held on the device (codes, scales; not the 64-byte code table).
    pub fn size_bytes(&self) -> usize {
        match &self.data {
            Packed::Bf16(t) => t.size_bytes(),
            Packed::Nf4 { codes, absmax: Scales::F32(a) } => codes.size_bytes() + a.size_bytes(),
            Packed::Nf4 { codes, absmax: Scales::Double { codes: c, scales, .. } } => {
                codes.size_bytes() + c.size_bytes() + scales.size_bytes() + 4
            }
        }
    }

    /// The f32 matrix (a new device tensor).
    pub fn to_f32(&self) -> Result<Tensor> {
        self.expand(DType::F32)
    }

    /// The matrix in `dtype`: bf16 storage as it is (no copy) when `dtype` is bf16, else a new
    /// device tensor.
    pub fn expand(&self, dtype: DType) -> Result<Tensor> {
        match &self.data {
            Packed::Bf16(t) if dtype == DType::BF16 => Ok(t.clone()),
            Packed::Bf16(t) => cast(t, dtype),
            Packed::Nf4 { codes, absmax } => {
                let absmax = match absmax {
                    Scales::F32(a) => a.clone(),
                    Scales::Double { codes, scales, offset, count } => {
                        dequantize_scales(codes, scales, *offset, *count, codes.device())?
                    }
                };
                let dev = codes.device();
                let n: usize = self.shape.iter().product();
                let out = Tensor::uninit(dev, &self.shape, dtype)?;
                let (count, dim) = launch::grid_1d(dev, n);
                dispatch_float!(dtype, F => unsafe {
                    nf4_kernel::launch_unchecked::<F>(
                        dev.client(),
                        count,
                        dim,
                        BufferArg::from_raw_parts(codes.handle().clone(), codes.numel()),
                        BufferArg::from_raw_parts(absmax.handle().clone(), absmax.numel()),
                        BufferArg::from_raw_parts(self.lut.handle().clone(), 16),
                        BufferArg::from_raw_parts(out.handle().clone(), n),
                    )
                });
                Ok(out)
            }
        }
    }
}

#[cube(launch_unchecked)]
fn nf4_kernel<F: Float>(codes: &[u32], absmax: &[f32], lut: &[f32], out: &mut [F]) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        let word = codes[i / 8];
        let shift = ((i % 8) * 4) as u32;
        let code = (word >> shift) & 15u32;
        out[i] = F::cast_from(lut[code as usize] * absmax[i / 64]);
        i += stride;
    }
}

#[cube(launch_unchecked)]
fn scales_kernel(codes: &[u32], scales: &[f32], offset: f32, out: &mut [f32]) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        let word = codes[i / 4];
        let shift = ((i % 4) * 8) as u32;
        let byte = (word >> shift) & 255u32;
        // int8 two's complement
        let signed = if byte >= 128u32 { f32::cast_from(byte) - 256.0f32 } else { f32::cast_from(byte) };
        out[i] = signed / 127.0f32 * scales[i / 256] + offset;
        i += stride;
    }
}

fn dequantize_scales(codes: &Tensor, scales: &Tensor, offset: f32, count: usize, dev: &Device) -> Result<Tensor> {
    let out = Tensor::uninit(dev, &[count], DType::F32)?;
    let (cubes, dim) = launch::grid_1d(dev, count);
    lapidary_core::launch::guarded(|| unsafe {
        scales_kernel::launch_unchecked(
            dev.client(),
            cubes,
            dim,
            BufferArg::from_raw_parts(codes.handle().clone(), codes.numel()),
            BufferArg::from_raw_parts(scales.handle().clone(), scales.numel()),
            offset,
            BufferArg::from_raw_parts(out.handle().clone(), count),
        )
    });
    Ok(out)
}

#[cube(launch_unchecked)]
fn cast_kernel<F: Float, G: Float>(x: &[F], out: &mut [G]) {
    let stride = CUBE_DIM as usize * CUBE_COUNT;
    let mut i = ABSOLUTE_POS;
    while i < out.len() {
        out[i] = G::cast_from(x[i]);
        i += stride;
    }
}

/// `x` as f32 (a copy for f32 input too).
pub fn cast_to_f32(x: &Tensor) -> Result<Tensor> {
    cast(x, DType::F32)
}

/// `x` stored as `dtype` (rounded to nearest even when narrowing; a copy when it already is).
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let dev = x.device();
    let out = Tensor::uninit(dev, x.shape(), dtype)?;
    let n = x.numel();
    if n == 0 {
        return Ok(out);
    }
    let (count, dim) = launch::grid_1d(dev, n);
    dispatch_float!(x.dtype(), F => dispatch_float!(dtype, G => unsafe {
        cast_kernel::launch_unchecked::<F, G>(
            dev.client(),
            count,
            dim,
            BufferArg::from_raw_parts(x.handle().clone(), n),
            BufferArg::from_raw_parts(out.handle().clone(), n),
        )
    }));
    Ok(out)
}

/// `x · op(W)` for a packed frozen weight `W`: `x` f32 `[..., K]`, `W` `[N, K]` read as `Wᵀ`
/// ([`Layout::ABt`], a Linear's forward) or `[K, N]`-like as `W` ([`Layout::AB`], its input
/// gradient, `x` then `[..., N]`), the result f32, plus `bias` `[N]`.
///
/// On the CPU runtime W is expanded to f32 and multiplied in f32. On GPUs the product runs on
/// tensor cores: W in bf16 (its storage, or NF4 expanded straight to bf16), `x` rounded to bf16
/// (as a bf16 model's activations are), f32 accumulation and output.
pub fn matmul_packed(x: &Tensor, w: &PackedMatrix, bias: Option<&Tensor>, layout: Layout) -> Result<Tensor> {
    layout.b_transposed_only("matmul_packed")?;
    if x.device().is_cpu() {
        return crate::matmul::matmul(x, &w.to_f32()?, bias, layout);
    }
    crate::matmul::matmul_mixed(&cast(x, DType::BF16)?, &w.expand(DType::BF16)?, bias, layout, DType::F32)
}
