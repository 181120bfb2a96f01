//! Error measures between original and dequantized weights, accumulated in f64.
//!
//! One definition, whatever computes it: a tensor is measured in chunks of whole rows
//! ([`rows_per_chunk`]); in each chunk, element `i` goes to lane `i mod 4` of four running
//! sums (the last `n mod 4` elements to lane 0), the lanes are added up when the chunk ends, and
//! the chunks are merged in order. The fused CPU kernels feed [`Lanes`] a group at a time while
//! they encode; the plain path decodes a chunk and calls [`ErrorStats::add`]. Both give the same
//! bits, on any number of threads.

/// Elements per measured chunk (whole rows; at least one row).
const CHUNK_ELEMENTS: usize = 1 << 20;

/// Rows of `row_len` elements in one measured chunk.
pub fn rows_per_chunk(row_len: usize) -> usize {
    (CHUNK_ELEMENTS / row_len.max(1)).max(1)
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorStats {
    pub n: usize,
    pub max_abs_error: f64,
    pub sum_sq_error: f64,
    pub sum_sq_signal: f64,
    pub dot: f64,
    pub sum_sq_recon: f64,
}

/// The four-lane running sums of one measured chunk, fed in pieces of any length.
///
/// Four independent f64 accumulators per sum, one AVX2 register each: a single running sum
/// would be a chain of dependent additions. The split is fixed, so the results do not depend on
/// the machine or on how the chunk was cut into pieces.
#[derive(Clone, Copy, Debug)]
pub struct Lanes {
    max: [f64; 4],
    e2: [f64; 4],
    a2: [f64; 4],
    b2: [f64; 4],
    ab: [f64; 4],
    /// Elements fed so far.
    pos: usize,
    /// Where lane 0 starts taking every element (the chunk's length rounded down to 4).
    n4: usize,
}

impl Lanes {
    /// For a chunk of `n` elements.
    pub fn new(n: usize) -> Self {
        Self { max: [0.0; 4], e2: [0.0; 4], a2: [0.0; 4], b2: [0.0; 4], ab: [0.0; 4], pos: 0, n4: n - n % 4 }
    }

    #[inline(always)]
    fn one(&mut self, k: usize, x: f32, y: f32) {
        let (x, y) = (x as f64, y as f64);
        let e = x - y;
        // finite inputs: a plain compare (f64::max also handles NaN); `_mm256_max_pd` is the same
        self.max[k] = if e.abs() > self.max[k] { e.abs() } else { self.max[k] };
        self.e2[k] += e * e;
        self.a2[k] += x * x;
        self.b2[k] += y * y;
        self.ab[k] += x * y;
    }

    /// Feeds the next `original.len()` elements of the chunk and their reconstruction.
    #[inline(always)]
    pub fn push(&mut self, original: &[f32], reconstructed: &[f32]) {
        self.push_with(original, reconstructed, false)
    }

    /// [`Lanes::push`] with AVX2 registers, for callers compiled for AVX2 (it inlines there).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    pub fn push_avx2(&mut self, original: &[f32], reconstructed: &[f32]) {
        self.push_with(original, reconstructed, true)
    }

    /// [`Lanes::push`] with AVX2 where the running CPU has it.
    pub fn feed(&mut self, original: &[f32], reconstructed: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was detected just above.
            return unsafe { self.push_avx2(original, reconstructed) };
        }
        self.push(original, reconstructed)
    }

    /// `with_avx2` is only true from [`Lanes::push_avx2`], which runs on CPUs with AVX2.
    #[inline(always)]
    fn push_with(&mut self, original: &[f32], reconstructed: &[f32], with_avx2: bool) {
        let len = original.len().min(reconstructed.len());
        let mut i = 0;
        while i < len {
            if self.pos.is_multiple_of(4) && self.pos + 4 <= self.n4 && i + 4 <= len {
                let m = (len - i).min(self.n4 - self.pos) / 4 * 4;
                let (a, b) = (&original[i..i + m], &reconstructed[i..i + m]);
                #[cfg(target_arch = "x86_64")]
                if with_avx2 {
                    // SAFETY: only `push_avx2` passes true, and it runs with AVX2.
                    unsafe { self.block_avx2(a, b) };
                    i += m;
                    self.pos += m;
                    continue;
                }
                let _ = with_avx2;
                for (xa, xb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
                    for k in 0..4 {
                        self.one(k, xa[k], xb[k]);
                    }
                }
                i += m;
                self.pos += m;
            } else {
                let k = if self.pos < self.n4 { self.pos % 4 } else { 0 };
                self.one(k, original[i], reconstructed[i]);
                i += 1;
                self.pos += 1;
            }
        }
    }

    /// Whole quads, lane k of each register holding the sums of lane k. Multiplies and adds
    /// stay separate (no FMA) so each lane rounds as [`Lanes::one`] does.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn block_avx2(&mut self, a: &[f32], b: &[f32]) {
        use std::arch::x86_64::*;
        let load = |s: &[f64; 4]| _mm256_loadu_pd(s.as_ptr());
        let (mut max, mut e2, mut a2, mut b2, mut ab) = (load(&self.max), load(&self.e2), load(&self.a2), load(&self.b2), load(&self.ab));
        let abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(i64::MAX));
        for (xa, xb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
            let x = _mm256_cvtps_pd(_mm_loadu_ps(xa.as_ptr()));
            let y = _mm256_cvtps_pd(_mm_loadu_ps(xb.as_ptr()));
            let e = _mm256_sub_pd(x, y);
            max = _mm256_max_pd(_mm256_and_pd(e, abs_mask), max);
            e2 = _mm256_add_pd(e2, _mm256_mul_pd(e, e));
            a2 = _mm256_add_pd(a2, _mm256_mul_pd(x, x));
            b2 = _mm256_add_pd(b2, _mm256_mul_pd(y, y));
            ab = _mm256_add_pd(ab, _mm256_mul_pd(x, y));
        }
        let store = |s: &mut [f64; 4], v| _mm256_storeu_pd(s.as_mut_ptr(), v);
        store(&mut self.max, max);
        store(&mut self.e2, e2);
        store(&mut self.a2, a2);
        store(&mut self.b2, b2);
        store(&mut self.ab, ab);
    }

    /// The chunk's sums, added up lane by lane.
    pub fn finish(self) -> ErrorStats {
        let mut s = ErrorStats::default();
        s.max_abs_error = self.max.iter().fold(s.max_abs_error, |m, &v| m.max(v));
        s.sum_sq_error += self.e2.iter().sum::<f64>();
        s.sum_sq_signal += self.a2.iter().sum::<f64>();
        s.sum_sq_recon += self.b2.iter().sum::<f64>();
        s.dot += self.ab.iter().sum::<f64>();
        s.n = self.pos;
        s
    }
}

impl ErrorStats {
    /// Adds one chunk (see the module's definition).
    pub fn add(&mut self, original: &[f32], reconstructed: &[f32]) {
        let mut lanes = Lanes::new(original.len().min(reconstructed.len()));
        lanes.feed(original, reconstructed);
        *self = self.merge(lanes.finish());
    }

    pub fn merge(mut self, other: Self) -> Self {
        self.n += other.n;
        self.max_abs_error = self.max_abs_error.max(other.max_abs_error);
        self.sum_sq_error += other.sum_sq_error;
        self.sum_sq_signal += other.sum_sq_signal;
        self.sum_sq_recon += other.sum_sq_recon;
        self.dot += other.dot;
        self
    }

    pub fn mse(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.sum_sq_error / self.n as f64 }
    }

    /// MSE relative to the mean square of the original (0 when the original is all zeros and
    /// reconstructed exactly).
    pub fn relative_mse(&self) -> f64 {
        ratio(self.sum_sq_error, self.sum_sq_signal)
    }

    /// Cosine similarity; 1 when both are all zeros.
    pub fn cosine(&self) -> f64 {
        let norm = (self.sum_sq_signal * self.sum_sq_recon).sqrt();
        if norm == 0.0 {
            if self.sum_sq_signal == self.sum_sq_recon { 1.0 } else { 0.0 }
        } else {
            self.dot / norm
        }
    }

    /// Signal-to-noise ratio in dB (infinite for an exact reconstruction).
    pub fn snr_db(&self) -> f64 {
        10.0 * (1.0 / self.relative_mse()).log10()
    }
}


fn ratio(num: f64, den: f64) -> f64 {
    match (num == 0.0, den == 0.0) {
        (true, _) => 0.0,
        (false, true) => f64::INFINITY,
        (false, false) => num / den,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_copy_is_perfect() {
        let mut s = ErrorStats::default();
        s.add(&[1.0, -2.0, 3.0], &[1.0, -2.0, 3.0]);
        assert_eq!(s.cosine(), 1.0);
        assert_eq!(s.relative_mse(), 0.0);
        assert_eq!(s.snr_db(), f64::INFINITY);
    }

    /// The sums as a plain sequential loop, written apart from [`Lanes`]: lane `i % 4` for the
    /// first `n - n % 4` elements, lane 0 after.
    fn plain(a: &[f32], b: &[f32]) -> ErrorStats {
        let n4 = a.len() - a.len() % 4;
        let mut lanes = [[0f64; 5]; 4];
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let l = &mut lanes[if i < n4 { i % 4 } else { 0 }];
            let (x, y) = (x as f64, y as f64);
            let e = x - y;
            l[0] = if e.abs() > l[0] { e.abs() } else { l[0] };
            l[1] += e * e;
            l[2] += x * x;
            l[3] += y * y;
            l[4] += x * y;
        }
        let sum = |j: usize| lanes.iter().map(|l| l[j]).sum::<f64>();
        ErrorStats {
            n: a.len(),
            max_abs_error: lanes.iter().fold(0.0, |m, l| m.max(l[0])),
            sum_sq_error: sum(1),
            sum_sq_signal: sum(2),
            sum_sq_recon: sum(3),
            dot: sum(4),
        }
    }

    fn bits(s: &ErrorStats) -> [u64; 6] {
        [s.n as u64, s.max_abs_error.to_bits(), s.sum_sq_error.to_bits(), s.sum_sq_signal.to_bits(), s.dot.to_bits(), s.sum_sq_recon.to_bits()]
    }

    proptest::proptest! {
        /// Fed in pieces of any length, by the portable or the AVX2 lanes, a chunk sums to the
        /// same bits as the plain loop.
        #[test]
        fn pieces_and_kernels_agree(
            values in proptest::collection::vec((-1e3f32..1e3, -1e3f32..1e3), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..8),
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = values.into_iter().unzip();
            let want = plain(&a, &b);
            let mut whole = ErrorStats::default();
            whole.add(&a, &b);
            proptest::prop_assert_eq!(bits(&whole), bits(&want));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(a.len())).chain([0, a.len()]).collect();
            cuts.sort_unstable();
            for simd in [false, cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx2")] {
                let mut lanes = Lanes::new(a.len());
                for w in cuts.windows(2) {
                    let (x, y) = (&a[w[0]..w[1]], &b[w[0]..w[1]]);
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        // SAFETY: `simd` is only true where AVX2 was detected.
                        unsafe { lanes.push_avx2(x, y) };
                        continue;
                    }
                    lanes.push(x, y);
                }
                proptest::prop_assert_eq!(bits(&lanes.finish()), bits(&want));
            }
        }
    }

    #[test]
    fn known_error() {
        let mut s = ErrorStats::default();
        s.add(&[3.0, 4.0], &[3.0, 3.0]);
        assert_eq!(s.max_abs_error, 1.0);
        assert_eq!(s.mse(), 0.5);
        assert_eq!(s.relative_mse(), 1.0 / 25.0);
        assert!((s.snr_db() - 13.979).abs() < 1e-3);
        assert!((s.cosine() - 21.0 / (5.0 * 18f64.sqrt())).abs() < 1e-12);
    }
}
