//! Host dequantization of the GGML block formats found in GGUF files (F32, F16, BF16, Q8_0,
//! Q5_0, Q4_K, Q6_K), following ggml's definitions: each block carries f16 scales and packed
//! integer codes; values are `scale · code (- min)`. Not quantization.

use half::{bf16, f16};

/// A GGML tensor type this reader knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 values: f16 scale, 32 int8.
    Q8_0,
    /// 32 values: f16 scale, 32 high bits, 32 low nibbles; codes - 16.
    Q5_0,
    /// 256 values in 8 groups of 32: f16 scale and min, 6-bit group scales and mins, nibbles.
    Q4K,
    /// 256 values in 16 groups of 16: 6-bit codes - 32, int8 group scales, f16 scale.
    Q6K,
}

impl GgmlType {
    /// From the type id in a GGUF tensor header; `None` for types this reader does not handle.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            8 => GgmlType::Q8_0,
            6 => GgmlType::Q5_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }

    /// The type id GGUF stores (inverse of [`Self::from_id`]).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q5_0 => 6,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
        }
    }

    /// `(values per block, bytes per block)`.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q6K => (256, 210),
        }
    }

    /// Bytes of `n` values (`n` a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> usize {
        let (per, bytes) = self.block();
        n / per * bytes
    }

    /// [`Self::bytes_for`], `None` when it overflows.
    pub fn checked_bytes_for(self, n: usize) -> Option<usize> {
        let (per, bytes) = self.block();
        (n / per).checked_mul(bytes)
    }
}

fn half(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantizes `n` values of type `t` from `data`.
pub fn dequantize(t: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let (per, bytes) = t.block();
    for block in data.chunks_exact(bytes).take(n / per) {
        match t {
            GgmlType::F32 => out.push(f32::from_le_bytes([block[0], block[1], block[2], block[3]])),
            GgmlType::F16 => out.push(half(block)),
            GgmlType::Bf16 => out.push(bf16::from_le_bytes([block[0], block[1]]).to_f32()),
            GgmlType::Q8_0 => {
                let d = half(block);
                out.extend(block[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
            GgmlType::Q5_0 => q5_0(block, &mut out),
            GgmlType::Q4K => q4_k(block, &mut out),
            GgmlType::Q6K => q6_k(block, &mut out),
        }
    }
    out
}

fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    let mut y = [0f32; 32];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let x0 = ((qs[j] as u32 & 0x0F) | h0) as i32 - 16;
        let x1 = ((qs[j] as u32 >> 4) | h1) as i32 - 16;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
    out.extend_from_slice(&y);
}

/// The 6-bit scale and min of group `j` (0..8) from Q4_K's 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, min) = (half(&b[0..2]), half(&b[2..4]));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, mm1, d2, mm2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
        out.extend(q.iter().map(|&v| d1 * (v & 0xF) as f32 - mm1));
        out.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - mm2));
    }
}

fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(&b[208..210]);
    for n in 0..2 {
        let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| sc[is + k] as i8 as f32;
            y[l] = d * s(0) * q1 as f32;
            y[l + 32] = d * s(2) * q2 as f32;
            y[l + 64] = d * s(4) * q3 as f32;
            y[l + 96] = d * s(6) * q4 as f32;
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    //! Random blocks, built from random codes and scales; each value checked against the
    //! format's formula.
    use super::*;
    use crate::rng::SplitMix64;

    fn below(rng: &mut SplitMix64, n: u64) -> u64 {
        rng.next_u64() % n
    }

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_is_scale_times_code() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..20 {
            let codes: Vec<i8> = (0..32).map(|_| below(&mut rng, 256) as u8 as i8).collect();
            let mut b = f16b(0.5).to_vec();
            b.extend(codes.iter().map(|&c| c as u8));
            let y = dequantize(GgmlType::Q8_0, &b, 32);
            assert_eq!(y, codes.iter().map(|&c| 0.5 * c as f32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn q5_0_puts_high_bits_on_both_halves() {
        // Codes c[j] (0..32): low nibble in qs, fifth bit in qh bit j.
        let mut rng = SplitMix64::new(2);
        let codes: Vec<u32> = (0..32).map(|_| below(&mut rng, 32) as u32).collect();
        let mut qh = 0u32;
        let mut qs = [0u8; 16];
        for j in 0..16 {
            qs[j] = (codes[j] & 0xF) as u8 | (((codes[j + 16] & 0xF) as u8) << 4);
            qh |= ((codes[j] >> 4) & 1) << j;
            qh |= ((codes[j + 16] >> 4) & 1) << (j + 16);
        }
        let mut b = f16b(0.25).to_vec();
        b.extend(qh.to_le_bytes());
        b.extend(qs);
        let y = dequantize(GgmlType::Q5_0, &b, 32);
        assert_eq!(y, codes.iter().map(|&c| 0.25 * (c as f32 - 16.0)).collect::<Vec<_>>());
    }

    #[test]
    fn q4_k_groups_use_their_scale_and_min() {
        // Group g: 6-bit scale s[g] and min m[g]; values d·s·q - dmin·m.
        let mut rng = SplitMix64::new(3);
        let s: Vec<u8> = (0..8).map(|_| below(&mut rng, 64) as u8).collect();
        let m: Vec<u8> = (0..8).map(|_| below(&mut rng, 64) as u8).collect();
        let mut sc = [0u8; 12];
        for j in 0..4 {
            sc[j] = s[j] | ((s[j + 4] >> 4) << 6);
            sc[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            sc[j + 8] = (s[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
        }
        for g in 0..8 {
            assert_eq!(scale_min_k4(g, &sc), (s[g], m[g]), "group {g}");
        }
        let q: Vec<u8> = (0..256).map(|_| below(&mut rng, 16) as u8).collect();
        let mut qs = [0u8; 128];
        for c in 0..4 {
            for l in 0..32 {
                qs[32 * c + l] = q[64 * c + l] | (q[64 * c + 32 + l] << 4);
            }
        }
        let mut b = f16b(0.5).to_vec();
        b.extend(f16b(0.125));
        b.extend(sc);
        b.extend(qs);
        let y = dequantize(GgmlType::Q4K, &b, 256);
        for i in 0..256 {
            let g = i / 32;
            assert_eq!(y[i], 0.5 * s[g] as f32 * q[i] as f32 - 0.125 * m[g] as f32, "value {i}");
        }
    }

    #[test]
    fn q6_k_codes_and_group_scales() {
        let mut rng = SplitMix64::new(4);
        let q: Vec<u8> = (0..256).map(|_| below(&mut rng, 64) as u8).collect();
        let sc: Vec<i8> = (0..16).map(|_| below(&mut rng, 256) as u8 as i8).collect();
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for n in 0..2 {
            for l in 0..32 {
                let v = |k: usize| q[128 * n + l + 32 * k];
                ql[64 * n + l] = (v(0) & 0xF) | ((v(2) & 0xF) << 4);
                ql[64 * n + l + 32] = (v(1) & 0xF) | ((v(3) & 0xF) << 4);
                qh[32 * n + l] = (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
            }
        }
        let mut b = ql.to_vec();
        b.extend(qh);
        b.extend(sc.iter().map(|&s| s as u8));
        b.extend(f16b(0.25));
        let y = dequantize(GgmlType::Q6K, &b, 256);
        for i in 0..256 {
            assert_eq!(y[i], 0.25 * sc[i / 16] as f32 * (q[i] as f32 - 32.0), "value {i}");
        }
    }
}
