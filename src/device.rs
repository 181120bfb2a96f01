//! Choosing a backend from the `device` option ("cpu", "gpu", "auto").

#[cfg(feature = "gpu")]
pub mod probe;

use std::str::FromStr;

use crate::backend::{Backend, DequantJob, MeasuredJob, QuantJob};
use crate::cpu::CpuBackend;
use crate::error::{QuantError, Result};
#[cfg(feature = "gpu")]
use crate::gpu::GpuBackend;
use crate::quant::ggml::GgmlType;
use crate::quant::metrics::ErrorStats;
use crate::quant::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    Cpu,
    Gpu,
    #[default]
    Auto,
}

impl FromStr for Device {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            "auto" => Ok(Self::Auto),
            _ => Err(QuantError::value(format!("Invalid device: '{s}'. Must be 'cpu', 'gpu', or 'auto'"))),
        }
    }
}

static CPU: CpuBackend = CpuBackend::new();

/// The backend for `device`.
///
/// * "cpu": the CPU backend; never initializes wgpu.
/// * "gpu": the best wgpu adapter, software adapters (lavapipe/llvmpipe) included; without any
///   adapter, a [`QuantError::Device`] that lists what was found.
/// * "auto": whichever of the two is faster on this machine for each method, decided once per
///   process and method by [`auto_for`] (a short measurement of both on the same probe
///   tensor): min/max is memory-bound and the search (lsq) compute-bound, so they can land on
///   different sides. A GPU that wins the measurement still hands small calls, and any call its
///   device fails or refuses, to the CPU backend.
///
/// The GPU instance, device and pipelines are created once per process and reused (again
/// after a lost device). Both backends produce the same bytes. In a child forked after its
/// parent started the GPU, "auto" is the CPU and "gpu" an error (see
/// [`crate::gpu::inherited_from_parent`]).
pub fn backend(device: Device) -> Result<&'static dyn Backend> {
    match device {
        Device::Cpu => Ok(&CPU),
        Device::Gpu => gpu(),
        Device::Auto => Ok(&AUTO_BACKEND),
    }
}

/// What `device` resolves to, for people: the backend's name and, for "auto", why it was
/// chosen ("cpu (rayon, 16 threads, avx512) [auto: measured faster: cpu 41.2 GB/s, gpu …]"),
/// with the search's own decision once one was made ("…; lsq: gpu (…): measured faster: …").
pub fn describe(device: Device) -> Result<String> {
    let b = backend(device)?;
    Ok(match device {
        Device::Auto => {
            let minmax = auto();
            let mut text = format!("{} [auto: {}", minmax.backend.name(), minmax.reason);
            if let Some(lsq) = decided(Method::Lsq) {
                text += &format!("; lsq: {}: {}", lsq.backend.name(), lsq.reason);
            }
            for (ty, imatrix, c) in decided_ggml() {
                let with = if imatrix { " with an importance matrix" } else { "" };
                text += &format!("; {}{with}: {}: {}", ty.name().to_ascii_lowercase(), if c.gpu { "gpu" } else { "cpu" }, c.reason);
            }
            text + "]"
        }
        _ => b.name(),
    })
}

/// The decision of "auto" for this process.
pub struct AutoChoice {
    pub backend: &'static dyn Backend,
    /// Why, in words: what was found or measured.
    pub reason: String,
    /// Whether the GPU was chosen.
    pub gpu: bool,
}

type Decision = std::sync::OnceLock<(u32, AutoChoice)>;

/// Per method (`Method as usize`): the decision and the process that made it.
static AUTO: [Decision; 2] = [Decision::new(), Decision::new()];
/// The same, made again in a forked child.
static CHILD: [std::sync::OnceLock<AutoChoice>; 2] = [std::sync::OnceLock::new(), std::sync::OnceLock::new()];

/// "auto"'s choice for min/max quantization (and dequantization): [`auto_for`] `MinMax`.
pub fn auto() -> &'static AutoChoice {
    auto_for(Method::MinMax)
}

/// The choice of "auto" for `method`, made on first use and cached for the process (a forked
/// child that inherited a GPU choice decides again: it cannot use its parent's GPU).
pub fn auto_for(method: Method) -> &'static AutoChoice {
    let (pid, choice) = AUTO[method as usize].get_or_init(|| (std::process::id(), decide(method)));
    if *pid == std::process::id() {
        return choice;
    }
    // A forked child: `decide` sees the parent's GPU state and picks the CPU when it must.
    CHILD[method as usize].get_or_init(|| decide(method))
}

/// The choice for `method` if this process has made it already.
fn decided(method: Method) -> Option<&'static AutoChoice> {
    match AUTO[method as usize].get() {
        Some((pid, choice)) if *pid == std::process::id() => Some(choice),
        Some(_) => CHILD[method as usize].get(),
        None => None,
    }
}

/// "auto" as a backend: each run of consecutive jobs with the same method goes to that
/// method's choice, in order (an error stops the call, as in every backend).
struct Auto;

static AUTO_BACKEND: Auto = Auto;

/// Where "auto" runs `elements` values of `method`: a call too small for the GPU to pay
/// ([`AutoGpu`] would hand it to the CPU anyway) goes to the CPU without making the decision,
/// so small work never starts a GPU (on a machine with only lavapipe, starting it took
/// 40–130 ms).
fn auto_backend(method: Method, elements: usize) -> &'static dyn Backend {
    #[cfg(feature = "gpu")]
    if elements < AUTO_GPU_MIN_ELEMENTS {
        return &CPU;
    }
    let _ = elements;
    auto_for(method).backend
}

impl Backend for Auto {
    fn name(&self) -> String {
        auto().backend.name()
    }

    fn quantize(&self, jobs: &mut [QuantJob<'_>]) -> Result<()> {
        let mut rest = jobs;
        while let Some(first) = rest.first() {
            let method = first.layout.method;
            let n = rest.iter().take_while(|j| j.layout.method == method).count();
            let (run, tail) = rest.split_at_mut(n);
            auto_backend(method, run.iter().map(|j| j.layout.n_elements()).sum()).quantize(run)?;
            rest = tail;
        }
        Ok(())
    }

    fn dequantize(&self, jobs: &mut [DequantJob<'_>]) -> Result<()> {
        auto_backend(Method::MinMax, jobs.iter().map(|j| j.layout.n_elements()).sum()).dequantize(jobs)
    }

    /// The chosen backend's own fused pass (the CPU's reads the tensor once; the trait's plain
    /// way converts it to f32, quantizes, then decodes and compares: on this machine the
    /// converter ran 2–4× slower with it).
    fn quantize_measured(&self, job: &mut MeasuredJob<'_>) -> Result<ErrorStats> {
        auto_backend(job.layout.method, job.layout.n_elements()).quantize_measured(job)
    }
}

/// The GPU "auto" may measure: `Ok(Some(gpu))` for a hardware adapter, `Ok(None)` for a
/// software one allowed by `ARROW_QUANT_ALLOW_SOFTWARE_GPU=1` (taken without a measurement,
/// for tests), `Err(why not)` otherwise.
#[cfg(feature = "gpu")]
fn gpu_candidate() -> std::result::Result<Option<&'static GpuBackend>, String> {
    use crate::gpu::AutoCandidate;
    if crate::gpu::inherited_from_parent() {
        return Err("this process was forked after its parent started the GPU".into());
    }
    let software = match crate::gpu::auto_candidate() {
        AutoCandidate::None(why) => return Err(why),
        AutoCandidate::AllowedSoftware => true,
        AutoCandidate::Hardware => false,
    };
    let gpu = GpuBackend::shared().map_err(|e| format!("the GPU could not be started: {e}"))?;
    Ok((!software).then_some(gpu))
}

#[cfg(feature = "gpu")]
fn decide(method: Method) -> AutoChoice {
    let cpu = |reason: String| AutoChoice { backend: &CPU, reason, gpu: false };
    let gpu = match gpu_candidate() {
        Ok(Some(g)) => g,
        Ok(None) => return AutoChoice { backend: &AUTO_GPU, reason: format!("software adapter allowed by {}=1", crate::gpu::ALLOW_SOFTWARE_ENV), gpu: true },
        Err(why) => return cpu(why),
    };
    match probe::race(&CPU, gpu, method) {
        Ok(r) if r.gpu_faster() => AutoChoice { backend: &AUTO_GPU, reason: format!("measured faster: {r}"), gpu: true },
        Ok(r) => cpu(format!("measured faster: {r}")),
        Err(e) => cpu(format!("the GPU failed its measurement: {e}")),
    }
}

#[cfg(not(feature = "gpu"))]
fn decide(_: Method) -> AutoChoice {
    AutoChoice { backend: &CPU, reason: "built without the 'gpu' feature".into(), gpu: false }
}

/// The GPU under "auto": calls too small to amortize a GPU round trip, calls the device
/// fails (a lost device, an out-of-memory) and work it refuses (`lsq` on an adapter that flushes
/// subnormals), run on the CPU backend instead, with the same bytes. The device itself is re-created by the next call ([`GpuBackend::shared`]).
#[cfg(feature = "gpu")]
struct AutoGpu;

#[cfg(feature = "gpu")]
static AUTO_GPU: AutoGpu = AutoGpu;

/// Below this many elements in one call, "auto" keeps the work on the CPU even when the GPU
/// measured faster: the GPU's fixed cost per call (submit, wait, map) is then most of its time.
#[cfg(feature = "gpu")]
const AUTO_GPU_MIN_ELEMENTS: usize = 1 << 20;

#[cfg(feature = "gpu")]
impl AutoGpu {
    fn run<J, T>(&self, jobs: &mut [J], elements: impl Fn(&J) -> usize, f: impl Fn(&dyn Backend, &mut [J]) -> Result<T>) -> Result<T> {
        if jobs.iter().map(elements).sum::<usize>() < AUTO_GPU_MIN_ELEMENTS {
            return f(&CPU, jobs);
        }
        match GpuBackend::shared().and_then(|g| f(g, jobs)) {
            Err(QuantError::Device(_) | QuantError::Unsupported(_)) => f(&CPU, jobs),
            r => r,
        }
    }
}

#[cfg(feature = "gpu")]
impl Backend for AutoGpu {
    fn name(&self) -> String {
        GpuBackend::shared().map(|g| g.name()).unwrap_or_else(|e| format!("gpu (unavailable now: {e}; the CPU runs its calls)"))
    }

    fn quantize(&self, jobs: &mut [QuantJob<'_>]) -> Result<()> {
        self.run(jobs, |j| j.layout.n_elements(), |b, j| b.quantize(j))
    }

    fn dequantize(&self, jobs: &mut [DequantJob<'_>]) -> Result<()> {
        self.run(jobs, |j| j.layout.n_elements(), |b, j| b.dequantize(j))
    }

    fn quantize_measured(&self, job: &mut MeasuredJob<'_>) -> Result<ErrorStats> {
        self.run(std::slice::from_mut(job), |j| j.layout.n_elements(), |b, j| b.quantize_measured(&mut j[0]))
    }
}

/// The GPU as "auto" uses it once it chose the GPU (small calls and failed calls on the CPU):
/// for tests of the fallback.
#[cfg(feature = "gpu")]
#[doc(hidden)]
pub fn gpu_with_fallback() -> &'static dyn Backend {
    &AUTO_GPU
}

#[cfg(feature = "gpu")]
fn gpu() -> Result<&'static dyn Backend> {
    if crate::gpu::inherited_from_parent() {
        return Err(QuantError::Device(
            "device='gpu': this process was forked after its parent had started the GPU, and a forked child cannot use \
             the parent's GPU context; use device='cpu' (or 'auto') in the child, or start workers with the 'spawn' method"
                .into(),
        ));
    }
    Ok(GpuBackend::shared()?)
}

#[cfg(not(feature = "gpu"))]
fn gpu() -> Result<&'static dyn Backend> {
    Err(QuantError::Device("device='gpu': this build of arrow_quant_v2 has no GPU support (built without the 'gpu' feature)".into()))
}

/// Where ggml's block types (GGUF tensor types) are encoded for a `device` option: the same
/// bytes ([`crate::quant::ggml::quantize`]'s, which are ggml's) wherever they run.
///
/// * "cpu": the CPU encoders.
/// * "gpu": the GPU for the types it has a kernel for ([`GgmlDevice::has_kernel`]); any other
///   type is an `Unsupported` error from [`GgmlDevice::quantize`] (the model converter instead
///   encodes such tensors on the CPU, and says so).
/// * "auto": per type, whichever of the two measured faster on this machine ([`auto_ggml`]),
///   with the CPU taking tensors smaller than the measurement ([`auto_ggml_min_elements`]) and
///   anything the GPU fails or refuses.
#[derive(Clone, Copy)]
pub struct GgmlDevice {
    device: Device,
}

impl GgmlDevice {
    /// Checks that "gpu" can start the GPU; "auto" starts nothing until a type asks.
    pub fn new(device: Device) -> Result<Self> {
        if device == Device::Gpu {
            gpu()?;
        }
        Ok(Self { device })
    }

    /// The CPU encoders.
    pub fn cpu() -> Self {
        Self { device: Device::Cpu }
    }

    /// Whether a GPU kernel encodes `ty` (with an importance matrix and without), on any
    /// adapter that keeps its bytes exact.
    pub fn has_kernel(ty: GgmlType) -> bool {
        #[cfg(feature = "gpu")]
        return crate::gpu::has_ggml_kernel(ty);
        #[cfg(not(feature = "gpu"))]
        {
            let _ = ty;
            false
        }
    }

    /// Whether `elements` values of `ty` (with an importance matrix or not; a tensor, or one
    /// call) run on the GPU here. For "auto": the type's decision (made on first need), for work
    /// at least as large as [`auto_ggml_min_elements`]; smaller work runs on the CPU without
    /// deciding, so converting a small model never starts a GPU (as for min/max, `auto_backend`).
    pub fn on_gpu(&self, ty: GgmlType, imatrix: bool, elements: usize) -> bool {
        match self.device {
            Device::Cpu => false,
            Device::Gpu => Self::has_kernel(ty),
            Device::Auto => Self::has_kernel(ty) && elements >= auto_ggml_min_elements(ty) && auto_ggml(ty, imatrix).gpu,
        }
    }

    /// Whether "gpu" was asked for (then a type without a kernel is an error).
    pub fn wants_gpu(&self) -> bool {
        self.device == Device::Gpu
    }

    /// This device for one type: "gpu" becomes the CPU for a type without a GPU kernel (the
    /// converter's choice, where a direct call is an error); "auto" decides per tensor itself.
    pub fn or_cpu_for(self, ty: GgmlType) -> Self {
        if self.device == Device::Gpu && !Self::has_kernel(ty) {
            Self::cpu()
        } else {
            self
        }
    }

    /// [`crate::quant::ggml::quantize`] on this device.
    pub fn quantize(&self, ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, out: &mut [u8]) -> Result<()> {
        let cpu = |out: &mut [u8]| crate::quant::ggml::quantize(ty, x, n_per_row, imatrix, out);
        #[cfg(feature = "gpu")]
        match self.device {
            Device::Gpu => return GpuBackend::shared()?.quantize_ggml(ty, x, n_per_row, imatrix, out).map(|_| ()),
            Device::Auto if self.on_gpu(ty, imatrix.is_some(), x.len()) => {
                return match GpuBackend::shared().and_then(|g| g.quantize_ggml(ty, x, n_per_row, imatrix, out)) {
                    Err(QuantError::Device(_) | QuantError::Unsupported(_)) => cpu(out),
                    r => r.map(|_| ()),
                };
            }
            _ => {}
        }
        cpu(out)
    }
}

/// Below this many values in one tensor or call, "auto" encodes ggml's type `ty` on the CPU:
/// the size of the probe its decision was measured on (256 Ki values for the K types, 4 Mi for
/// the 32-element ones), at most min/max's [`AUTO_GPU_MIN_ELEMENTS`]. Below the probe the GPU's
/// fixed cost per call (submit, wait, map; and starting the device at all) weighs more than
/// the measurement showed.
pub fn auto_ggml_min_elements(ty: GgmlType) -> usize {
    #[cfg(feature = "gpu")]
    return probe::ggml_probe_elements(ty).min(AUTO_GPU_MIN_ELEMENTS);
    #[cfg(not(feature = "gpu"))]
    {
        let _ = ty;
        usize::MAX
    }
}

/// Per ggml type and importance matrix or not: "auto"'s decision and the process that made it.
type GgmlDecision = (GgmlType, bool, u32, &'static AutoChoice);
static AUTO_GGML: std::sync::Mutex<Vec<GgmlDecision>> = std::sync::Mutex::new(Vec::new());

/// The choice of "auto" for ggml's type `ty`, with an importance matrix or without (the
/// weighted searches cost more, on both sides): the CPU for a type without a GPU kernel, else
/// a measurement of both on a probe ([`probe::race_ggml`]), made on first use and kept for the
/// process (made again in a forked child).
pub fn auto_ggml(ty: GgmlType, imatrix: bool) -> &'static AutoChoice {
    let pid = std::process::id();
    let mut made = AUTO_GGML.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, _, c)) = made.iter().find(|(t, w, p, _)| *t == ty && *w == imatrix && *p == pid) {
        return c;
    }
    let choice: &'static AutoChoice = Box::leak(Box::new(decide_ggml(ty, imatrix)));
    made.push((ty, imatrix, pid, choice));
    choice
}

/// The decisions made so far in this process, for [`describe`].
fn decided_ggml() -> Vec<(GgmlType, bool, &'static AutoChoice)> {
    let pid = std::process::id();
    AUTO_GGML.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|(_, _, p, _)| *p == pid).map(|&(t, w, _, c)| (t, w, c)).collect()
}

#[cfg(feature = "gpu")]
fn decide_ggml(ty: GgmlType, imatrix: bool) -> AutoChoice {
    let cpu = |reason: String| AutoChoice { backend: &CPU, reason, gpu: false };
    if !GgmlDevice::has_kernel(ty) {
        return cpu("no GPU kernel for this type".into());
    }
    let gpu = match gpu_candidate() {
        Ok(g) => g,
        Err(why) => return cpu(why),
    };
    let Some(g) = gpu else {
        return AutoChoice { backend: &AUTO_GPU, reason: format!("software adapter allowed by {}=1", crate::gpu::ALLOW_SOFTWARE_ENV), gpu: true };
    };
    match probe::race_ggml(g, ty, imatrix) {
        Ok(r) if r.gpu_faster() => AutoChoice { backend: &AUTO_GPU, reason: format!("measured faster: {r}"), gpu: true },
        Ok(r) => cpu(format!("measured faster: {r}")),
        Err(e) => cpu(format!("the GPU failed its measurement: {e}")),
    }
}

#[cfg(not(feature = "gpu"))]
fn decide_ggml(_: GgmlType, _: bool) -> AutoChoice {
    AutoChoice { backend: &CPU, reason: "built without the 'gpu' feature".into(), gpu: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::measured::FUSED_CALLS;
    use crate::quant::{BitWidth, GroupLayout, QuantConfig, Values};

    /// "auto" measures a tensor with the CPU's fused pass wherever the CPU runs it (small
    /// calls, and every call where it chose the CPU), not with the trait's plain way.
    #[test]
    fn auto_measures_with_the_fused_cpu_pass() {
        for n in [4096, 1 << 20] {
            let w: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
            let layout = GroupLayout::new(n / 512, 512, QuantConfig::new(BitWidth::B4, 64).unwrap());
            let (mut p, mut s, mut z) = (vec![0u8; layout.packed_len()], vec![0f32; layout.n_groups()], vec![0f32; layout.n_groups()]);
            let before = FUSED_CALLS.with(|c| c.get());
            let mut job = MeasuredJob { name: "w", values: Values::F32(&w), layout, packed: &mut p, scales: &mut s, zero_points: &mut z };
            backend(Device::Auto).unwrap().quantize_measured(&mut job).unwrap();
            let on_cpu = n < 1 << 20 || !auto().gpu;
            if on_cpu {
                assert_eq!(FUSED_CALLS.with(|c| c.get()), before + 1, "{n} values");
            }
        }
    }
}
