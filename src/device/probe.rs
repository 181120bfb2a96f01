//! The measurement behind `device="auto"`: both backends quantize the same probe tensor, and
//! the faster one wins. Taken once per process (see [`super::auto`]).
//!
//! Min/max quantization is memory-bound, so which path is faster depends on the machine, not
//! on the weights: a many-core CPU beats a discrete GPU fed over PCIe, a software adapter
//! never wins, an integrated GPU may. Measuring settles it where a rule of thumb would guess.

use std::fmt;
use std::time::Instant;

use crate::backend::{Backend, QuantJob};
use crate::error::Result;
use crate::quant::{BitWidth, GroupLayout, Method, QuantConfig};

/// 4 Mi f32 (16 MiB): big enough that both paths run at their streaming rate (the GPU's fixed
/// cost per call is a small part of it), small enough that a round of both stays in a few ms
/// on the hardware this is for. The search costs about 8x more per element, so its probe is a
/// quarter of that (2 ms a side on an H200 machine's 16 cores).
fn probe_elements(method: Method) -> usize {
    match method {
        Method::MinMax => 1 << 22,
        Method::Lsq => 1 << 20,
    }
}
/// Timed rounds stop once this much time was spent (after at least one).
const BUDGET_S: f64 = 0.05;
const MAX_ROUNDS: usize = 3;
/// The GPU must win by this factor: a tie goes to the CPU, which needs no device.
const GPU_MARGIN: f64 = 1.1;

/// Best times of each backend on the probe tensor.
#[derive(Clone, Debug)]
pub struct Race {
    pub cpu_s: f64,
    pub gpu_s: f64,
    pub bytes: usize,
    pub gpu_name: String,
    pub method: Method,
}

impl Race {
    pub fn gpu_faster(&self) -> bool {
        self.gpu_s * GPU_MARGIN < self.cpu_s
    }

    fn gbs(&self, s: f64) -> f64 {
        self.bytes as f64 / s / 1e9
    }
}

impl fmt::Display for Race {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {:.1} GB/s, {} {:.1} GB/s, on a {} MiB probe (4-bit, group 128, {})",
            self.gbs(self.cpu_s),
            self.gpu_name,
            self.gbs(self.gpu_s),
            self.bytes >> 20,
            self.method.name()
        )
    }
}

struct Probe {
    weights: Vec<f32>,
    layout: GroupLayout,
    packed: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
}

impl Probe {
    fn new(n: usize, method: Method) -> Self {
        // Any finite values do: the work per element does not depend on them.
        let weights: Vec<f32> = (0..n).map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) & 0xffff) as f32 / 65536.0 - 0.5).collect();
        let layout = GroupLayout::new(n / 4096, 4096, QuantConfig::new(BitWidth::B4, 128).expect("a valid config").with_method(method));
        Self { packed: vec![0; layout.packed_len()], scales: vec![0.0; layout.n_groups()], zero_points: vec![0.0; layout.n_groups()], weights, layout }
    }

    fn time(&mut self, b: &dyn Backend) -> Result<f64> {
        let t = Instant::now();
        b.quantize(&mut [QuantJob {
            name: "auto probe",
            weights: &self.weights,
            layout: self.layout,
            packed: &mut self.packed,
            scales: &mut self.scales,
            zero_points: &mut self.zero_points,
        }])?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// Times `cpu` and `gpu` on the probe tensor: one untimed warm-up each (buffers, page faults,
/// thread wake-up), then alternating timed rounds, keeping each side's best.
pub fn race(cpu: &dyn Backend, gpu: &dyn Backend, method: Method) -> Result<Race> {
    race_on(cpu, gpu, probe_elements(method), method)
}

/// [`race`] on a probe of `n` elements (a multiple of 4096).
pub fn race_on(cpu: &dyn Backend, gpu: &dyn Backend, n: usize, method: Method) -> Result<Race> {
    let (mut c, mut g) = (Probe::new(n, method), Probe::new(n, method));
    c.time(cpu)?;
    g.time(gpu)?;
    let start = Instant::now();
    let (mut cpu_s, mut gpu_s) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..MAX_ROUNDS {
        cpu_s = cpu_s.min(c.time(cpu)?);
        gpu_s = gpu_s.min(g.time(gpu)?);
        if start.elapsed().as_secs_f64() > BUDGET_S {
            break;
        }
    }
    Ok(Race { cpu_s, gpu_s, bytes: n * 4, gpu_name: gpu.name(), method })
}
