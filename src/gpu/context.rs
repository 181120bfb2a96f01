//! Instance, adapter, device and pipelines: created once per process and reused.
//!
//! Every failure (no loader, no driver, no adapter, a device error or a lost device) becomes
//! [`QuantError::Device`]; wgpu's own panics during set-up are caught. A lost device is
//! replaced on the next call ([`context`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::contain::panic_message;
use crate::error::{QuantError, Result};

use super::shaders;

/// Set to `1` to let `device="auto"` pick a software adapter (lavapipe/llvmpipe, SwiftShader:
/// wgpu device type `Cpu`). Without it "auto" only takes a hardware GPU and otherwise uses the
/// CPU backend, which is faster than a software rasterizer. `device="gpu"` always accepts one.
pub const ALLOW_SOFTWARE_ENV: &str = "ARROW_QUANT_ALLOW_SOFTWARE_GPU";

pub struct GpuContext {
    pub info: wgpu::AdapterInfo,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    pub timestamps: bool,
    pub quant_layout: wgpu::BindGroupLayout,
    pub quant_pipeline: wgpu::ComputePipeline,
    pub dequant_layout: wgpu::BindGroupLayout,
    pub dequant_pipeline: wgpu::ComputePipeline,
    /// Whether kernels that need subnormal floats are built from our own SPIR-V with
    /// `DenormPreserve` (`super::spirv`): a Vulkan adapter that takes passthrough shaders.
    pub keeps_subnormals: bool,
    /// The quantize pipeline with `LSQ = true` (`shaders/lsq.wgsl`), built on first use: only
    /// jobs with `method="lsq"` need it. An error says why it could not be built.
    lsq_pipeline: OnceLock<std::result::Result<wgpu::ComputePipeline, String>>,
    /// The first uncaptured device error or the device-lost reason, if any.
    pub failure: Arc<Mutex<Option<String>>>,
}

struct Probe {
    instance: wgpu::Instance,
    adapters: Vec<wgpu::Adapter>,
}

static PROBE: OnceLock<std::result::Result<Probe, String>> = OnceLock::new();
static CONTEXT: Mutex<Option<&'static GpuContext>> = Mutex::new(None);
/// The process that started wgpu (0: not started).
static WGPU_PID: AtomicU32 = AtomicU32::new(0);

/// Whether wgpu was started by a parent process before it forked this one. The driver state a
/// child inherits that way (threads, file descriptors, mapped memory) is not usable, so such a
/// child must not touch the GPU: "auto" uses the CPU there, "gpu" is an error.
pub fn inherited_from_parent() -> bool {
    let pid = WGPU_PID.load(Ordering::Relaxed);
    pid != 0 && pid != std::process::id()
}

/// Whether this process has started wgpu (looked for adapters): "gpu" does on first use,
/// "auto" on the first call large enough for the GPU to be worth asking.
pub fn started() -> bool {
    WGPU_PID.load(Ordering::Relaxed) == std::process::id()
}

fn probe() -> std::result::Result<&'static Probe, String> {
    PROBE
        .get_or_init(|| {
            WGPU_PID.store(std::process::id(), Ordering::Relaxed);
            quiet_vulkan_loader();
            catch_unwind(|| {
                let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
                let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
                Probe { instance, adapters }
            })
            .map_err(|p| format!("initializing wgpu failed: {}", panic_message(p.as_ref())))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Keeps Mesa's implicit Vulkan layer `VK_LAYER_MESA_device_select` out of this process
/// unless the user asked for it (by setting `NODEVICE_SELECT` themselves). The layer picks a
/// default GPU for a display by connecting to Wayland and X11, and on a machine without a
/// display session libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set` twice to
/// stderr, on every start. We rank the adapters ourselves (`rank`) and never present, so the
/// layer has nothing to do for us. The variable is the layer's own documented off switch
/// (its manifest's `disable_environment`); it is set once, before the Vulkan loader starts.
fn quiet_vulkan_loader() {
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

/// Higher is better: hardware before software, discrete before integrated, native APIs
/// before GL.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 1,
        wgpu::DeviceType::Cpu => 0,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 1,
        _ => 0,
    };
    (ty, api)
}

/// The adapters wgpu found, for messages.
pub fn found_adapters() -> String {
    match probe() {
        Err(e) => e,
        Ok(p) if p.adapters.is_empty() => "none".into(),
        Ok(p) => p.adapters.iter().map(|a| describe(&a.get_info())).collect::<Vec<_>>().join(", "),
    }
}

/// Whether "auto" may consider the GPU at all: some adapter exists that is hardware, or
/// software and allowed by the environment. Only enumerates adapters (no device is created).
pub fn auto_candidate() -> AutoCandidate {
    let allow_sw = std::env::var(ALLOW_SOFTWARE_ENV).is_ok_and(|v| v == "1");
    let Ok(p) = probe() else { return AutoCandidate::None("wgpu found no usable GPU API".into()) };
    let Some(best) = p.adapters.iter().map(|a| a.get_info()).max_by_key(rank) else {
        return AutoCandidate::None("no GPU adapter".into());
    };
    if !is_software(&best) {
        AutoCandidate::Hardware
    } else if allow_sw {
        AutoCandidate::AllowedSoftware
    } else {
        AutoCandidate::None(format!("only a software adapter ({}), slower than the CPU path; {ALLOW_SOFTWARE_ENV}=1 allows it", best.name))
    }
}

/// What [`auto_candidate`] found.
pub enum AutoCandidate {
    /// A hardware adapter: "auto" measures it against the CPU.
    Hardware,
    /// A software adapter that `ARROW_QUANT_ALLOW_SOFTWARE_GPU=1` forces on "auto".
    AllowedSoftware,
    /// Nothing to consider, and why.
    None(String),
}

/// The live context: created on first use, and created again after the device was lost or
/// failed (a driver reset, a removed device, an uncaptured error), so a failure is never
/// sticky. A context that failed is left in place, not freed: earlier callers may still hold
/// references to it, and it is at most one per failure.
pub fn context() -> Result<&'static GpuContext> {
    let mut slot = CONTEXT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = *slot {
        if ctx.check().is_ok() {
            return Ok(ctx);
        }
    }
    let p = probe().map_err(|e| QuantError::Device(format!("{e} (adapters found: {})", found_adapters())))?;
    let adapter = p.adapters.iter().max_by_key(|a| rank(&a.get_info())).ok_or_else(|| {
        QuantError::Device(
            "device='gpu': no GPU adapter found (wgpu found no Vulkan, Metal, DX12 or GL adapter; install a GPU driver, or mesa-vulkan-drivers for the software adapter lavapipe)".into(),
        )
    })?;
    let _ = &p.instance;
    let ctx = catch_unwind(AssertUnwindSafe(|| create(adapter)))
        .map_err(|e| format!("creating the GPU device failed: {}", panic_message(e.as_ref())))
        .and_then(|r| r)
        .map_err(|e| QuantError::Device(format!("{e} (adapters found: {})", found_adapters())))?;
    let ctx: &'static GpuContext = Box::leak(Box::new(ctx));
    *slot = Some(ctx);
    Ok(ctx)
}

fn create(adapter: &wgpu::Adapter) -> std::result::Result<GpuContext, String> {
    let info = adapter.get_info();
    let limits = adapter.limits();
    let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    let keeps_subnormals = info.backend == wgpu::Backend::Vulkan && adapter.features().contains(wgpu::Features::PASSTHROUGH_SHADERS);
    let mut required_features = wgpu::Features::empty();
    required_features.set(wgpu::Features::TIMESTAMP_QUERY, timestamps);
    required_features.set(wgpu::Features::PASSTHROUGH_SHADERS, keeps_subnormals);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("arrow_quant_v2"),
        required_features,
        required_limits: limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|e| format!("requesting a device from {} failed: {e}", describe(&info)))?;

    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let f = failure.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| format!("GPU error: {e}"));
    }));
    let f = failure.clone();
    device.set_device_lost_callback(move |reason, msg| {
        let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| format!("GPU device lost ({reason:?}): {msg}"));
    });

    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only }, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    };
    let uniform = wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    };
    let quant_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("quantize"),
        entries: &[uniform, storage(1, true), storage(2, true), storage(3, true), storage(4, false), storage(5, false), storage(6, false), storage(7, false)],
    });
    let dequant_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("dequantize"),
        entries: &[uniform, storage(1, true), storage(2, true), storage(3, true), storage(4, true), storage(5, false)],
    });
    let pipeline = |layout: &wgpu::BindGroupLayout, src: &str, entry: &str| {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(entry), source: wgpu::ShaderSource::Wgsl(src.into()) });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: Some(entry), bind_group_layouts: &[Some(layout)], immediate_size: 0 });
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let qsrc = shaders::quantize_source();
    let quant_pipeline = pipeline(&quant_layout, &qsrc, "quantize_pass");
    let dequant_pipeline = pipeline(&dequant_layout, &shaders::dequantize_source(), "dequant_pass");
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(format!("building the GPU pipelines on {} failed: {e}", describe(&info)));
    }
    Ok(GpuContext { info, device, queue, limits, timestamps, quant_layout, quant_pipeline, dequant_layout, dequant_pipeline, keeps_subnormals, lsq_pipeline: OnceLock::new(), failure })
}

impl GpuContext {
    pub fn describe(&self) -> String {
        describe(&self.info)
    }

    pub fn is_software(&self) -> bool {
        is_software(&self.info)
    }

    /// The quantize pipeline that runs `method="lsq"`, built on first call: the same source
    /// and bind group layout as [`Self::quant_pipeline`], with the `LSQ` override set, built
    /// to keep subnormals ([`Self::exact_f32_pipeline`]). `QuantError::Unsupported` if this
    /// adapter cannot build it.
    pub fn lsq_pipeline(&self) -> Result<&wgpu::ComputePipeline> {
        self.lsq_pipeline
            .get_or_init(|| self.exact_f32_pipeline("quantize lsq", &shaders::quantize_source(), "quantize_pass", &[("LSQ", 1.0)], &self.quant_layout))
            .as_ref()
            .map_err(|e| QuantError::Unsupported(format!("device='gpu': the lsq kernel could not be built on adapter {}: {e}", self.describe())))
    }

    /// A compute pipeline for a kernel whose plain `f32` arithmetic must keep subnormals and
    /// round every operation on its own: from our SPIR-V with `DenormPreserve` and
    /// `NoContraction` ([`super::spirv`]) where [`Self::keeps_subnormals`], else from the WGSL
    /// (whatever the device then does, the callers' probe and self-test find out). Errors
    /// (naga's, or wgpu's validation) come back as text, not as a device failure.
    pub fn exact_f32_pipeline(&self, label: &str, wgsl: &str, entry: &str, constants: &[(&str, f64)], layout: &wgpu::BindGroupLayout) -> std::result::Result<wgpu::ComputePipeline, String> {
        let d = &self.device;
        let scope = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = if self.keeps_subnormals {
            let words = super::spirv::exact_f32(wgsl, entry, constants)?;
            // The workgroup size is read on Metal only.
            let entry_points = vec![wgpu::PassthroughShaderEntryPoint { name: entry.into(), workgroup_size: (1, 1, 1) }];
            let desc = wgpu::ShaderModuleDescriptorPassthrough { label: Some(label), entry_points: entry_points.into(), spirv: Some(words.into()), ..Default::default() };
            // SAFETY: wgpu hands these words to the driver unchecked. They are naga's own
            // compilation of WGSL that naga has just parsed and validated (the same compiler
            // and options wgpu uses for this source), plus a capability, an extension, an
            // execution mode and `NoContraction` decorations, placed as the SPIR-V spec says
            // (`spirv::make_exact`, unit-tested); the pipeline layout below is the one the
            // WGSL declares.
            unsafe { d.create_shader_module_passthrough(desc) }
        } else {
            d.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(wgsl.into()) })
        };
        let pl = d.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: Some(label), bind_group_layouts: &[Some(layout)], immediate_size: 0 });
        // Passthrough SPIR-V has its overrides resolved already.
        let constants = if self.keeps_subnormals { &[][..] } else { constants };
        let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        });
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(format!("building {label} failed: {e}")),
            None => Ok(pipeline),
        }
    }

    /// The first device error recorded so far, as a `QuantError`.
    pub fn check(&self) -> Result<()> {
        match self.failure.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => Err(QuantError::Device(format!("{e} (adapter {})", self.describe()))),
            None => Ok(()),
        }
    }

    /// A mapped view of one of our buffers was refused (`what` failed with `e`): the buffer is
    /// invalid, which only a destroyed or lost device makes it. Recorded as the context's
    /// failure unless one is already (a lost device's callback may not have run yet), so the
    /// next call builds a new device instead of failing the same way.
    pub fn mapping_failed(&self, what: &str, e: impl std::fmt::Display) -> QuantError {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        let reason = failure.get_or_insert_with(|| format!("{what} failed: {e}"));
        QuantError::Device(format!("{reason} (adapter {})", self.describe()))
    }

    /// Waits for a submission; a device error or a failed wait becomes `QuantError::Device`.
    pub fn wait(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        let polled = self.device.poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None });
        // A lost device makes the wait fail too; its recorded reason says more than the wait.
        self.check()?;
        polled.map_err(|e| QuantError::Device(format!("waiting for the GPU failed: {e} (adapter {})", self.describe())))?;
        Ok(())
    }
}
