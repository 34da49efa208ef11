//! Storage dtypes of lapidary tensors and host conversions to and from f32. Arithmetic is done in
//! f32 by the kernels whatever the storage; this file only moves bits.

use half::{bf16, f16};
use std::fmt;

/// The element type a tensor is stored in on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
    /// IEEE half precision.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Encodes f32 values into this dtype's little-endian bytes (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::BF16 => {
                let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
            DType::F16 => {
                let v: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
        }
    }

    /// Decodes little-endian bytes of this dtype into f32 values (exact widening).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::BF16 => {
                bytes.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
            }
            DType::F16 => {
                bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
            }
        }
    }

    /// Rounds an f32 through this dtype and back, as storing then loading it would.
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::BF16 => bf16::from_f32(x).to_f32(),
            DType::F16 => f16::from_f32(x).to_f32(),
        }
    }

    /// The safetensors / HF name of the dtype (`F32`, `BF16`, `F16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_decode_roundtrip(values in proptest::collection::vec(-1e4f32..1e4, 1..64)) {
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let back = dt.decode(&dt.encode(&values));
                prop_assert_eq!(back.len(), values.len());
                for (a, b) in values.iter().zip(&back) {
                    prop_assert_eq!(dt.round(*a), *b);
                }
            }
        }
    }
}
