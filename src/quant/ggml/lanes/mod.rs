//! Lanes: the number type the ggml searches are written in.
//!
//! Every block algorithm in this module is written once, generic over [`Lanes`], and runs one
//! block per lane: `f32` (one lane) is the plain reference, [`F32s<N>`] runs `N` independent
//! blocks side by side. Each lane performs exactly the float operations of ggml's scalar C code,
//! in the same order (IEEE-754 single precision, one rounding per operation, never a fused
//! multiply-add — Rust does not contract `a * b + c`), so every lane width gives the same bytes.
//! Control flow that differs per block becomes masks and selects; loops with early exits keep
//! going while any lane is still active, with finished lanes masked off.
//!
//! [`F32s`] is plain arrays with element-wise loops, the portable form; [`x86`] holds the AVX2
//! and AVX-512 register forms. Division and square root are exact in every form.

use std::ops::{Add, BitAnd, BitOr, Div, Mul, Neg, Not, Sub};

#[cfg(target_arch = "x86_64")]
pub mod x86;

/// ggml's `nearest_int`: round to nearest (ties to even) through the float adder, valid for
/// |v| ≤ 4194303; outside that range it returns what ggml's bit trick returns.
#[inline(always)]
pub fn nearest_int(v: f32) -> i32 {
    let val = v + 12582912.0;
    ((val.to_bits() & 0x007f_ffff) as i32) - 0x0040_0000
}

/// C's `(int)f` as an x86-64 build of ggml executes it (`cvttss2si`): truncation toward zero,
/// and the "integer indefinite" `i32::MIN` for NaN and values outside the i32 range (where C
/// leaves the result undefined). Narrower C casts then keep the low bits (`as i8`/`as u8`).
#[inline(always)]
pub fn c_trunc(v: f32) -> i32 {
    if (-2147483648.0..2147483648.0).contains(&v) {
        v as i32
    } else {
        i32::MIN
    }
}

/// One or more f32 lanes (one block each).
pub trait Lanes:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self>
{
    const N: usize;
    type Mask: Copy + BitAnd<Output = Self::Mask> + BitOr<Output = Self::Mask> + Not<Output = Self::Mask>;
    type Int: IntLanes<Mask = Self::Mask, Float = Self>;

    fn splat(v: f32) -> Self;
    fn from_fn(f: impl FnMut(usize) -> f32) -> Self;
    fn lane(self, i: usize) -> f32;
    fn abs(self) -> Self;
    fn sqrt(self) -> Self;
    /// C's `roundf`: to nearest, ties away from zero.
    fn round(self) -> Self;
    fn lt(self, o: Self) -> Self::Mask;
    fn gt(self, o: Self) -> Self::Mask;
    fn eq(self, o: Self) -> Self::Mask;
    fn ne(self, o: Self) -> Self::Mask;
    /// `m ? a : b` per lane.
    fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    fn nearest_int(self) -> Self::Int;
    /// C's float → int conversion ([`c_trunc`]).
    fn trunc(self) -> Self::Int;
    fn any(m: Self::Mask) -> bool;
    fn mask_splat(b: bool) -> Self::Mask;
    /// Stores the lanes in `out[..N]`.
    fn write(self, out: &mut [f32]);
    /// The lanes from `src[..N]` (the inverse of [`Lanes::write`]).
    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        Self::from_fn(|b| src[b])
    }
    /// `N` consecutive blocks of `qk` elements (`src[b*qk..(b+1)*qk]`) into lanes:
    /// `out[i].lane(b) = src[b*qk + i]` for `i < qk`.
    #[inline(always)]
    fn load_blocks(src: &[f32], qk: usize, out: &mut [Self]) {
        for (i, o) in out[..qk].iter_mut().enumerate() {
            *o = Self::from_fn(|b| src[b * qk + i]);
        }
    }
    /// One group of 16 per lane into rows: `rows[b][i] = v[i].lane(b)`.
    #[inline(always)]
    fn store_rows(v: &[Self; 16], rows: &mut [[f32; 16]]) {
        let mut t = [0f32; MAX_LANES];
        for (i, x) in v.iter().enumerate() {
            x.write(&mut t);
            for b in 0..Self::N {
                rows[b][i] = t[b];
            }
        }
    }
    /// Rows back into lanes: `out[i].lane(e) = rows[pick(e)][i]`.
    #[inline(always)]
    fn gather_rows(rows: &[[f32; 16]], pick: impl Fn(usize) -> usize) -> [Self; 16] {
        build!(Self::splat(0.0); 16, |i| Self::from_fn(|e| rows[pick(e)][i]))
    }
}

/// i32 lanes, the codes (`L[i]`) of the blocks.
pub trait IntLanes: Copy + Add<Output = Self> + Sub<Output = Self> {
    const N: usize;
    type Mask: Copy;
    type Float: Copy;
    fn splat(v: i32) -> Self;
    fn from_fn(f: impl FnMut(usize) -> i32) -> Self;
    fn lane(self, i: usize) -> i32;
    fn imin(self, o: Self) -> Self;
    fn imax(self, o: Self) -> Self;
    /// `(float)l`.
    fn to_f32(self) -> Self::Float;
    fn ne(self, o: Self) -> Self::Mask;
    fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    /// An integer operation per lane (C's narrowing conversions).
    fn map(self, f: impl Fn(i32) -> i32) -> Self;
    /// Stores the lanes in `out[..N]`.
    fn write(self, out: &mut [i32]);
    /// The lanes from `src[..N]`.
    #[inline(always)]
    fn load(src: &[i32]) -> Self {
        Self::from_fn(|b| src[b])
    }
    fn shl(self, n: u32) -> Self;
    /// Logical shift right.
    fn shr(self, n: u32) -> Self;
    /// Arithmetic shift right.
    fn sar(self, n: u32) -> Self;
    fn and(self, o: Self) -> Self;
    fn or(self, o: Self) -> Self;
    /// As [`Lanes::store_rows`].
    #[inline(always)]
    fn store_rows(v: &[Self; 16], rows: &mut [[i32; 16]]) {
        let mut t = [0i32; MAX_LANES];
        for (i, x) in v.iter().enumerate() {
            x.write(&mut t);
            for b in 0..Self::N {
                rows[b][i] = t[b];
            }
        }
    }
    /// As [`Lanes::gather_rows`].
    #[inline(always)]
    fn gather_rows(rows: &[[i32; 16]], pick: impl Fn(usize) -> usize) -> [Self; 16] {
        build!(Self::splat(0); 16, |i| Self::from_fn(|e| rows[pick(e)][i]))
    }
    /// The low byte of each lane of `v[k]` to `out[b*stride + k]`: lanes of bytes back to the
    /// `N` blocks they belong to.
    #[inline(always)]
    fn store_bytes(v: &[Self], out: &mut [u8], stride: usize) {
        let mut t = [0i32; MAX_LANES];
        for (k, x) in v.iter().enumerate() {
            x.write(&mut t);
            for b in 0..Self::N {
                out[b * stride + k] = t[b] as u8;
            }
        }
    }
}

/// The most lanes any [`Lanes`] type has.
pub const MAX_LANES: usize = 32;

/// `[f(0), f(1), …, f(n-1)]` with a plain loop. `std::array::from_fn` and `Option::map` take
/// closures that LLVM may leave out of line, and any intrinsic inside such a closure then
/// becomes a function call: every hot path builds its arrays with this instead.
macro_rules! build {
    ($init:expr; $n:expr, |$i:ident| $e:expr) => {{
        let mut out = [$init; $n];
        for $i in 0..$n {
            out[$i] = $e;
        }
        out
    }};
}
pub(crate) use build;

/// C's `(int8_t)` of an int: the low byte, sign-extended.
#[inline(always)]
pub fn as_i8<I: IntLanes>(v: I) -> I {
    v.shl(24).sar(24)
}

/// Which lanes of `m` are set.
#[inline(always)]
pub fn mask_lanes<V: Lanes>(m: V::Mask) -> [bool; MAX_LANES] {
    let v = lanes_of(V::select(m, V::splat(1.0), V::splat(0.0)));
    let mut out = [false; MAX_LANES];
    for b in 0..V::N {
        out[b] = v[b] != 0.0;
    }
    out
}

/// The lanes of `v` as an array (`[b]` = lane `b`, for `b < V::N`).
#[inline(always)]
pub fn lanes_of<V: Lanes>(v: V) -> [f32; MAX_LANES] {
    let mut a = [0f32; MAX_LANES];
    v.write(&mut a);
    a
}

/// Per lane, the values of `v`: `rows[b][i] = v[i].lane(b)` for `b < V::N`.
#[inline(always)]
pub fn rows_of<V: Lanes, const K: usize>(v: &[V; K]) -> [[f32; K]; MAX_LANES] {
    let mut rows = [[0f32; K]; MAX_LANES];
    let mut t = [0f32; MAX_LANES];
    for (i, x) in v.iter().enumerate() {
        x.write(&mut t);
        for b in 0..V::N {
            rows[b][i] = t[b];
        }
    }
    rows
}

/// Per lane, the codes of `v` as the `uint8_t`/`int8_t` arrays of ggml hold them (low 8 bits):
/// `rows[b][i] = v[i].lane(b) as u8`.
#[inline(always)]
pub fn code_rows<I: IntLanes, const K: usize>(v: &[I; K], n: usize) -> [[u8; K]; MAX_LANES] {
    let mut rows = [[0u8; K]; MAX_LANES];
    let mut t = [0i32; MAX_LANES];
    for (i, x) in v.iter().enumerate() {
        x.write(&mut t);
        for b in 0..n {
            rows[b][i] = t[b] as u8;
        }
    }
    rows
}

// ---------------------------------------------------------------- one lane: the reference

impl Lanes for f32 {
    const N: usize = 1;
    type Mask = bool;
    type Int = i32;

    #[inline(always)]
    fn splat(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> f32) -> Self {
        f(0)
    }
    #[inline(always)]
    fn lane(self, _: usize) -> f32 {
        self
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn round(self) -> Self {
        f32::round(self)
    }
    #[inline(always)]
    fn lt(self, o: Self) -> bool {
        self < o
    }
    #[inline(always)]
    fn gt(self, o: Self) -> bool {
        self > o
    }
    #[inline(always)]
    fn eq(self, o: Self) -> bool {
        self == o
    }
    #[inline(always)]
    fn ne(self, o: Self) -> bool {
        self != o
    }
    #[inline(always)]
    fn select(m: bool, a: Self, b: Self) -> Self {
        if m {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn nearest_int(self) -> i32 {
        nearest_int(self)
    }
    #[inline(always)]
    fn trunc(self) -> i32 {
        c_trunc(self)
    }
    #[inline(always)]
    fn any(m: bool) -> bool {
        m
    }
    #[inline(always)]
    fn mask_splat(b: bool) -> bool {
        b
    }
    #[inline(always)]
    fn write(self, out: &mut [f32]) {
        out[0] = self;
    }
}

impl IntLanes for i32 {
    const N: usize = 1;
    type Mask = bool;
    type Float = f32;
    #[inline(always)]
    fn splat(v: i32) -> Self {
        v
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> i32) -> Self {
        f(0)
    }
    #[inline(always)]
    fn lane(self, _: usize) -> i32 {
        self
    }
    #[inline(always)]
    fn imin(self, o: Self) -> Self {
        Ord::min(self, o)
    }
    #[inline(always)]
    fn imax(self, o: Self) -> Self {
        Ord::max(self, o)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn ne(self, o: Self) -> bool {
        self != o
    }
    #[inline(always)]
    fn select(m: bool, a: Self, b: Self) -> Self {
        if m {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn map(self, f: impl Fn(i32) -> i32) -> Self {
        f(self)
    }
    #[inline(always)]
    fn write(self, out: &mut [i32]) {
        out[0] = self;
    }
    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        self << n
    }
    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        ((self as u32) >> n) as i32
    }
    #[inline(always)]
    fn sar(self, n: u32) -> Self {
        self >> n
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        self & o
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        self | o
    }
}

// ---------------------------------------------------------------- N lanes

/// `N` f32 lanes.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct F32s<const N: usize>(pub [f32; N]);

/// `N` i32 lanes.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct I32s<const N: usize>(pub [i32; N]);

/// A per-lane condition: all ones (true) or zero, as vector compares produce them.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct Mask<const N: usize>(pub [i32; N]);

macro_rules! lanewise {
    ($n:ident, |$i:ident| $e:expr) => {{
        let mut out = [Default::default(); $n];
        for $i in 0..$n {
            out[$i] = $e;
        }
        out
    }};
}

macro_rules! binop {
    ($ty:ident, $trait:ident, $f:ident, $op:tt) => {
        impl<const N: usize> $trait for $ty<N> {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                $ty(lanewise!(N, |i| self.0[i] $op o.0[i]))
            }
        }
    };
}

binop!(F32s, Add, add, +);
binop!(F32s, Sub, sub, -);
binop!(F32s, Mul, mul, *);
binop!(F32s, Div, div, /);
binop!(I32s, Add, add, +);
binop!(I32s, Sub, sub, -);
binop!(Mask, BitAnd, bitand, &);
binop!(Mask, BitOr, bitor, |);

impl<const N: usize> Neg for F32s<N> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        F32s(lanewise!(N, |i| -self.0[i]))
    }
}

impl<const N: usize> Not for Mask<N> {
    type Output = Self;
    #[inline(always)]
    fn not(self) -> Self {
        Mask(lanewise!(N, |i| !self.0[i]))
    }
}

#[inline(always)]
fn m(b: bool) -> i32 {
    -(b as i32)
}

impl<const N: usize> Lanes for F32s<N> {
    const N: usize = N;
    type Mask = Mask<N>;
    type Int = I32s<N>;

    #[inline(always)]
    fn splat(v: f32) -> Self {
        F32s([v; N])
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> f32) -> Self {
        F32s(lanewise!(N, |i| f(i)))
    }
    #[inline(always)]
    fn lane(self, i: usize) -> f32 {
        self.0[i]
    }
    #[inline(always)]
    fn abs(self) -> Self {
        F32s(lanewise!(N, |i| self.0[i].abs()))
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        F32s(lanewise!(N, |i| self.0[i].sqrt()))
    }
    #[inline(always)]
    fn round(self) -> Self {
        F32s(lanewise!(N, |i| self.0[i].round()))
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Mask<N> {
        Mask(lanewise!(N, |i| m(self.0[i] < o.0[i])))
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Mask<N> {
        Mask(lanewise!(N, |i| m(self.0[i] > o.0[i])))
    }
    #[inline(always)]
    fn eq(self, o: Self) -> Mask<N> {
        Mask(lanewise!(N, |i| m(self.0[i] == o.0[i])))
    }
    #[inline(always)]
    fn ne(self, o: Self) -> Mask<N> {
        Mask(lanewise!(N, |i| m(self.0[i] != o.0[i])))
    }
    #[inline(always)]
    fn select(mk: Mask<N>, a: Self, b: Self) -> Self {
        // Bitwise, not `if`: LLVM turns a per-lane `if` between two loaded arrays into a
        // select of addresses and a gather.
        F32s(lanewise!(N, |i| f32::from_bits((a.0[i].to_bits() & mk.0[i] as u32) | (b.0[i].to_bits() & !mk.0[i] as u32))))
    }
    #[inline(always)]
    fn nearest_int(self) -> I32s<N> {
        I32s(lanewise!(N, |i| nearest_int(self.0[i])))
    }
    #[inline(always)]
    fn trunc(self) -> I32s<N> {
        I32s(lanewise!(N, |i| c_trunc(self.0[i])))
    }
    #[inline(always)]
    fn any(mk: Mask<N>) -> bool {
        mk.0.iter().fold(0, |a, &b| a | b) != 0
    }
    #[inline(always)]
    fn mask_splat(b: bool) -> Mask<N> {
        Mask([m(b); N])
    }
    #[inline(always)]
    fn write(self, out: &mut [f32]) {
        out[..N].copy_from_slice(&self.0);
    }
}

impl<const N: usize> IntLanes for I32s<N> {
    const N: usize = N;
    type Mask = Mask<N>;
    type Float = F32s<N>;
    #[inline(always)]
    fn splat(v: i32) -> Self {
        I32s([v; N])
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> i32) -> Self {
        I32s(lanewise!(N, |i| f(i)))
    }
    #[inline(always)]
    fn lane(self, i: usize) -> i32 {
        self.0[i]
    }
    #[inline(always)]
    fn imin(self, o: Self) -> Self {
        I32s(lanewise!(N, |i| Ord::min(self.0[i], o.0[i])))
    }
    #[inline(always)]
    fn imax(self, o: Self) -> Self {
        I32s(lanewise!(N, |i| Ord::max(self.0[i], o.0[i])))
    }
    #[inline(always)]
    fn to_f32(self) -> F32s<N> {
        F32s(lanewise!(N, |i| self.0[i] as f32))
    }
    #[inline(always)]
    fn ne(self, o: Self) -> Mask<N> {
        Mask(lanewise!(N, |i| m(self.0[i] != o.0[i])))
    }
    #[inline(always)]
    fn select(mk: Mask<N>, a: Self, b: Self) -> Self {
        I32s(lanewise!(N, |i| (a.0[i] & mk.0[i]) | (b.0[i] & !mk.0[i])))
    }
    #[inline(always)]
    fn map(self, f: impl Fn(i32) -> i32) -> Self {
        I32s(lanewise!(N, |i| f(self.0[i])))
    }
    #[inline(always)]
    fn write(self, out: &mut [i32]) {
        out[..N].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        I32s(lanewise!(N, |i| self.0[i] << n))
    }
    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        I32s(lanewise!(N, |i| ((self.0[i] as u32) >> n) as i32))
    }
    #[inline(always)]
    fn sar(self, n: u32) -> Self {
        I32s(lanewise!(N, |i| self.0[i] >> n))
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        I32s(lanewise!(N, |i| self.0[i] & o.0[i]))
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        I32s(lanewise!(N, |i| self.0[i] | o.0[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even_like_the_float_adder() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-0.49), 0);
        assert_eq!(nearest_int(4194303.0), 4194303);
    }

    #[test]
    fn c_trunc_gives_the_integer_indefinite_out_of_range() {
        assert_eq!(c_trunc(15.9), 15);
        assert_eq!(c_trunc(-0.9), 0);
        assert_eq!(c_trunc(f32::NAN), i32::MIN);
        assert_eq!(c_trunc(f32::INFINITY), i32::MIN);
        assert_eq!(c_trunc(3e9), i32::MIN);
        assert_eq!(c_trunc(-2147483648.0), i32::MIN);
        assert_eq!(c_trunc(f32::INFINITY) as i8, 0); // what ggml stores for an inf code
    }

    #[test]
    fn wide_lanes_equal_scalar_lanes() {
        let a = F32s([1.5f32, -2.0, 0.0, 7.25]);
        let b = F32s([0.5f32, 3.0, -0.0, 7.25]);
        let q = (a * b + a) / b;
        for i in 0..4 {
            let (x, y) = (a.0[i], b.0[i]);
            assert_eq!(q.0[i].to_bits(), ((x * y + x) / y).to_bits());
            assert_eq!(Lanes::lt(a, b).0[i] != 0, x < y);
        }
        assert_eq!(a.nearest_int().0, [2, -2, 0, 7]);
    }
}

// ---------------------------------------------------------------- K registers at once

/// `K` independent [`Lanes`] values side by side (`K * V::N` lanes). Algorithms whose groups
/// are one long chain of dependent operations (the coordinate descents) run `K` chains
/// interleaved this way, so the CPU has independent work while each chain waits on a division.
#[derive(Clone, Copy)]
pub struct Multi<V, const K: usize>(pub [V; K]);

/// An array of `K` results, each computed by `$e` (no closures: everything must inline into the
/// `#[target_feature]` function, or the intrinsics inside become calls).
macro_rules! each {
    ($init:expr, |$k:ident| $e:expr) => {{
        let mut out = $init;
        for $k in 0..out.len() {
            out[$k] = $e;
        }
        out
    }};
}

macro_rules! multi_binop {
    ($trait:ident, $f:ident, $bound:ident) => {
        impl<V: $bound<Output = V> + Copy, const K: usize> $trait for Multi<V, K> {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                Multi(each!(self.0, |k| $trait::$f(self.0[k], o.0[k])))
            }
        }
    };
}

multi_binop!(Add, add, Add);
multi_binop!(Sub, sub, Sub);
multi_binop!(Mul, mul, Mul);
multi_binop!(Div, div, Div);
multi_binop!(BitAnd, bitand, BitAnd);
multi_binop!(BitOr, bitor, BitOr);

impl<V: Neg<Output = V> + Copy, const K: usize> Neg for Multi<V, K> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        Multi(each!(self.0, |k| -self.0[k]))
    }
}

impl<V: Not<Output = V> + Copy, const K: usize> Not for Multi<V, K> {
    type Output = Self;
    #[inline(always)]
    fn not(self) -> Self {
        Multi(each!(self.0, |k| !self.0[k]))
    }
}

impl<V: Lanes, const K: usize> Lanes for Multi<V, K> {
    const N: usize = K * V::N;
    type Mask = Multi<V::Mask, K>;
    type Int = Multi<V::Int, K>;

    #[inline(always)]
    fn splat(v: f32) -> Self {
        Multi([V::splat(v); K])
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> f32) -> Self {
        Multi(each!([V::splat(0.0); K], |k| V::from_fn(|i| f(k * V::N + i))))
    }
    #[inline(always)]
    fn lane(self, i: usize) -> f32 {
        self.0[i / V::N].lane(i % V::N)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Multi(each!(self.0, |k| self.0[k].abs()))
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        Multi(each!(self.0, |k| self.0[k].sqrt()))
    }
    #[inline(always)]
    fn round(self) -> Self {
        Multi(each!(self.0, |k| self.0[k].round()))
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Self::Mask {
        Multi(each!([V::mask_splat(false); K], |k| self.0[k].lt(o.0[k])))
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Self::Mask {
        Multi(each!([V::mask_splat(false); K], |k| self.0[k].gt(o.0[k])))
    }
    #[inline(always)]
    fn eq(self, o: Self) -> Self::Mask {
        Multi(each!([V::mask_splat(false); K], |k| self.0[k].eq(o.0[k])))
    }
    #[inline(always)]
    fn ne(self, o: Self) -> Self::Mask {
        Multi(each!([V::mask_splat(false); K], |k| self.0[k].ne(o.0[k])))
    }
    #[inline(always)]
    fn select(m: Self::Mask, a: Self, b: Self) -> Self {
        Multi(each!(a.0, |k| V::select(m.0[k], a.0[k], b.0[k])))
    }
    #[inline(always)]
    fn nearest_int(self) -> Self::Int {
        Multi(each!([V::Int::splat(0); K], |k| self.0[k].nearest_int()))
    }
    #[inline(always)]
    fn trunc(self) -> Self::Int {
        Multi(each!([V::Int::splat(0); K], |k| self.0[k].trunc()))
    }
    #[inline(always)]
    fn any(m: Self::Mask) -> bool {
        m.0.iter().any(|&m| V::any(m))
    }
    #[inline(always)]
    fn mask_splat(b: bool) -> Self::Mask {
        Multi([V::mask_splat(b); K])
    }
    #[inline(always)]
    fn write(self, out: &mut [f32]) {
        for (k, v) in self.0.iter().enumerate() {
            v.write(&mut out[k * V::N..]);
        }
    }
    #[inline(always)]
    fn store_rows(v: &[Self; 16], rows: &mut [[f32; 16]]) {
        for k in 0..K {
            V::store_rows(&build!(V::splat(0.0); 16, |i| v[i].0[k]), &mut rows[k * V::N..]);
        }
    }
    #[inline(always)]
    fn gather_rows(rows: &[[f32; 16]], pick: impl Fn(usize) -> usize) -> [Self; 16] {
        let mut out = [Multi([V::splat(0.0); K]); 16];
        for k in 0..K {
            let part = V::gather_rows(rows, |e| pick(k * V::N + e));
            for i in 0..16 {
                out[i].0[k] = part[i];
            }
        }
        out
    }
    #[inline(always)]
    fn load_blocks(src: &[f32], qk: usize, out: &mut [Self]) {
        let mut part = [V::splat(0.0); super::QK_K];
        for k in 0..K {
            V::load_blocks(&src[k * V::N * qk..], qk, &mut part);
            for i in 0..qk {
                out[i].0[k] = part[i];
            }
        }
    }
}

impl<I: IntLanes, const K: usize> IntLanes for Multi<I, K> {
    const N: usize = K * I::N;
    type Mask = Multi<I::Mask, K>;
    type Float = Multi<I::Float, K>;
    #[inline(always)]
    fn splat(v: i32) -> Self {
        Multi([I::splat(v); K])
    }
    #[inline(always)]
    fn from_fn(mut f: impl FnMut(usize) -> i32) -> Self {
        Multi(each!([I::splat(0); K], |k| I::from_fn(|i| f(k * I::N + i))))
    }
    #[inline(always)]
    fn lane(self, i: usize) -> i32 {
        self.0[i / I::N].lane(i % I::N)
    }
    #[inline(always)]
    fn imin(self, o: Self) -> Self {
        Multi(each!(self.0, |k| self.0[k].imin(o.0[k])))
    }
    #[inline(always)]
    fn imax(self, o: Self) -> Self {
        Multi(each!(self.0, |k| self.0[k].imax(o.0[k])))
    }
    #[inline(always)]
    fn to_f32(self) -> Self::Float {
        Multi(each!([self.0[0].to_f32(); K], |k| self.0[k].to_f32()))
    }
    #[inline(always)]
    fn ne(self, o: Self) -> Self::Mask {
        Multi(each!([self.0[0].ne(o.0[0]); K], |k| self.0[k].ne(o.0[k])))
    }
    #[inline(always)]
    fn select(m: Self::Mask, a: Self, b: Self) -> Self {
        Multi(each!(a.0, |k| I::select(m.0[k], a.0[k], b.0[k])))
    }
    #[inline(always)]
    fn map(self, f: impl Fn(i32) -> i32) -> Self {
        Multi(each!(self.0, |k| self.0[k].map(&f)))
    }
    #[inline(always)]
    fn write(self, out: &mut [i32]) {
        for (k, v) in self.0.iter().enumerate() {
            v.write(&mut out[k * I::N..]);
        }
    }
    #[inline(always)]
    fn store_rows(v: &[Self; 16], rows: &mut [[i32; 16]]) {
        for k in 0..K {
            I::store_rows(&build!(I::splat(0); 16, |i| v[i].0[k]), &mut rows[k * I::N..]);
        }
    }
    #[inline(always)]
    fn gather_rows(rows: &[[i32; 16]], pick: impl Fn(usize) -> usize) -> [Self; 16] {
        let mut out = [Multi([I::splat(0); K]); 16];
        for k in 0..K {
            let part = I::gather_rows(rows, |e| pick(k * I::N + e));
            for i in 0..16 {
                out[i].0[k] = part[i];
            }
        }
        out
    }
    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        Multi(each!(self.0, |k| self.0[k].shl(n)))
    }
    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        Multi(each!(self.0, |k| self.0[k].shr(n)))
    }
    #[inline(always)]
    fn sar(self, n: u32) -> Self {
        Multi(each!(self.0, |k| self.0[k].sar(n)))
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        Multi(each!(self.0, |k| self.0[k].and(o.0[k])))
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        Multi(each!(self.0, |k| self.0[k].or(o.0[k])))
    }
}
