//! Weights as a source stores them (f32, f16, bf16, f64, little-endian), read as f32.
//!
//! The one place where source dtypes become f32: the converter hands [`Values`] to the kernels,
//! which convert a group (or a chunk of rows) at a time into a small buffer while they work,
//! instead of materializing a whole f32 copy of each tensor first.

use std::borrow::Cow;
use std::ops::Range;

use half::f16;
use rayon::prelude::*;

/// A tensor's values in their stored type.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    /// Aligned native f32 (read in place).
    F32(&'a [f32]),
    /// Little-endian f32 bytes at any alignment.
    F32Bytes(&'a [u8]),
    F16(&'a [u8]),
    BF16(&'a [u8]),
    F64(&'a [u8]),
}

impl<'a> Values<'a> {
    /// Little-endian f32 bytes, read in place where they are aligned.
    pub fn f32_bytes(b: &'a [u8]) -> Self {
        match bytemuck::try_cast_slice::<u8, f32>(b) {
            Ok(s) if cfg!(target_endian = "little") => Values::F32(s),
            _ => Values::F32Bytes(b),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Values::F32(s) => s.len(),
            Values::F32Bytes(b) => b.len() / 4,
            Values::F16(b) | Values::BF16(b) => b.len() / 2,
            Values::F64(b) => b.len() / 8,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `range` as f32: borrowed for native f32, else converted into `scratch` (which
    /// must hold `range.len()` values).
    #[inline(always)]
    pub fn get<'s>(&'s self, range: Range<usize>, scratch: &'s mut [f32]) -> &'s [f32] {
        let out = &mut scratch[..range.len()];
        match *self {
            Values::F32(s) => return &s[range],
            Values::F32Bytes(b) => {
                for (o, c) in out.iter_mut().zip(b[range.start * 4..range.end * 4].chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Values::F16(b) => {
                let b = &b[range.start * 2..range.end * 2];
                match bytemuck::try_cast_slice::<u8, f16>(b) {
                    // F16C where the CPU has it.
                    Ok(h) if cfg!(target_endian = "little") => half::slice::HalfFloatSliceExt::convert_to_f32_slice(h, out),
                    _ => {
                        for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                            *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                        }
                    }
                }
            }
            Values::BF16(b) => {
                // bf16 is the top half of an f32: a shift, which vectorizes.
                for (o, c) in out.iter_mut().zip(b[range.start * 2..range.end * 2].chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
            Values::F64(b) => {
                for (o, c) in out.iter_mut().zip(b[range.start * 8..range.end * 8].chunks_exact(8)) {
                    *o = f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32;
                }
            }
        }
        out
    }

    /// [`Self::get`] for a large range, converted on the thread pool: the GPU paths convert a
    /// whole tensor (or a large piece) before they upload it, and one thread converting and
    /// faulting in its pages bound the GPU converter (H200: 0.10 s per 46M-value f16 tensor,
    /// against 0.02 s of GPU encoding).
    pub fn get_par<'s>(&'s self, range: Range<usize>, scratch: &'s mut [f32]) -> &'s [f32] {
        const BLOCK: usize = 1 << 18;
        if let Values::F32(s) = *self {
            return &s[range];
        }
        let out = &mut scratch[..range.len()];
        crate::threads::install(|| {
            out.par_chunks_mut(BLOCK).enumerate().for_each(|(i, o)| {
                let at = range.start + i * BLOCK;
                // Not native f32, so `get` converts into `o`.
                self.get(at..at + o.len(), o);
            })
        });
        out
    }

    /// All values as f32: borrowed for native f32, else converted once (in parallel).
    pub fn to_f32(&self) -> Cow<'a, [f32]> {
        match *self {
            Values::F32(s) => Cow::Borrowed(s),
            _ => {
                let mut out = vec![0f32; self.len()];
                self.get_par(0..self.len(), &mut out);
                Cow::Owned(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn every_dtype_reads_as_f32() {
        let want = [1.5f32, -2.25, 0.0, 65504.0, -1e-3];
        let le = |f: &dyn Fn(f32) -> Vec<u8>| want.iter().flat_map(|&v| f(v)).collect::<Vec<u8>>();
        let f32b = le(&|v| v.to_le_bytes().to_vec());
        let f16b = le(&|v| f16::from_f32(v).to_le_bytes().to_vec());
        let bf16b = le(&|v| bf16::from_f32(v).to_le_bytes().to_vec());
        let f64b = le(&|v| (v as f64).to_le_bytes().to_vec());
        // An odd start, so the f32 bytes are unaligned.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&f32b);
        let cases: Vec<(Values, Vec<f32>)> = vec![
            (Values::F32(&want), want.to_vec()),
            (Values::f32_bytes(&shifted[1..]), want.to_vec()),
            (Values::F16(&f16b), want.iter().map(|&v| f16::from_f32(v).to_f32()).collect()),
            (Values::BF16(&bf16b), want.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()),
            (Values::F64(&f64b), want.to_vec()),
        ];
        for (v, expect) in cases {
            assert_eq!(v.len(), 5);
            assert_eq!(v.to_f32().as_ref(), expect.as_slice(), "{v:?}");
            let mut scratch = [0f32; 3];
            assert_eq!(v.get(1..4, &mut scratch), &expect[1..4], "{v:?}");
            assert_eq!(v.get_par(1..4, &mut scratch), &expect[1..4], "{v:?}");
        }
    }

    /// The parallel read gives `get`'s values over many blocks of the pool's split, a ragged
    /// last one and an offset start.
    #[test]
    fn the_parallel_read_equals_the_plain_one() {
        let n = (1 << 18) * 3 + 12345;
        let f16b: Vec<u8> = (0..n).flat_map(|i| f16::from_f32((i % 2049) as f32 * 0.37 - 300.0).to_le_bytes()).collect();
        let v = Values::F16(&f16b);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        for range in [0..n, 77..n - 5] {
            let len = range.len();
            assert_eq!(v.get_par(range.clone(), &mut a)[..len], v.get(range, &mut b)[..len]);
        }
    }
}
