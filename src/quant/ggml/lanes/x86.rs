//! [`Lanes`] in AVX2 (8 lanes) and AVX-512 (16 lanes) registers, one intrinsic per operation.
//!
//! Plain arrays are not enough here: LLVM vectorizes the loops *around* array-of-lanes code
//! across the wrong dimension (gathers and scatters per lane). With register types every lane
//! operation is the one instruction it reads as; `_mm*_cvttps_epi32` is exactly the C cast of an
//! x86 build (the "integer indefinite" for NaN and out-of-range values).
//!
//! # Safety
//! Every method is `#[inline(always)]` and calls AVX2 / AVX-512 intrinsics. These types are
//! only created inside `encode_rows_avx2` / `encode_rows_avx512` (`super::super`), which are
//! `#[target_feature]` functions entered only after runtime detection of those features; the
//! methods are inlined there, so the instructions only ever run on a CPU that has them.

#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::ops::{Add, BitAnd, BitOr, Div, Mul, Neg, Not, Sub};

use super::{build, IntLanes, Lanes};

macro_rules! ops {
    ($ty:ident, $add:ident, $sub:ident, $mul:ident, $div:ident, $xor:ident, $splat:ident) => {
        impl Add for $ty {
            type Output = Self;
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                $ty(unsafe { $add(self.0, o.0) })
            }
        }
        impl Sub for $ty {
            type Output = Self;
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                $ty(unsafe { $sub(self.0, o.0) })
            }
        }
        impl Mul for $ty {
            type Output = Self;
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                $ty(unsafe { $mul(self.0, o.0) })
            }
        }
        impl Div for $ty {
            type Output = Self;
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                $ty(unsafe { $div(self.0, o.0) })
            }
        }
        impl Neg for $ty {
            type Output = Self;
            #[inline(always)]
            fn neg(self) -> Self {
                $ty(unsafe { $xor(self.0, $splat(-0.0)) })
            }
        }
    };
}

// ---------------------------------------------------------------- AVX2: 8 lanes

#[derive(Clone, Copy)]
pub struct Avx2(__m256);
#[derive(Clone, Copy)]
pub struct Avx2I(__m256i);
/// All-ones or zero per 32-bit lane.
#[derive(Clone, Copy)]
pub struct Avx2M(__m256i);

ops!(Avx2, _mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_div_ps, _mm256_xor_ps, _mm256_set1_ps);

impl BitAnd for Avx2M {
    type Output = Self;
    #[inline(always)]
    fn bitand(self, o: Self) -> Self {
        Avx2M(unsafe { _mm256_and_si256(self.0, o.0) })
    }
}
impl BitOr for Avx2M {
    type Output = Self;
    #[inline(always)]
    fn bitor(self, o: Self) -> Self {
        Avx2M(unsafe { _mm256_or_si256(self.0, o.0) })
    }
}
impl Not for Avx2M {
    type Output = Self;
    #[inline(always)]
    fn not(self) -> Self {
        Avx2M(unsafe { _mm256_xor_si256(self.0, _mm256_set1_epi32(-1)) })
    }
}
impl Add for Avx2I {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Avx2I(unsafe { _mm256_add_epi32(self.0, o.0) })
    }
}
impl Sub for Avx2I {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Avx2I(unsafe { _mm256_sub_epi32(self.0, o.0) })
    }
}

impl Avx2 {
    #[inline(always)]
    fn cmp<const OP: i32>(self, o: Self) -> Avx2M {
        Avx2M(unsafe { _mm256_castps_si256(_mm256_cmp_ps::<OP>(self.0, o.0)) })
    }
}

impl Lanes for Avx2 {
    const N: usize = 8;
    type Mask = Avx2M;
    type Int = Avx2I;

    #[inline(always)]
    fn splat(v: f32) -> Self {
        Avx2(unsafe { _mm256_set1_ps(v) })
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> f32) -> Self {
        let mut a = [0f32; 8];
        for (i, v) in a.iter_mut().enumerate() {
            *v = f(i);
        }
        Avx2(unsafe { _mm256_loadu_ps(a.as_ptr()) })
    }
    #[inline(always)]
    fn lane(self, i: usize) -> f32 {
        let mut a = [0f32; 8];
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), self.0) };
        a[i]
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Avx2(unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0) })
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        Avx2(unsafe { _mm256_sqrt_ps(self.0) })
    }
    #[inline(always)]
    fn round(self) -> Self {
        round_away(self, Avx2(unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(self.0) }))
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Avx2M {
        self.cmp::<_CMP_LT_OQ>(o)
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Avx2M {
        self.cmp::<_CMP_GT_OQ>(o)
    }
    #[inline(always)]
    fn eq(self, o: Self) -> Avx2M {
        self.cmp::<_CMP_EQ_OQ>(o)
    }
    #[inline(always)]
    fn ne(self, o: Self) -> Avx2M {
        self.cmp::<_CMP_NEQ_UQ>(o)
    }
    #[inline(always)]
    fn select(m: Avx2M, a: Self, b: Self) -> Self {
        Avx2(unsafe { _mm256_blendv_ps(b.0, a.0, _mm256_castsi256_ps(m.0)) })
    }
    #[inline(always)]
    fn nearest_int(self) -> Avx2I {
        unsafe {
            let val = _mm256_castps_si256(_mm256_add_ps(self.0, _mm256_set1_ps(12582912.0)));
            Avx2I(_mm256_sub_epi32(_mm256_and_si256(val, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x0040_0000)))
        }
    }
    #[inline(always)]
    fn trunc(self) -> Avx2I {
        Avx2I(unsafe { _mm256_cvttps_epi32(self.0) })
    }
    #[inline(always)]
    fn any(m: Avx2M) -> bool {
        unsafe { _mm256_movemask_ps(_mm256_castsi256_ps(m.0)) != 0 }
    }
    #[inline(always)]
    fn mask_splat(b: bool) -> Avx2M {
        Avx2M(unsafe { _mm256_set1_epi32(-(b as i32)) })
    }
    #[inline(always)]
    fn write(self, out: &mut [f32]) {
        assert!(out.len() >= 8);
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), self.0) };
    }
    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        assert!(src.len() >= 8);
        Avx2(unsafe { _mm256_loadu_ps(src.as_ptr()) })
    }
    #[inline(always)]
    fn load_blocks(src: &[f32], qk: usize, out: &mut [Self]) {
        assert!(qk.is_multiple_of(8) && src.len() >= 8 * qk && out.len() >= qk);
        for c in (0..qk).step_by(8) {
            // SAFETY: block b's elements c..c+8 lie inside src (asserted above).
            let r = build!(unsafe { _mm256_setzero_ps() }; 8, |b| unsafe { _mm256_loadu_ps(src.as_ptr().add(b * qk + c)) });
            let t = transpose8(r);
            for i in 0..8 {
                out[c + i] = Avx2(t[i]);
            }
        }
    }
    #[inline(always)]
    fn store_rows(v: &[Self; 16], rows: &mut [[f32; 16]]) {
        assert!(rows.len() >= 8);
        for half in 0..2 {
            let t = transpose8(build!(unsafe { _mm256_setzero_ps() }; 8, |i| v[8 * half + i].0));
            for (b, row) in t.iter().enumerate() {
                // SAFETY: rows[b] holds 16 floats; this half is 8 of them.
                unsafe { _mm256_storeu_ps(rows[b].as_mut_ptr().add(8 * half), *row) };
            }
        }
    }
    #[inline(always)]
    fn gather_rows(rows: &[[f32; 16]], pick: impl Fn(usize) -> usize) -> [Self; 16] {
        let mut out = [Avx2::splat(0.0); 16];
        for half in 0..2 {
            // SAFETY: each picked row holds 16 floats; this half reads 8 of them.
            let r = build!(unsafe { _mm256_setzero_ps() }; 8, |e| unsafe { _mm256_loadu_ps(rows[pick(e)].as_ptr().add(8 * half)) });
            for (i, col) in transpose8(r).iter().enumerate() {
                out[8 * half + i] = Avx2(*col);
            }
        }
        out
    }
}

impl IntLanes for Avx2I {
    const N: usize = 8;
    type Mask = Avx2M;
    type Float = Avx2;
    #[inline(always)]
    fn splat(v: i32) -> Self {
        Avx2I(unsafe { _mm256_set1_epi32(v) })
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> i32) -> Self {
        let mut a = [0i32; 8];
        for (i, v) in a.iter_mut().enumerate() {
            *v = f(i);
        }
        Avx2I(unsafe { _mm256_loadu_si256(a.as_ptr().cast()) })
    }
    #[inline(always)]
    fn lane(self, i: usize) -> i32 {
        let mut a = [0i32; 8];
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), self.0) };
        a[i]
    }
    #[inline(always)]
    fn imin(self, o: Self) -> Self {
        Avx2I(unsafe { _mm256_min_epi32(self.0, o.0) })
    }
    #[inline(always)]
    fn imax(self, o: Self) -> Self {
        Avx2I(unsafe { _mm256_max_epi32(self.0, o.0) })
    }
    #[inline(always)]
    fn to_f32(self) -> Avx2 {
        Avx2(unsafe { _mm256_cvtepi32_ps(self.0) })
    }
    #[inline(always)]
    fn ne(self, o: Self) -> Avx2M {
        unsafe { Avx2M(_mm256_xor_si256(_mm256_cmpeq_epi32(self.0, o.0), _mm256_set1_epi32(-1))) }
    }
    #[inline(always)]
    fn select(m: Avx2M, a: Self, b: Self) -> Self {
        Avx2I(unsafe { _mm256_blendv_epi8(b.0, a.0, m.0) })
    }
    #[inline(always)]
    fn map(self, f: impl Fn(i32) -> i32) -> Self {
        let mut a = [0i32; 8];
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), self.0) };
        for v in a.iter_mut() {
            *v = f(*v);
        }
        Avx2I(unsafe { _mm256_loadu_si256(a.as_ptr().cast()) })
    }
    #[inline(always)]
    fn write(self, out: &mut [i32]) {
        assert!(out.len() >= 8);
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), self.0) };
    }
    #[inline(always)]
    fn load(src: &[i32]) -> Self {
        assert!(src.len() >= 8);
        Avx2I(unsafe { _mm256_loadu_si256(src.as_ptr().cast()) })
    }
    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        Avx2I(unsafe { _mm256_sll_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }
    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        Avx2I(unsafe { _mm256_srl_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }
    #[inline(always)]
    fn sar(self, n: u32) -> Self {
        Avx2I(unsafe { _mm256_sra_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        Avx2I(unsafe { _mm256_and_si256(self.0, o.0) })
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        Avx2I(unsafe { _mm256_or_si256(self.0, o.0) })
    }
    #[inline(always)]
    fn store_rows(v: &[Self; 16], rows: &mut [[i32; 16]]) {
        let f = build!(Avx2::splat(0.0); 16, |i| Avx2(unsafe { _mm256_castsi256_ps(v[i].0) }));
        Avx2::store_rows(&f, bytemuck::cast_slice_mut(rows));
    }
    #[inline(always)]
    fn gather_rows(rows: &[[i32; 16]], pick: impl Fn(usize) -> usize) -> [Self; 16] {
        let f = Avx2::gather_rows(bytemuck::cast_slice(rows), pick);
        build!(Avx2I::splat(0); 16, |i| Avx2I(unsafe { _mm256_castps_si256(f[i].0) }))
    }
    #[inline(always)]
    fn store_bytes(v: &[Self], out: &mut [u8], stride: usize) {
        let full = v.len() / 8 * 8;
        assert!(stride >= v.len() && out.len() >= 7 * stride + v.len());
        for c in (0..full).step_by(8) {
            let t = transpose8(build!(unsafe { _mm256_setzero_ps() }; 8, |k| unsafe { _mm256_castsi256_ps(v[c + k].0) }));
            for (b, row) in t.iter().enumerate() {
                // The low byte of each i32 lane, in order: bytes 0,4,8,12 of each 128-bit half,
                // then the two halves' dwords 0 and 4 together.
                unsafe {
                    let pick = _mm256_setr_epi8(
                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                    );
                    let bytes = _mm256_shuffle_epi8(_mm256_castps_si256(*row), pick);
                    let low = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0)));
                    // SAFETY: out[b*stride + c .. +8] is inside `out` (asserted above).
                    _mm_storel_epi64(out.as_mut_ptr().add(b * stride + c).cast(), low);
                }
            }
        }
        let mut t = [0i32; 8];
        for (k, x) in v.iter().enumerate().skip(full) {
            x.write(&mut t);
            for b in 0..8 {
                out[b * stride + k] = t[b] as u8;
            }
        }
    }
}

// ---------------------------------------------------------------- AVX-512: 16 lanes

#[derive(Clone, Copy)]
pub struct Avx512(__m512);
#[derive(Clone, Copy)]
pub struct Avx512I(__m512i);
/// One bit per lane (an AVX-512 mask register).
#[derive(Clone, Copy)]
pub struct Avx512M(__mmask16);

ops!(Avx512, _mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps, _mm512_div_ps, _mm512_xor_ps, _mm512_set1_ps);

impl BitAnd for Avx512M {
    type Output = Self;
    #[inline(always)]
    fn bitand(self, o: Self) -> Self {
        Avx512M(self.0 & o.0)
    }
}
impl BitOr for Avx512M {
    type Output = Self;
    #[inline(always)]
    fn bitor(self, o: Self) -> Self {
        Avx512M(self.0 | o.0)
    }
}
impl Not for Avx512M {
    type Output = Self;
    #[inline(always)]
    fn not(self) -> Self {
        Avx512M(!self.0)
    }
}
impl Add for Avx512I {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Avx512I(unsafe { _mm512_add_epi32(self.0, o.0) })
    }
}
impl Sub for Avx512I {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Avx512I(unsafe { _mm512_sub_epi32(self.0, o.0) })
    }
}

impl Lanes for Avx512 {
    const N: usize = 16;
    type Mask = Avx512M;
    type Int = Avx512I;

    #[inline(always)]
    fn splat(v: f32) -> Self {
        Avx512(unsafe { _mm512_set1_ps(v) })
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> f32) -> Self {
        let mut a = [0f32; 16];
        for (i, v) in a.iter_mut().enumerate() {
            *v = f(i);
        }
        Avx512(unsafe { _mm512_loadu_ps(a.as_ptr()) })
    }
    #[inline(always)]
    fn lane(self, i: usize) -> f32 {
        let mut a = [0f32; 16];
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), self.0) };
        a[i]
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Avx512(unsafe { _mm512_abs_ps(self.0) })
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        Avx512(unsafe { _mm512_sqrt_ps(self.0) })
    }
    #[inline(always)]
    fn round(self) -> Self {
        round_away(self, Avx512(unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(self.0) }))
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Avx512M {
        Avx512M(unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0) })
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Avx512M {
        Avx512M(unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0) })
    }
    #[inline(always)]
    fn eq(self, o: Self) -> Avx512M {
        Avx512M(unsafe { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(self.0, o.0) })
    }
    #[inline(always)]
    fn ne(self, o: Self) -> Avx512M {
        Avx512M(unsafe { _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(self.0, o.0) })
    }
    #[inline(always)]
    fn select(m: Avx512M, a: Self, b: Self) -> Self {
        Avx512(unsafe { _mm512_mask_blend_ps(m.0, b.0, a.0) })
    }
    #[inline(always)]
    fn nearest_int(self) -> Avx512I {
        unsafe {
            let val = _mm512_castps_si512(_mm512_add_ps(self.0, _mm512_set1_ps(12582912.0)));
            Avx512I(_mm512_sub_epi32(_mm512_and_si512(val, _mm512_set1_epi32(0x007f_ffff)), _mm512_set1_epi32(0x0040_0000)))
        }
    }
    #[inline(always)]
    fn trunc(self) -> Avx512I {
        Avx512I(unsafe { _mm512_cvttps_epi32(self.0) })
    }
    #[inline(always)]
    fn any(m: Avx512M) -> bool {
        m.0 != 0
    }
    #[inline(always)]
    fn mask_splat(b: bool) -> Avx512M {
        Avx512M(if b { 0xffff } else { 0 })
    }
    #[inline(always)]
    fn write(self, out: &mut [f32]) {
        assert!(out.len() >= 16);
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), self.0) };
    }
    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        assert!(src.len() >= 16);
        Avx512(unsafe { _mm512_loadu_ps(src.as_ptr()) })
    }
    #[inline(always)]
    fn load_blocks(src: &[f32], qk: usize, out: &mut [Self]) {
        assert!(qk.is_multiple_of(16) && src.len() >= 16 * qk && out.len() >= qk);
        for c in (0..qk).step_by(16) {
            // SAFETY: block b's elements c..c+16 lie inside src (asserted above).
            let r = build!(unsafe { _mm512_setzero_ps() }; 16, |b| unsafe { _mm512_loadu_ps(src.as_ptr().add(b * qk + c)) });
            let t = transpose16(r);
            for i in 0..16 {
                out[c + i] = Avx512(t[i]);
            }
        }
    }
    #[inline(always)]
    fn store_rows(v: &[Self; 16], rows: &mut [[f32; 16]]) {
        assert!(rows.len() >= 16);
        let t = transpose16(build!(unsafe { _mm512_setzero_ps() }; 16, |i| v[i].0));
        for (b, row) in t.iter().enumerate() {
            // SAFETY: rows[b] holds 16 floats.
            unsafe { _mm512_storeu_ps(rows[b].as_mut_ptr(), *row) };
        }
    }
    #[inline(always)]
    fn gather_rows(rows: &[[f32; 16]], pick: impl Fn(usize) -> usize) -> [Self; 16] {
        // SAFETY: each picked row holds 16 floats.
        let r = build!(unsafe { _mm512_setzero_ps() }; 16, |e| unsafe { _mm512_loadu_ps(rows[pick(e)].as_ptr()) });
        let t = transpose16(r);
        build!(Avx512::splat(0.0); 16, |i| Avx512(t[i]))
    }
}

impl IntLanes for Avx512I {
    const N: usize = 16;
    type Mask = Avx512M;
    type Float = Avx512;
    #[inline(always)]
    fn splat(v: i32) -> Self {
        Avx512I(unsafe { _mm512_set1_epi32(v) })
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> i32) -> Self {
        let mut a = [0i32; 16];
        for (i, v) in a.iter_mut().enumerate() {
            *v = f(i);
        }
        Avx512I(unsafe { _mm512_loadu_si512(a.as_ptr().cast()) })
    }
    #[inline(always)]
    fn lane(self, i: usize) -> i32 {
        let mut a = [0i32; 16];
        unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), self.0) };
        a[i]
    }
    #[inline(always)]
    fn imin(self, o: Self) -> Self {
        Avx512I(unsafe { _mm512_min_epi32(self.0, o.0) })
    }
    #[inline(always)]
    fn imax(self, o: Self) -> Self {
        Avx512I(unsafe { _mm512_max_epi32(self.0, o.0) })
    }
    #[inline(always)]
    fn to_f32(self) -> Avx512 {
        Avx512(unsafe { _mm512_cvtepi32_ps(self.0) })
    }
    #[inline(always)]
    fn ne(self, o: Self) -> Avx512M {
        Avx512M(unsafe { _mm512_cmpneq_epi32_mask(self.0, o.0) })
    }
    #[inline(always)]
    fn select(m: Avx512M, a: Self, b: Self) -> Self {
        Avx512I(unsafe { _mm512_mask_blend_epi32(m.0, b.0, a.0) })
    }
    #[inline(always)]
    fn map(self, f: impl Fn(i32) -> i32) -> Self {
        let mut a = [0i32; 16];
        unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), self.0) };
        for v in a.iter_mut() {
            *v = f(*v);
        }
        Avx512I(unsafe { _mm512_loadu_si512(a.as_ptr().cast()) })
    }
    #[inline(always)]
    fn write(self, out: &mut [i32]) {
        assert!(out.len() >= 16);
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), self.0) };
    }
    #[inline(always)]
    fn load(src: &[i32]) -> Self {
        assert!(src.len() >= 16);
        Avx512I(unsafe { _mm512_loadu_si512(src.as_ptr().cast()) })
    }
    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        Avx512I(unsafe { _mm512_sll_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }
    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        Avx512I(unsafe { _mm512_srl_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }
    #[inline(always)]
    fn sar(self, n: u32) -> Self {
        Avx512I(unsafe { _mm512_sra_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        Avx512I(unsafe { _mm512_and_si512(self.0, o.0) })
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        Avx512I(unsafe { _mm512_or_si512(self.0, o.0) })
    }
    #[inline(always)]
    fn store_rows(v: &[Self; 16], rows: &mut [[i32; 16]]) {
        let f = build!(Avx512::splat(0.0); 16, |i| Avx512(unsafe { _mm512_castsi512_ps(v[i].0) }));
        Avx512::store_rows(&f, bytemuck::cast_slice_mut(rows));
    }
    #[inline(always)]
    fn gather_rows(rows: &[[i32; 16]], pick: impl Fn(usize) -> usize) -> [Self; 16] {
        let f = Avx512::gather_rows(bytemuck::cast_slice(rows), pick);
        build!(Avx512I::splat(0); 16, |i| Avx512I(unsafe { _mm512_castps_si512(f[i].0) }))
    }
    #[inline(always)]
    fn store_bytes(v: &[Self], out: &mut [u8], stride: usize) {
        let full = v.len() / 16 * 16;
        assert!(stride >= v.len() && out.len() >= 15 * stride + v.len());
        for c in (0..full).step_by(16) {
            let t = transpose16(build!(unsafe { _mm512_setzero_ps() }; 16, |k| unsafe { _mm512_castsi512_ps(v[c + k].0) }));
            for (b, row) in t.iter().enumerate() {
                // SAFETY: out[b*stride + c .. +16] is inside `out` (asserted above).
                unsafe { _mm_storeu_si128(out.as_mut_ptr().add(b * stride + c).cast(), _mm512_cvtepi32_epi8(_mm512_castps_si512(*row))) };
            }
        }
        let mut t = [0i32; 16];
        for (k, x) in v.iter().enumerate().skip(full) {
            x.write(&mut t);
            for b in 0..16 {
                out[b * stride + k] = t[b] as u8;
            }
        }
    }
}

/// `r[i]` = row `i` of an 8×8 matrix → column `i`.
#[inline(always)]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }
}

/// `r[i]` = row `i` of a 16×16 matrix → column `i`: 4×4 transposes inside each 128-bit lane,
/// then the 128-bit blocks moved across registers.
#[inline(always)]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    unsafe {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for j in (0..16).step_by(4) {
            u[j] = _mm512_shuffle_ps::<0x44>(t[j], t[j + 2]);
            u[j + 1] = _mm512_shuffle_ps::<0xEE>(t[j], t[j + 2]);
            u[j + 2] = _mm512_shuffle_ps::<0x44>(t[j + 1], t[j + 3]);
            u[j + 3] = _mm512_shuffle_ps::<0xEE>(t[j + 1], t[j + 3]);
        }
        // u[4q + k] holds, in its 128-bit block p, column (4p + k) of rows 4q..4q+4.
        for k in 0..4 {
            t[k] = _mm512_shuffle_f32x4::<0x88>(u[k], u[4 + k]);
            t[4 + k] = _mm512_shuffle_f32x4::<0xDD>(u[k], u[4 + k]);
            t[8 + k] = _mm512_shuffle_f32x4::<0x88>(u[8 + k], u[12 + k]);
            t[12 + k] = _mm512_shuffle_f32x4::<0xDD>(u[8 + k], u[12 + k]);
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            out[k] = _mm512_shuffle_f32x4::<0x88>(t[k], t[8 + k]);
            out[8 + k] = _mm512_shuffle_f32x4::<0xDD>(t[k], t[8 + k]);
            out[4 + k] = _mm512_shuffle_f32x4::<0x88>(t[4 + k], t[12 + k]);
            out[12 + k] = _mm512_shuffle_f32x4::<0xDD>(t[4 + k], t[12 + k]);
        }
        out
    }
}

/// C's `roundf` (ties away from zero) from exact steps: `t = trunc(x)`, and `x - t` is exact,
/// so adding ±1 where `|x - t| ≥ 0.5` gives the same result, signed zeros included.
#[inline(always)]
fn round_away<V: Lanes>(x: V, t: V) -> V {
    let up = (x - t).abs().gt(V::splat(0.5)) | (x - t).abs().eq(V::splat(0.5));
    let one = V::select(x.lt(V::splat(0.0)), V::splat(-1.0), V::splat(1.0));
    V::select(up, t + one, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_move_rows_to_columns() {
        if !std::arch::is_x86_feature_detected!("avx512f") || !std::arch::is_x86_feature_detected!("avx2") {
            return; // nothing of this runs on such a CPU
        }
        let src: Vec<f32> = (0..16 * 32).map(|i| i as f32).collect();
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
        fn check(src: &[f32]) {
            let mut out = [Avx512::splat(0.0); 32];
            Avx512::load_blocks(src, 32, &mut out);
            let mut out8 = [Avx2::splat(0.0); 32];
            Avx2::load_blocks(src, 32, &mut out8);
            for i in 0..32 {
                for b in 0..16 {
                    assert_eq!(out[i].lane(b), src[b * 32 + i]);
                }
                for b in 0..8 {
                    assert_eq!(out8[i].lane(b), src[b * 32 + i]);
                }
            }
            let ints: Vec<Avx512I> = (0..20).map(|k| Avx512I(_mm512_castps_si512(out[k].0))).collect();
            let mut bytes = vec![0u8; 16 * 24];
            Avx512I::store_bytes(&ints, &mut bytes, 24);
            let ints8: Vec<Avx2I> = (0..20).map(|k| Avx2I(_mm256_castps_si256(out8[k].0))).collect();
            let mut bytes8 = vec![0u8; 8 * 24];
            Avx2I::store_bytes(&ints8, &mut bytes8, 24);
            for k in 0..20 {
                for b in 0..16 {
                    assert_eq!(bytes[b * 24 + k], (src[b * 32 + k].to_bits() & 0xff) as u8);
                }
                for b in 0..8 {
                    assert_eq!(bytes8[b * 24 + k], (src[b * 32 + k].to_bits() & 0xff) as u8);
                }
            }
        }
        // SAFETY: the features were detected above.
        unsafe { check(&src) }
    }
}
