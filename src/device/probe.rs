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
    /// What was quantized ("4-bit, group 128, minmax", "q8_0, rows of 4096").
    pub what: String,
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
            "cpu {:.1} GB/s, {} {:.1} GB/s, on a {} MiB probe ({})",
            self.gbs(self.cpu_s),
            self.gpu_name,
            self.gbs(self.gpu_s),
            self.bytes >> 20,
            self.what
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
    let (cpu_s, gpu_s) = rounds(|| c.time(cpu), || g.time(gpu))?;
    Ok(Race { cpu_s, gpu_s, bytes: n * 4, gpu_name: gpu.name(), what: format!("4-bit, group 128, {}", method.name()) })
}

/// One untimed warm-up of each side, then alternating timed rounds within the budget; the
/// best time of each.
fn rounds(mut cpu: impl FnMut() -> Result<f64>, mut gpu: impl FnMut() -> Result<f64>) -> Result<(f64, f64)> {
    cpu()?;
    gpu()?;
    let start = Instant::now();
    let (mut cpu_s, mut gpu_s) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..MAX_ROUNDS {
        cpu_s = cpu_s.min(cpu()?);
        gpu_s = gpu_s.min(gpu()?);
        if start.elapsed().as_secs_f64() > BUDGET_S {
            break;
        }
    }
    Ok((cpu_s, gpu_s))
}

/// Elements of the probe for ggml's type `ty`: 4 Mi for the 32-element types (as memory-bound
/// as min/max), 256 Ki for the K types, whose searches cost 10-70x more per element.
pub(super) fn ggml_probe_elements(ty: crate::quant::ggml::GgmlType) -> usize {
    if ty.block().0 == 32 {
        1 << 22
    } else {
        1 << 18
    }
}

/// The CPU encoders against the GPU's kernel for ggml's type `ty`, on rows of 4096, as
/// [`race`]; with an importance matrix (a made-up one: the weighted searches cost more than
/// the plain ones, on both sides) if `imatrix`.
pub fn race_ggml(gpu: &crate::gpu::GpuBackend, ty: crate::quant::ggml::GgmlType, imatrix: bool) -> Result<Race> {
    use crate::quant::ggml;
    let n = ggml_probe_elements(ty);
    let x: Vec<f32> = (0..n).map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) & 0xffff) as f32 / 65536.0 - 0.5).collect();
    let w: Vec<f32> = (0..4096).map(|i| 0.5 + ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let w = imatrix.then_some(&w[..]);
    let n_bytes = ggml::check_rows(ty, n, 4096, w)?;
    let (mut on_cpu, mut on_gpu) = (vec![0u8; n_bytes], vec![0u8; n_bytes]);
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let (cpu_s, gpu_s) = rounds(
        || timed(&mut || ggml::quantize(ty, &x, 4096, w, &mut on_cpu)),
        || timed(&mut || gpu.quantize_ggml(ty, &x, 4096, w, &mut on_gpu).map(|_| ())),
    )?;
    let with = if imatrix { " with an importance matrix" } else { "" };
    Ok(Race { cpu_s, gpu_s, bytes: n * 4, gpu_name: crate::backend::Backend::name(gpu), what: format!("{}{with}, rows of 4096", ty.name().to_ascii_lowercase()) })
}
