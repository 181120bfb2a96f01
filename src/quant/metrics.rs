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
        for (&a, &b) in original.iter().zip(reconstructed) {
            let (a, b) = (a as f64, b as f64);
            let e = a - b;
            self.max_abs_error = self.max_abs_error.max(e.abs());
            self.sum_sq_error += e * e;
            self.sum_sq_signal += a * a;
            self.sum_sq_recon += b * b;
            self.dot += a * b;
        }
        self.n += original.len().min(reconstructed.len());
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
