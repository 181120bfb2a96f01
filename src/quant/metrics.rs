//! Error measures between original and dequantized weights, accumulated in f64.

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorStats {
    pub n: usize,
    pub max_abs_error: f64,
    pub sum_sq_error: f64,
    pub sum_sq_signal: f64,
    pub dot: f64,
    pub sum_sq_recon: f64,
}

impl ErrorStats {
    pub fn add(&mut self, original: &[f32], reconstructed: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was detected just above.
            return unsafe { self.add_avx2(original, reconstructed) };
        }
        self.add_lanes(original, reconstructed)
    }

    /// The same sums in 256-bit registers (four f64 per operation instead of two).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn add_avx2(&mut self, original: &[f32], reconstructed: &[f32]) {
        self.add_lanes(original, reconstructed)
    }

    #[inline(always)]
    fn add_lanes(&mut self, original: &[f32], reconstructed: &[f32]) {
        // Four independent f64 accumulators per sum (one register each), so the loop vectorizes:
        // a single running sum is a chain of dependent additions. The split is fixed, so the
        // results do not depend on the machine.
        const L: usize = 4;
        let n = original.len().min(reconstructed.len());
        let (a, b) = (&original[..n], &reconstructed[..n]);
        let (mut max, mut e2, mut a2, mut b2, mut ab) = ([0f64; L], [0f64; L], [0f64; L], [0f64; L], [0f64; L]);
        let mut add = |k: usize, x: f32, y: f32| {
            let (x, y) = (x as f64, y as f64);
            let e = x - y;
            // finite inputs: a plain compare, which vectorizes (f64::max also handles NaN)
            max[k] = if e.abs() > max[k] { e.abs() } else { max[k] };
            e2[k] += e * e;
            a2[k] += x * x;
            b2[k] += y * y;
            ab[k] += x * y;
        };
        for (xa, xb) in a.chunks_exact(L).zip(b.chunks_exact(L)) {
            for k in 0..L {
                add(k, xa[k], xb[k]);
            }
        }
        for (&x, &y) in a.chunks_exact(L).remainder().iter().zip(b.chunks_exact(L).remainder()) {
            add(0, x, y);
        }
        self.max_abs_error = max.iter().fold(self.max_abs_error, |m, &v| m.max(v));
        self.sum_sq_error += e2.iter().sum::<f64>();
        self.sum_sq_signal += a2.iter().sum::<f64>();
        self.sum_sq_recon += b2.iter().sum::<f64>();
        self.dot += ab.iter().sum::<f64>();
        self.n += n;
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
