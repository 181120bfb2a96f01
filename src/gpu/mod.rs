//! The GPU backend (wgpu + WGSL), byte-identical to [`crate::quant::reference`] on every driver.
//!
//! * `context`: instance/adapter/device/pipelines, once per process (again after a lost
//!   device); adapter choice and the `ARROW_QUANT_ALLOW_SOFTWARE_GPU` switch for `device="auto"`.
//! * `plan`: layers → chunks of pieces (whole groups; many small layers per dispatch).
//! * `staging`: fixed sets of device buffers used in turn, persistent mapped uploads, submit /
//!   wait / map.
//! * `baseline`: device copy, and mapped-ring upload and download, the ceilings the benchmark
//!   compares with.
//! * `quantize`, `dequantize`: the passes.
//! * `softfloat`: the integer division and the FTZ-proof math, in Rust, mirrored in
//!   `shaders/common.wgsl` and tested against native `f32`.
//!
//! Jobs the kernels do not take (a group bigger than a chunk, rows over 2^30 elements,
//! dequantize parameters outside the proven-exact range) run on the CPU backend.

mod baseline;
mod context;
mod dequantize;
pub mod ggml;
mod lsq;
mod plan;
mod quantize;
mod shaders;
mod spirv;
pub mod softfloat;
mod staging;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use crate::backend::{Backend, DequantJob, QuantJob};
use crate::cpu::CpuBackend;
use crate::error::{QuantError, Result};
use crate::quant::ggml::GgmlType;
use crate::quant::{reference, Method};

pub use quantize::Stages;
pub use context::{auto_candidate, found_adapters, inherited_from_parent, started, AutoCandidate, ALLOW_SOFTWARE_ENV};
use plan::Caps;

pub struct GpuBackend {
    ctx: &'static context::GpuContext,
    caps: Caps,
    quant: Mutex<Option<[quantize::QuantSet; quantize::SETS]>>,
    dequant: Mutex<Option<[dequantize::DequantSet; dequantize::SETS]>>,
    /// What `lsq::probe_subnormals` found on this device (run on first need).
    subnormals: std::sync::OnceLock<std::result::Result<Option<String>, String>>,
    /// ggml's block types (built on first use), and each type's self-test verdict.
    ggml: std::sync::OnceLock<ggml::GgmlKernels>,
    ggml_verdicts: Mutex<std::collections::HashMap<(GgmlType, bool), Option<String>>>,
}

/// The backend on the live context (see [`context::context`]): replaced together with it.
static SHARED: Mutex<Option<&'static GpuBackend>> = Mutex::new(None);

impl GpuBackend {
    /// The process-wide GPU backend on the best adapter (software adapters included), created
    /// on first use, and again after its device was lost.
    pub fn shared() -> Result<&'static GpuBackend> {
        let ctx = context::context()?;
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        match *slot {
            Some(b) if std::ptr::eq(b.ctx, ctx) => Ok(b),
            _ => {
                let b: &'static GpuBackend = Box::leak(Box::new(GpuBackend { ctx, caps: staging::caps(ctx), quant: Mutex::new(None), dequant: Mutex::new(None), subnormals: Default::default(), ggml: Default::default(), ggml_verdicts: Default::default() }));
                *slot = Some(b);
                Ok(b)
            }
        }
    }

    /// Destroys this backend's device, as a driver reset would: for tests of the recovery.
    #[doc(hidden)]
    pub fn lose_device_for_test(&self) {
        self.ctx.device.destroy();
    }

    /// Adapter name, backend API and device type.
    pub fn adapter(&self) -> String {
        self.ctx.describe()
    }

    pub fn is_software(&self) -> bool {
        self.ctx.is_software()
    }

    /// `None` when the device keeps subnormal floats in `+ - *` (what the lsq kernel needs to
    /// be exact), else what its probe computed instead. Probed once per device.
    /// Then the lsq kernel itself must give the reference's bytes on a known layer (its
    /// compiled code, not only the probe's, must keep subnormals and avoid FMA).
    pub fn subnormal_flush(&self) -> Result<Option<String>> {
        self.subnormals
            .get_or_init(|| {
                let probed = guarded(|| lsq::probe_subnormals(self.ctx));
                match probed.and_then(|p| match p {
                    None => self.lsq_self_test(),
                    flushed => Ok(flushed),
                }) {
                    // A kernel that cannot be built on this adapter: refused, like a flush.
                    Err(QuantError::Unsupported(why)) => Ok(Some(why)),
                    other => other.map_err(|e| e.to_string()),
                }
            })
            .clone()
            .map_err(QuantError::Device)
    }

    /// The lsq kernel against the reference on `lsq::self_test_layer`: `Some(why)` if a byte
    /// differs.
    fn lsq_self_test(&self) -> Result<Option<String>> {
        let (weights, layout) = lsq::self_test_layer();
        let (mut packed, mut scales, mut zero_points) = (vec![0u8; layout.packed_len()], vec![0f32; layout.n_groups()], vec![0f32; layout.n_groups()]);
        let mut job = QuantJob { name: "lsq self-test", weights: &weights, layout, packed: &mut packed, scales: &mut scales, zero_points: &mut zero_points };
        let (failed, _) = self.run_kernel(std::slice::from_mut(&mut job), &[0], Method::Lsq)?;
        let (mut want_p, mut want_s, mut want_z) = (vec![0u8; layout.packed_len()], vec![0f32; layout.n_groups()], vec![0f32; layout.n_groups()]);
        reference::quantize_layer("lsq self-test", &weights, &layout, &mut want_p, &mut want_s, &mut want_z)?;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let same = failed.is_empty() && packed == want_p && bits(&scales) == bits(&want_s) && bits(&zero_points) == bits(&want_z);
        Ok((!same).then(|| "the lsq kernel's bytes differ from the reference on its self-test layer".to_string()))
    }

    /// Whether the lsq kernel is built from SPIR-V that asks the driver to keep subnormals
    /// (`DenormPreserve`, on Vulkan); otherwise it is plain WGSL, and the device's default.
    pub fn denorm_preserve(&self) -> bool {
        self.ctx.keeps_subnormals
    }

    /// Whether kernel timestamps are available (`Features::TIMESTAMP_QUERY`).
    pub fn has_timestamps(&self) -> bool {
        self.ctx.timestamps
    }

    /// [`Backend::quantize`], also returning where the time went ([`Stages`]: the summed kernel
    /// time when timestamps are supported, and the host's stages).
    pub fn quantize_timed(&self, jobs: &mut [QuantJob<'_>]) -> Result<Stages> {
        if let Some(job) = jobs.iter().find(|j| j.layout.method == Method::Lsq) {
            self.check_lsq(job.name)?;
        }
        let (gpu, cpu): (Vec<usize>, Vec<usize>) = (0..jobs.len()).filter(|&i| jobs[i].layout.n_elements() > 0).partition(|&i| self.takes(&jobs[i].layout));
        let mut failed = Vec::new();
        for &i in &cpu {
            if CpuBackend::new().quantize(std::slice::from_mut(&mut jobs[i])).is_err() {
                failed.push(i);
            }
        }
        let mut stages = Stages::default();
        // One run per method: each has its own pipeline.
        for method in [Method::MinMax, Method::Lsq] {
            let mine: Vec<usize> = gpu.iter().copied().filter(|&i| jobs[i].layout.method == method).collect();
            if !mine.is_empty() {
                let (f, s) = self.run_kernel(jobs, &mine, method)?;
                failed.extend(f);
                stages = stages.add(s);
            }
        }
        match failed.into_iter().min() {
            Some(i) => Err(first_error(&jobs[i])),
            None => Ok(stages),
        }
    }

    /// Runs `jobs[i]` for every `i` in `which` (all taken by [`Self::takes`], all with
    /// `method`) on the GPU. Returns the jobs with an invalid group, and where the time went.
    fn run_kernel(&self, jobs: &mut [QuantJob<'_>], which: &[usize], method: Method) -> Result<(Vec<usize>, Stages)> {
        let pipeline = match method {
            Method::MinMax => &self.ctx.quant_pipeline,
            Method::Lsq => self.ctx.lsq_pipeline()?,
        };
        let layouts: Vec<_> = which.iter().map(|&i| (i, jobs[i].layout)).collect();
        let chunks = plan::plan(&layouts, &self.caps);
        let mut guard = self.quant.lock().unwrap_or_else(|p| p.into_inner());
        let sets = guard.get_or_insert_with(|| std::array::from_fn(|_| quantize::QuantSet::new(self.ctx, &self.caps)));
        let r = guarded(|| quantize::run(self.ctx, pipeline, sets, &self.caps, jobs, &chunks, true));
        if r.is_err() {
            *guard = None; // buffers may still be mapped or in use: rebuild next time
        }
        r
    }

    /// Whether the kernels take this layout; others run on the CPU backend. The lsq pipeline
    /// refines groups held in workgroup memory, 16 invocations per group, so it takes groups
    /// up to a tile (`plan::TILE_ELEMS`: each invocation then makes 7 passes over at most 128
    /// elements, far below llvmpipe's 65,535 loop iterations per invocation).
    fn takes(&self, l: &crate::quant::GroupLayout) -> bool {
        plan::fits(l, &self.caps) && (l.method == Method::MinMax || l.group_size <= plan::TILE_ELEMS)
    }

    /// lsq's kernel does plain f32 arithmetic, exact only where subnormals are kept: refused
    /// (so `auto` runs it on the CPU) on a device that flushes them.
    fn check_lsq(&self, layer: &str) -> Result<()> {
        match self.subnormal_flush()? {
            None => Ok(()),
            Some(got) => Err(QuantError::Unsupported(format!(
                "device='gpu': method 'lsq' (layer '{layer}') needs a device that keeps subnormal floats, and adapter {} does not ({got}); use device='cpu', or 'auto', which runs it on the CPU",
                self.ctx.describe()
            ))),
        }
    }

    /// [`Backend::dequantize`], also returning where the time went, as [`Self::quantize_timed`].
    pub fn dequantize_timed(&self, jobs: &mut [DequantJob<'_>]) -> Result<Stages> {
        let (gpu, cpu): (Vec<usize>, Vec<usize>) = (0..jobs.len())
            .filter(|&i| jobs[i].layout.n_elements() > 0)
            .partition(|&i| plan::fits(&jobs[i].layout, &self.caps) && dequantize::params_ok(jobs[i].scales, jobs[i].zero_points));
        for &i in &cpu {
            CpuBackend::new().dequantize(std::slice::from_mut(&mut jobs[i]))?;
        }
        if gpu.is_empty() {
            return Ok(Stages::default());
        }
        let layouts: Vec<_> = gpu.iter().map(|&i| (i, jobs[i].layout)).collect();
        let chunks = plan::plan(&layouts, &self.caps);
        let mut guard = self.dequant.lock().unwrap_or_else(|p| p.into_inner());
        let sets = guard.get_or_insert_with(|| std::array::from_fn(|_| dequantize::DequantSet::new(self.ctx, &self.caps)));
        let r = guarded(|| dequantize::run(self.ctx, sets, &self.caps, jobs, &chunks, true));
        if r.is_err() {
            *guard = None;
        }
        r
    }

    /// Encodes `x` (rows of `n_per_row`) as `ty` with the bytes of [`crate::quant::ggml::quantize`]
    /// (ggml's), on this GPU; returns where the time went. `QuantError::Unsupported` for a type
    /// without a GPU kernel ([`ggml::TYPES`]), and on an adapter where
    /// the kernel cannot be exact (the subnormal probe or the type's self-test failed).
    pub fn quantize_ggml(&self, ty: GgmlType, x: &[f32], n_per_row: usize, imatrix: Option<&[f32]>, out: &mut [u8]) -> Result<Stages> {
        let n_bytes = crate::quant::ggml::check_rows(ty, x.len(), n_per_row, imatrix)?;
        if out.len() != n_bytes {
            return Err(QuantError::value(format!("output buffer has {} bytes, {ty} needs {n_bytes}", out.len())));
        }
        if !has_ggml_kernel(ty) {
            let names: Vec<String> = ggml::TYPES.iter().map(|t| t.name().to_ascii_lowercase()).collect();
            return Err(QuantError::Unsupported(format!(
                "device='gpu': {} has no GPU kernel (the GPU encodes {}, with an importance matrix or without); use device='cpu'",
                ty.name().to_ascii_lowercase(),
                names.join(", ")
            )));
        }
        if x.is_empty() {
            return Ok(Stages::default());
        }
        self.check_ggml(ty, imatrix.is_some())?;
        let kernels = self.ggml_kernels();
        guarded(|| kernels.run(self.ctx, ty, x, n_per_row, imatrix, out, true))
    }

    fn ggml_kernels(&self) -> &ggml::GgmlKernels {
        self.ggml.get_or_init(|| ggml::GgmlKernels::new(self.ctx, &self.caps))
    }

    /// The kernel for `ty` keeps the CPU's bytes on this adapter: the subnormal probe passed
    /// (shared with lsq) and the kernel reproduced the CPU on its self-test (once per type).
    fn check_ggml(&self, ty: GgmlType, imatrix: bool) -> Result<()> {
        let refuse = |why: String| QuantError::Unsupported(format!("device='gpu': {ty} cannot be encoded exactly on adapter {}: {why}; use device='cpu'", self.ctx.describe()));
        if let Some(got) = self.subnormal_flush()? {
            return Err(refuse(format!("it does not keep subnormal floats ({got})")));
        }
        // Not held during the self-test: its CPU side runs on the thread pool, whose workers may
        // be waiting here (two callers may both test a type; the verdicts agree).
        let known = self.ggml_verdicts.lock().unwrap_or_else(|p| p.into_inner()).get(&(ty, imatrix)).cloned();
        let verdict = match known {
            Some(v) => v,
            None => {
                let v = match guarded(|| ggml::self_test(self.ggml_kernels(), self.ctx, ty, imatrix)) {
                    Err(QuantError::Unsupported(why)) => Some(why),
                    other => other?,
                };
                self.ggml_verdicts.lock().unwrap_or_else(|p| p.into_inner()).insert((ty, imatrix), v.clone());
                v
            }
        };
        verdict.map_or(Ok(()), |why| Err(refuse(why)))
    }

    /// Bytes of f32 input the kernels take per chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.caps.elems * 4
    }

    /// Seconds for a device-to-device copy of `bytes`, best of `reps` (see [`baseline`]).
    pub fn device_copy_baseline(&self, bytes: u64, reps: usize) -> Result<f64> {
        guarded(|| baseline::device_copy(self.ctx, bytes, reps))
    }

    /// Seconds to upload `data` through a ring of mapped staging buffers in chunks of the
    /// kernels' size: the host → device ceiling for the end-to-end path (see [`baseline`]).
    pub fn upload_baseline(&self, data: &[u8]) -> Result<f64> {
        guarded(|| baseline::upload(self.ctx, data, self.chunk_bytes()))
    }

    /// Seconds to read `out.len()` bytes back from the device through mapped read-back
    /// buffers in chunks of the kernels' size: the device → host ceiling (see [`baseline`]).
    pub fn download_baseline(&self, out: &mut [u8]) -> Result<f64> {
        guarded(|| baseline::download(self.ctx, out, self.chunk_bytes()))
    }

    /// A plain host → device copy of `bytes` (write_buffer, submit, wait): the serialized path
    /// `Queue::write_buffer` gives. Returns seconds.
    pub fn copy_baseline(&self, bytes: &[u8]) -> Result<f64> {
        let chunk = self.chunk_bytes();
        let buf = staging::buffer(self.ctx, "copy baseline", chunk as u64, staging::STORAGE);
        let t = std::time::Instant::now();
        for c in bytes.chunks(chunk) {
            let n = c.len() / 4 * 4;
            self.ctx.queue.write_buffer(&buf, 0, &c[..n]);
            let idx = self.ctx.queue.submit([]);
            self.ctx.wait(idx)?;
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

/// Whether a GPU kernel encodes `ty` (each does with an importance matrix and without).
pub fn has_ggml_kernel(ty: GgmlType) -> bool {
    ggml::TYPES.contains(&ty)
}

/// Runs `f`, turning a wgpu panic into `QuantError::Device`.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(QuantError::Device(format!("the GPU backend failed: {}", crate::contain::panic_message(p.as_ref()))))
    })
}

/// The error the CPU path reports for a failed layer: its first offending group, found by the
/// reference's own checks.
fn first_error(job: &QuantJob<'_>) -> QuantError {
    reference::first_error(job.name, &job.layout, job.weights)
        .unwrap_or_else(|| QuantError::Device(format!("the GPU flagged layer '{}' as invalid but the CPU check found no invalid group", job.name)))
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        format!("gpu ({})", self.ctx.describe())
    }

    fn quantize(&self, jobs: &mut [QuantJob<'_>]) -> Result<()> {
        self.quantize_timed(jobs).map(|_| ())
    }

    fn dequantize(&self, jobs: &mut [DequantJob<'_>]) -> Result<()> {
        self.dequantize_timed(jobs).map(|_| ())
    }
}
