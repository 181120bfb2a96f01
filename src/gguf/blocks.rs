//! ggml's legacy block formats Q4_0, Q4_1 and Q8_0, written to give the bytes of gguf-py 0.19.0
//! (`gguf.quants.quantize`), which follows ggml's `quantize_row_*_ref`.
//!
//! All arithmetic is plain f32 with one rounding per operation (Rust never contracts `a*b + c`
//! into a fused multiply-add), which is what gguf-py 0.19.0 computes in numpy for Q4_0
//! (`x*id + 8.5`). Scales are rounded to fp16 with round-to-nearest-even (`half`).

use half::f16;

/// Elements per block in every legacy format.
pub const QK: usize = 32;

/// ggml tensor types this crate writes or reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

impl GgmlType {
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::BF16 => "BF16",
        }
    }

    /// (elements per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (QK, 18),
            Self::Q4_1 => (QK, 20),
            Self::Q8_0 => (QK, 34),
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, Self::Q4_0 | Self::Q4_1 | Self::Q8_0)
    }

    /// Bytes of `n` elements (`n` a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> usize {
        let (bs, bytes) = self.block();
        n / bs * bytes
    }
}

/// `max` = the signed value of the first element of largest magnitude.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Q4_0: {fp16 d; u8 qs[16]}.
pub fn quantize_block_q4_0(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!((x.len(), out.len()), (QK, 18));
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let q = |v: f32| ((v * id + 8.5f32).trunc() as i32).clamp(0, 15) as u8;
    for j in 0..QK / 2 {
        out[2 + j] = q(x[j]) | (q(x[j + QK / 2]) << 4);
    }
}

/// Q4_1: {fp16 d; fp16 m; u8 qs[16]}.
pub fn quantize_block_q4_1(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!((x.len(), out.len()), (QK, 20));
    let (mut min, mut max) = (x[0], x[0]);
    for &v in &x[1..] {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    out[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
    let q = |v: f32| (((v - min) * id + 0.5f32).trunc() as i32).clamp(0, 15) as u8;
    for j in 0..QK / 2 {
        out[4 + j] = q(x[j]) | (q(x[j + QK / 2]) << 4);
    }
}

/// Q8_0: {fp16 d; i8 qs[32]}; codes rounded half away from zero (C `roundf`).
pub fn quantize_block_q8_0(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!((x.len(), out.len()), (QK, 34));
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for j in 0..QK {
        out[2 + j] = ((x[j] * id).round() as i32).clamp(-128, 127) as i8 as u8;
    }
}

/// Quantizes `x` (a multiple of 32 elements) into `out` (`ty.bytes_for(x.len())` bytes).
pub fn quantize(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    assert!(ty.is_quantized() && x.len() % QK == 0 && out.len() == ty.bytes_for(x.len()));
    let (_, bytes) = ty.block();
    let f = match ty {
        GgmlType::Q4_0 => quantize_block_q4_0,
        GgmlType::Q4_1 => quantize_block_q4_1,
        _ => quantize_block_q8_0,
    };
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(bytes)) {
        f(xb, ob);
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Expands blocks (or F32/F16/BF16 data) of `ty` into `out`.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    assert_eq!(data.len(), ty.bytes_for(out.len()), "data length does not match the element count");
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes(c.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (_, bytes) = ty.block();
            let qs_at = if ty == GgmlType::Q4_0 { 2 } else { 4 };
            for (b, o) in data.chunks_exact(bytes).zip(out.chunks_exact_mut(QK)) {
                let d = half_at(b, 0);
                let (m, off) = if ty == GgmlType::Q4_0 { (0.0, 8.0) } else { (half_at(b, 2), 0.0) };
                for j in 0..QK / 2 {
                    let byte = b[qs_at + j];
                    o[j] = ((byte & 15) as f32 - off) * d + m;
                    o[j + QK / 2] = ((byte >> 4) as f32 - off) * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, o) in data.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
                let d = half_at(b, 0);
                for j in 0..QK {
                    o[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_known_block() {
        // max |x| is -8 at index 0: d = 1, id = 1, q = trunc(x + 8.5).
        let mut x = [0f32; 32];
        x[0] = -8.0;
        x[1] = 7.0;
        x[2] = 0.5; // 9.0 -> 9
        x[16] = -0.5; // 8.0 -> 8
        x[17] = 7.4; // 15.9 -> 15
        let mut out = [0u8; 18];
        quantize_block_q4_0(&x, &mut out);
        assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        assert_eq!(out[2], 8 << 4);
        assert_eq!(out[3], 15 | (15 << 4));
        assert_eq!(out[4], 9 | (8 << 4));
        let mut back = [0f32; 32];
        dequantize(GgmlType::Q4_0, &out, &mut back);
        assert_eq!(back[0], -8.0);
        assert_eq!(back[1], 7.0);
    }

    #[test]
    fn zero_block_is_all_middle_codes() {
        let x = [0f32; 32];
        let mut out = [0u8; 18];
        quantize_block_q4_0(&x, &mut out);
        // d = 0 / -8 = -0.0 (as numpy computes it)
        assert_eq!(&out[..2], &f16::from_f32(-0.0).to_le_bytes());
        assert!(out[2..].iter().all(|&b| b == 0x88));
        let mut out = [0u8; 20];
        quantize_block_q4_1(&x, &mut out);
        assert!(out.iter().all(|&b| b == 0));
        let mut out = [0u8; 34];
        quantize_block_q8_0(&x, &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        let mut x = [0f32; 32];
        x[0] = 127.0; // d = 1
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.5;
        let mut out = [0u8; 34];
        quantize_block_q8_0(&x, &mut out);
        assert_eq!(out[2 + 1] as i8, 3);
        assert_eq!(out[2 + 2] as i8, -3);
        assert_eq!(out[2 + 3] as i8, 1);
    }

    #[test]
    fn q4_1_known_block() {
        let x: Vec<f32> = (0..32).map(|i| (i % 16) as f32).collect();
        let mut out = [0u8; 20];
        quantize_block_q4_1(&x, &mut out);
        assert_eq!(half_at(&out, 0), 1.0);
        assert_eq!(half_at(&out, 2), 0.0);
        let mut back = vec![0f32; 32];
        dequantize(GgmlType::Q4_1, &out, &mut back);
        assert_eq!(back, x);
    }
}
